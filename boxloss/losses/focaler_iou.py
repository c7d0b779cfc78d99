"""Focaler-IoU losses (Zhang & Zhang 2024): a variant's loss with its IoU linearly re-mapped on [d, u]."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _check_choice, _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair
from .bases import BASES

__all__ = ["focaler_iou_loss", "focaler_iou_formula"]

FOCALER_MIN_GAP = 1e-3  # smallest u − d


def focaler_iou_formula(base):
    """The formula of Focaler-``base``."""

    def formula(p, t, m, d, u):
        iou = Pair(p, t, m).iou
        focaler = m.clamp_max(m.clamp_min((iou - d) / (u - d), 0.0), 1.0)
        return base(p, t, m) + iou - focaler

    return formula


@_fill_loss_doc
def focaler_iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                     avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                     d: float = 0.0, u: float = 0.95, variant: str = "iou") -> Tensor:
    r"""Focaler-IoU loss: a variant's loss with its IoU replaced by a linear re-mapping that focuses the
    gradient on the IoU interval [d, u].

    .. math::
        \mathrm{IoU}^{focaler} = \mathrm{clamp}\Big(\frac{\mathrm{IoU} - d}{u - d}, 0, 1\Big),\quad
        \mathcal{L}_{Focaler\text{-}X} = \mathcal{L}_X + \mathrm{IoU} - \mathrm{IoU}^{focaler}

    Pairs with IoU ≤ d or ≥ u get no gradient from the IoU (clamped), those in between a gradient 1/(u − d):
    d > 0 focuses on easy samples, u < 1 on hard ones. ``variant="iou"`` is the textbook form: disjoint boxes
    get no gradient; the other variants pull them together through their penalty.

    {args}
        d, u (float): the interval, 0 ≤ d, u ≤ 1 and u − d ≥ 1e-3 (default 0 and 0.95).
        variant (str): the base loss X: ``"iou"`` (default), ``"giou"``, ``"diou"``, ``"ciou"``, ``"siou"``
            (θ = 4) or ``"eiou"``.

    {returns}

    Reference:
        H. Zhang, S. Zhang, "Focaler-IoU: More Focused Intersection over Union Loss", arXiv 2024.
        https://arxiv.org/abs/2401.10525

    Example:
        >>> import torch
        >>> from boxloss import focaler_iou_loss
        >>> focaler_iou_loss(torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[2., 0., 6., 4.]]), u=0.5)  # 2/3 + 1/3 - 2/3
        tensor(0.3333)
    """
    d = check_param("d", d, 0.0, 1.0)
    u = check_param("u", u, 0.0, 1.0)
    if not u - d >= FOCALER_MIN_GAP:
        # (u − d) is the denominator of the mapping; closer limits round to one float32 in the kernels (0/0)
        raise ValueError(f"u must exceed d by at least {FOCALER_MIN_GAP:g}; got d={d!r}, u={u!r}")
    _check_choice("variant", variant, tuple(BASES))
    return variant_loss(f"focaler_iou_{variant}", (d, u), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
for _base, _formula in BASES.items():
    register(f"focaler_iou_{_base}", focaler_iou_formula(_formula), ("d", "u"))
