"""α-IoU losses (He et al., NeurIPS 2021): IoU and its penalty raised to the power α."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _check_choice, _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["alpha_iou_loss", "ALPHA_VARIANTS", "alpha_iou_formula"]

ALPHA_VARIANTS = ("iou", "giou", "diou", "ciou")


def alpha_iou_formula(variant: str):
    """The formula of α-``variant`` (one generated kernel each; α is a runtime parameter)."""

    def formula(p, t, m, alpha):
        b = Pair(p, t, m)
        loss = 1 - m.safe_pow(b.iou, alpha)
        if variant == "giou":
            loss = loss + m.safe_pow(b.giou_penalty, alpha)
        elif variant in ("diou", "ciou"):
            loss = loss + m.safe_pow(b.diou_penalty, alpha)
        if variant == "ciou":
            loss = loss + m.safe_pow(b.ciou_alpha * b.aspect_v, alpha)
        return loss

    return formula


@_fill_loss_doc
def alpha_iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                   avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                   alpha: float = 3.0, variant: str = "iou") -> Tensor:
    r"""α-IoU loss: the IoU and the chosen variant's penalty raised to the power α, which up-weights
    high-IoU boxes (α > 1) and, per the paper, makes training more robust to noisy boxes.

    .. math::
        \mathcal{L}_{\alpha\text{-IoU}} = 1 - \mathrm{IoU}^\alpha,\quad
        \mathcal{L}_{\alpha\text{-GIoU}} = 1 - \mathrm{IoU}^\alpha + \Big(\frac{|C \setminus (A \cup B)|}{|C|}\Big)^\alpha

        \mathcal{L}_{\alpha\text{-DIoU}} = 1 - \mathrm{IoU}^\alpha + \frac{\rho^{2\alpha}}{c^{2\alpha}},\quad
        \mathcal{L}_{\alpha\text{-CIoU}} = 1 - \mathrm{IoU}^\alpha + \frac{\rho^{2\alpha}}{c^{2\alpha}} + (\beta v)^\alpha

    α-DIoU/α-CIoU follow the paper's equations, (ρ²/c²)^α. The authors' code raises each axis separately:
    ρ^{2α} as ``|Δx|^{2α} + |Δy|^{2α}`` instead of (Δx² + Δy²)^α (with c^{2α} as (c_w² + c_h²)^α); the two agree at
    α = 1 and for offsets along one axis, and differ otherwise (for α = 3 and a diagonal offset the authors' term is
    a quarter of the paper's). α-CIoU holds CIoU's trade-off weight β = v / (1 − IoU + v)
    constant in backward, like :func:`boxloss.ciou_loss`. ``variant="iou"`` is the textbook form: disjoint boxes
    get no gradient; the other variants pull them together through their penalty.

    {args}
        alpha (float): the power α > 0 (the paper recommends 3; α = 1 gives the plain losses).
        variant (str): ``"iou"`` (default), ``"giou"``, ``"diou"`` or ``"ciou"``.

    {returns}

    Reference:
        J. He, S. Erfani, X. Ma, J. Bailey, Y. Chi, X.-S. Hua, "Alpha-IoU: A Family of Power Intersection over
        Union Losses for Bounding Box Regression", NeurIPS 2021. https://arxiv.org/abs/2110.13675

    Example:
        >>> import torch
        >>> from boxloss import alpha_iou_loss
        >>> alpha_iou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 4.]]), alpha=2.0)  # 1 - 1/4
        tensor(0.7500)
    """
    alpha = check_param("alpha", alpha, 0.0, low_open=True)
    _check_choice("variant", variant, ALPHA_VARIANTS)
    return variant_loss(f"alpha_iou_{variant}", (alpha,), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
for _v in ALPHA_VARIANTS:
    register(f"alpha_iou_{_v}", alpha_iou_formula(_v), ("alpha",))
