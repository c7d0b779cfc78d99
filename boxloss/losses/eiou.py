"""EIoU and Focal-EIoU losses (Zhang et al., Neurocomputing 2022)."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["eiou_loss", "focal_eiou_loss", "eiou_formula", "focal_eiou_formula"]


def eiou_formula(p, t, m):
    b = Pair(p, t, m)
    dw, dh = b.pw - b.tw, b.ph - b.th
    width = b.ratio_at_most_one(dw * dw, b.cw * b.cw)
    height = b.ratio_at_most_one(dh * dh, b.ch * b.ch)
    return 1 - b.iou + b.diou_penalty + width + height


def focal_eiou_formula(p, t, m, gamma):
    return m.safe_pow(m.detach(Pair(p, t, m).iou), gamma) * eiou_formula(p, t, m)


@_fill_loss_doc
def eiou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
              avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy") -> Tensor:
    r"""Efficient IoU loss: DIoU's centre term plus separate width and height terms.

    .. math::
        \mathcal{L}_{EIoU} = 1 - \mathrm{IoU} + \frac{\rho^2(b, b^{gt})}{c^2}
            + \frac{(w - w^{gt})^2}{C_w^2} + \frac{(h - h^{gt})^2}{C_h^2} \in [0, 4)

    with ρ the distance between the centres, c the enclosing box's diagonal and C_w, C_h its width and height.
    Each ratio is taken over the maximum of its denominator and numerator, which changes nothing for valid boxes
    (an offset never exceeds the enclosing size) and keeps inverted boxes bounded.

    Not mmdetection's ``EIoULoss``, which is a different method (Extended-IoU, "Extended-IoU Loss: A Systematic
    Analysis ...", Peng & Yu 2023) under the same abbreviation. Disjoint boxes get a gradient from the centre
    term.

    {args}

    {returns}

    Reference:
        Y.-F. Zhang, W. Ren, Z. Zhang, Z. Jia, L. Wang, T. Tan, "Focal and Efficient IOU Loss for Accurate
        Bounding Box Regression", Neurocomputing 506, 2022. https://arxiv.org/abs/2101.08158

    Example:
        >>> import torch
        >>> from boxloss import eiou_loss
        >>> eiou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 4.]]))  # 1 - 1/2 + 1/20 + 0 + 1/4
        tensor(0.8000)
    """
    return variant_loss("eiou", (), pred, target, reduction, weight, avg_factor, eps, fmt)


@_fill_loss_doc
def focal_eiou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                    avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                    gamma: float = 0.5) -> Tensor:
    r"""Focal-EIoU loss: the EIoU loss weighted by IoU^γ, so that well-overlapping boxes dominate.

    .. math:: \mathcal{L} = \mathrm{IoU}^\gamma \cdot \mathcal{L}_{EIoU}

    The factor IoU^γ is a **weight: it carries no gradient** (computed from the IoU, held constant in backward).
    With a gradient, d IoU^γ / d IoU = γ IoU^(γ−1) is unbounded as IoU → 0 for the paper's γ = 0.5, so a barely
    overlapping pair would get an arbitrarily large step. The paper writes the product and does not discuss its
    gradient, and copies differ (some detach the IoU, some do not); the weight reading is the one that matches
    its motivation (re-weighting the samples by their regression quality).

    A consequence of the paper's formula: a disjoint pair (IoU = 0) has loss 0 and no gradient — Focal-EIoU
    does not pull missed predictions in (use it where the assigner only gives overlapping positives, or EIoU).

    {args}
        gamma (float): the focusing exponent γ ≥ 0 (the paper's best: 0.5; γ = 0 gives the EIoU loss).

    {returns}

    Reference:
        Y.-F. Zhang et al., "Focal and Efficient IOU Loss for Accurate Bounding Box Regression", Neurocomputing
        506, 2022. https://arxiv.org/abs/2101.08158

    Example:
        >>> import torch
        >>> from boxloss import focal_eiou_loss
        >>> focal_eiou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 4.]]))  # 0.5 ** 0.5 * 0.8
        tensor(0.5657)
    """
    gamma = check_param("gamma", gamma, 0.0)
    return variant_loss("focal_eiou", (gamma,), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
register("eiou", eiou_formula)
register("focal_eiou", focal_eiou_formula, ("gamma",))
