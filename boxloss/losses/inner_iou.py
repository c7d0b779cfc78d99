"""Inner-IoU losses (Zhang et al. 2023): a variant's loss corrected by the IoU of auxiliary scaled boxes."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _check_choice, _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair
from .bases import BASES

__all__ = ["inner_iou_loss", "inner_iou_formula"]


def _scaled(box, ratio):
    """The box scaled by ``ratio`` about its centre."""
    cx, cy = (box[0] + box[2]) * 0.5, (box[1] + box[3]) * 0.5
    hw, hh = (box[2] - box[0]) * (ratio * 0.5), (box[3] - box[1]) * (ratio * 0.5)
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def inner_iou_formula(base):
    """The formula of Inner-``base`` (``base``: a formula ``(p, t, m) -> loss`` of the variants table)."""

    def formula(p, t, m, ratio):
        inner = Pair(_scaled(p, ratio), _scaled(t, ratio), m).iou
        return base(p, t, m) + Pair(p, t, m).iou - inner

    return formula


@_fill_loss_doc
def inner_iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                   avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                   ratio: float = 0.7, variant: str = "iou") -> Tensor:
    r"""Inner-IoU loss: a variant's loss with its IoU replaced by the IoU of auxiliary boxes scaled by
    ``ratio`` about their centres.

    .. math::
        b^{inner} = \big(x_c \mp \tfrac{r w}{2},\ y_c \mp \tfrac{r h}{2}\big),\quad
        \mathcal{L}_{Inner\text{-}X} = \mathcal{L}_X + \mathrm{IoU} - \mathrm{IoU}^{inner}

    A ratio < 1 (smaller auxiliary boxes) steepens the loss for high-IoU pairs and speeds up their convergence;
    a ratio > 1 widens the region where low-IoU pairs get a gradient (the paper's reading). ``variant="iou"``
    is the textbook 1 − IoU: disjoint boxes then get no gradient (nor do they from the inner IoU); the other
    variants pull them together through their penalty.

    {args}
        ratio (float): the scale r of the auxiliary boxes, in [1e-3, 1e3] (the paper: 0.5 to 1.5; default 0.7).
        variant (str): the base loss X: ``"iou"`` (default), ``"giou"``, ``"diou"``, ``"ciou"``, ``"siou"``
            (θ = 4) or ``"eiou"``.

    {returns}

    Reference:
        H. Zhang, C. Xu, S. Zhang, "Inner-IoU: More Effective Intersection over Union Loss with Auxiliary
        Bounding Box", arXiv 2023. https://arxiv.org/abs/2311.02877

    Example:
        >>> import torch
        >>> from boxloss import inner_iou_loss
        >>> inner_iou_loss(torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[2., 0., 6., 4.]]), ratio=1.5)  # 2/3 + 1/3 - 1/2
        tensor(0.5000)
    """
    ratio = check_param("ratio", ratio, 1e-3, 1e3)  # auxiliary boxes 1e3 × larger: 1e6-px coordinates at most
    _check_choice("variant", variant, tuple(BASES))
    return variant_loss(f"inner_iou_{variant}", (ratio,), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
for _base, _formula in BASES.items():
    register(f"inner_iou_{_base}", inner_iou_formula(_formula), ("ratio",))
