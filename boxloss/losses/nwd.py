"""Normalized Gaussian Wasserstein distance loss (Wang et al. 2021) for tiny objects."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["nwd_loss", "nwd_formula"]


def nwd_formula(p, t, m, constant):
    b = Pair(p, t, m)
    dw, dh = b.pw - b.tw, b.ph - b.th
    w2 = b.sx * b.sx + b.sy * b.sy + (dw * dw + dh * dh) * 0.25
    return 1 - m.exp(-m.safe_sqrt(w2) / constant)


@_fill_loss_doc
def nwd_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
             avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
             constant: float = 12.8) -> Tensor:
    r"""NWD loss: each box as a 2-D Gaussian N((c_x, c_y), diag(w²/4, h²/4)), compared by the Wasserstein
    distance, which unlike IoU is smooth in the offset and never saturates for tiny, disjoint boxes.

    .. math::
        W_2^2 = \Big\| \big(c_x, c_y, \tfrac{w}{2}, \tfrac{h}{2}\big) - \big(c_x^{gt}, c_y^{gt}, \tfrac{w^{gt}}{2},
        \tfrac{h^{gt}}{2}\big) \Big\|_2^2,\quad \mathcal{L} = 1 - \exp\!\big(-\sqrt{W_2^2} / C\big) \in [0, 1)

    C is a length in the boxes' units (pixels): the paper sets it to the data set's average absolute object size
    (12.8 on AI-TOD); set it for your data. Not scale invariant by design. At W₂ = 0 the gradient is 0 (the
    square root's subgradient), elsewhere it has unit norm in W₂, so disjoint boxes are pulled together.

    {args}
        constant (float): C ≥ 1e-6, in the boxes' units (default 12.8, the paper's AI-TOD value).

    {returns}

    Reference:
        J. Wang, C. Xu, W. Yang, L. Yu, "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection",
        arXiv 2021. https://arxiv.org/abs/2110.13389

    Example:
        >>> import torch
        >>> from boxloss import nwd_loss
        >>> nwd_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]]), constant=2.0)  # 1 - exp(-1/2)
        tensor(0.3935)
    """
    constant = check_param("constant", constant, 1e-6)  # 1/C below float32's range gives NaN gradients
    return variant_loss("nwd", (constant,), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
register("nwd", nwd_formula, ("constant",))
