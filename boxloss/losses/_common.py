"""What every variant's public function does around its formula: check, convert, call the operator."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .. import kinds
from .._utils import BOX_FORMATS, _prepare_loss_inputs
from ..backends import aligned_loss


def variant_loss(name: str, params: tuple, pred: Tensor, target: Tensor, reduction: str,
                 weight: Optional[Tensor], avg_factor: Union[None, float, Tensor], eps: float, fmt: str,
                 formats: tuple = BOX_FORMATS) -> Tensor:
    """The registered variant ``name`` with its (checked) ``params``: the reference formula, the generated C
    kernel or the generated PyTorch closed form, behind the ``boxloss::aligned_loss`` operator."""
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt, formats)
    return aligned_loss(kinds.kind_of(name, *params), p, t, eps, reduction, weight, avg_factor)

