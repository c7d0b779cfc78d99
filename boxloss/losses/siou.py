"""SIoU loss (Gevorgyan 2022): IoU with angle, distance and shape costs."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["siou_loss", "siou_formula"]


def shape_cost(m, omega_w, omega_h, theta):
    """Ω = (1 − e^(−ω_w))^θ + (1 − e^(−ω_h))^θ."""
    return m.safe_pow(1 - m.exp(-omega_w), theta) + m.safe_pow(1 - m.exp(-omega_h), theta)


def siou_formula(p, t, m, theta):
    b = Pair(p, t, m)
    # angle cost Λ = 1 − 2 sin²(arcsin(sin α) − π/4) = sin 2α = 2 |Δx| |Δy| / σ² (σ: the centre distance);
    # the paper's switch to β = π/2 − α above π/4 leaves sin 2α unchanged, so no branch is needed
    ax, ay = m.abs(b.sx), m.abs(b.sy)
    angle = m.safe_div(2 * ax * ay, b.sx * b.sx + b.sy * b.sy)
    gamma = 2 - angle
    # distance cost Δ = Σ 1 − e^(−γ ρ_t), ρ_x = (Δx / c_w)², ρ_y = (Δy / c_h)² (enclosing width and height)
    rho_x = b.ratio_at_most_one(b.sx * b.sx, b.cw * b.cw)
    rho_y = b.ratio_at_most_one(b.sy * b.sy, b.ch * b.ch)
    distance = (1 - m.exp(-gamma * rho_x)) + (1 - m.exp(-gamma * rho_y))
    # shape cost with ω_w = |w − w_gt| / max(w, w_gt), ω_h likewise
    omega_w = m.safe_div(m.abs(b.pw - b.tw), m.maximum(b.pw, b.tw))
    omega_h = m.safe_div(m.abs(b.ph - b.th), m.maximum(b.ph, b.th))
    return 1 - b.iou + (distance + shape_cost(m, omega_w, omega_h, theta)) * 0.5


@_fill_loss_doc
def siou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
              avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
              theta: float = 4.0) -> Tensor:
    r"""SIoU loss: 1 − IoU plus half the sum of a distance cost steered by the direction between the centres and
    a shape cost.

    .. math::
        \Lambda = 1 - 2\sin^2\!\big(\arcsin\tfrac{|\Delta y|}{\sigma} - \tfrac{\pi}{4}\big)
                = \tfrac{2|\Delta x||\Delta y|}{\sigma^2},\quad
        \Delta = \sum_{t=x,y} 1 - e^{-(2-\Lambda)\rho_t},\ \rho_x = (\Delta x / c_w)^2,\ \rho_y = (\Delta y / c_h)^2

        \Omega = \sum_{t=w,h} (1 - e^{-\omega_t})^\theta,\ \omega_w = \tfrac{|w - w^{gt}|}{\max(w, w^{gt})},\quad
        \mathcal{L} = 1 - \mathrm{IoU} + \tfrac{\Delta + \Omega}{2} \in [0, 3)

    with Δx, Δy the offsets and σ the distance between the box centres and c_w, c_h the enclosing box's size.

    Notes: Λ is written in the closed form 2|Δx||Δy|/σ², which equals the paper's expression (and its switch
    from α to β = π/2 − α above 45°, which changes nothing because sin 2α = sin 2β) without an arcsin whose
    gradient is infinite at ±1; at coincident centres Λ = 0 (the distance cost is 0 there anyway). Popular copies
    (YOLOv6, mmyolo) compute the same values through arcsin and a threshold at √2/2. Disjoint boxes get a
    gradient from the distance cost.

    {args}
        theta (float): the shape cost's exponent θ in (0, 1e3] (the paper uses 4; its experiments cover 2 to 6).

    {returns}

    Reference:
        Z. Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding Box Regression", arXiv 2022.
        https://arxiv.org/abs/2205.12740

    Example:
        >>> import torch
        >>> from boxloss import siou_loss
        >>> siou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 2.]]))
        tensor(0.)
    """
    theta = check_param("theta", theta, 0.0, 1e3, low_open=True)  # the kernels hold θ in float32
    return variant_loss("siou", (theta,), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
register("siou", siou_formula, ("theta",))
