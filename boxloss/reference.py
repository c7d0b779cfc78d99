"""The reference formulas of the axis-aligned box scores and losses, in plain PyTorch: what every fast path is
tested against, what runs when the fast paths are off, and what second derivatives differentiate.

Every formula is a private kernel that takes two ``xyxy`` tensors whose leading dimensions broadcast against
each other and returns the score together with the IoU it used. :mod:`boxloss.boxes` (the public box
functions), the losses and the backends all use these; this module imports nothing from boxloss, so each of
them can.

Conventions shared by every kernel (and documented in each public docstring):

* Widths and heights are clamped at 0, so an inverted box (``x2 < x1`` or ``y2 < y1``) has zero area and
  overlaps nothing, instead of the negative or spuriously positive areas an unclamped formula gives.
* Every denominator is clamped below at ``eps``: for boxes larger than ``eps`` the values equal
  ``torchvision.ops`` (which divides exactly), and degenerate boxes give finite values instead of NaN. A box of
  zero area has IoU 0 with everything, itself included.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor


# ----------------------------------------------------------------------------------------------------------
# kernels on broadcastable xyxy tensors
# ----------------------------------------------------------------------------------------------------------
def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with a zero (not infinite) gradient at 0; the inner ``where`` keeps the unused branch finite."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _safe_div(num: Tensor, den: Tensor, eps: float) -> Tensor:
    """num / max(den, eps), with no gradient where den <= eps.

    A denominator under ``eps`` means that the boxes are degenerate (zero area, zero extent): there the exact
    function is singular (two zero-width boxes at the same x jump from IoU 0 to 1 as one widens), and the
    gradient of the clamped quotient would be of order size / eps. The value stays continuous at den = eps.
    """
    return torch.where(den > eps, num, num.detach()) / den.clamp_min(eps)


def _inter_union(b1: Tensor, b2: Tensor) -> Tuple[Tensor, Tensor]:
    x1a, y1a, x2a, y2a = b1.unbind(-1)
    x1b, y1b, x2b, y2b = b2.unbind(-1)
    inter_w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp_min(0)
    inter_h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp_min(0)
    inter = inter_w * inter_h
    area_a = (x2a - x1a).clamp_min(0) * (y2a - y1a).clamp_min(0)
    area_b = (x2b - x1b).clamp_min(0) * (y2b - y1b).clamp_min(0)
    return inter, area_a + area_b - inter


def _enclosing_wh(b1: Tensor, b2: Tensor) -> Tuple[Tensor, Tensor]:
    """Width and height of the smallest box enclosing both boxes."""
    x1a, y1a, x2a, y2a = b1.unbind(-1)
    x1b, y1b, x2b, y2b = b2.unbind(-1)
    cw = (torch.maximum(x2a, x2b) - torch.minimum(x1a, x1b)).clamp_min(0)
    ch = (torch.maximum(y2a, y2b) - torch.minimum(y1a, y1b)).clamp_min(0)
    return cw, ch


def _iou_kernel(b1: Tensor, b2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """IoU = |A ∩ B| / |A ∪ B|; returns (iou, union)."""
    inter, union = _inter_union(b1, b2)
    return _safe_div(inter, union, eps), union


def _giou_kernel(b1: Tensor, b2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """GIoU = IoU − |C \\ (A ∪ B)| / |C| with C the enclosing box; returns (giou, iou)."""
    iou, union = _iou_kernel(b1, b2, eps)
    cw, ch = _enclosing_wh(b1, b2)
    area_c = cw * ch
    return iou - _safe_div(area_c - union, area_c, eps), iou


def _diou_kernel(b1: Tensor, b2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """DIoU = IoU − ρ²(centres) / c² with c the enclosing diagonal; returns (diou, iou)."""
    iou, _ = _iou_kernel(b1, b2, eps)
    cw, ch = _enclosing_wh(b1, b2)
    x1a, y1a, x2a, y2a = b1.unbind(-1)
    x1b, y1b, x2b, y2b = b2.unbind(-1)
    # (2·Δcentre)² / 4 with the halving done once at the end
    rho2 = ((x1a + x2a - x1b - x2b) ** 2 + (y1a + y2a - y1b - y2b) ** 2) * 0.25
    # ρ ≤ c for valid boxes; the maximum only bites when both boxes are inverted, and keeps the term in [0, 1]
    return iou - _safe_div(rho2, torch.maximum(cw * cw + ch * ch, rho2), eps), iou


def _aspect_angle(boxes: Tensor, eps: float) -> Tensor:
    """atan(w / h) as atan2(w, h): π/2 for zero height; 0, with no gradient, for boxes under ``eps`` in w + h."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = (x2 - x1).clamp_min(0), (y2 - y1).clamp_min(0)
    # atan2's gradient h/(w²+h²) is singular at a point box: keep that branch out of both passes
    ok = (w + h) > eps
    return torch.where(ok, torch.atan2(torch.where(ok, w, 0), torch.where(ok, h, 1)), 0)


def _aspect_term(b1: Tensor, b2: Tensor, eps: float) -> Tensor:
    """CIoU's v = 4/π² (atan(w_b/h_b) − atan(w_a/h_a))²."""
    return (4 / math.pi**2) * (_aspect_angle(b2, eps) - _aspect_angle(b1, eps)) ** 2


def _ciou_kernel(b1: Tensor, b2: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """CIoU = DIoU − α·v with α = v / (1 − IoU + v) held constant in backward; returns (ciou, iou)."""
    diou, iou = _diou_kernel(b1, b2, eps)
    v = _aspect_term(b1, b2, eps)
    # α is a trade-off weight, not part of the objective: the CIoU paper (eq. 11) and torchvision
    # treat it as a constant in the backward pass. detach (not no_grad, which forward-mode AD ignores) keeps it
    # constant for every derivative, reverse or forward.
    alpha = (v / (1 - iou + v + eps)).detach()
    return diou - alpha * v, iou


def _gap_term(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Zero-overlap term: the distance between the boxes' nearest points over the target's diagonal.

    0 whenever the boxes overlap or touch; on disjoint pairs it grows linearly with the gap, so its gradient
    (1 / the target's diagonal, pointing the prediction at the target) neither vanishes near contact nor fades
    far away, and it is scale invariant. The target's diagonal, not the enclosing box's, because a normaliser
    that involves the prediction pays the prediction for growing instead of moving (measured:
    ``benchmarks/RESULTS.md``, "The zero-overlap term and the Smooth-ln threshold"). A target with a diagonal at
    or under ``eps`` (a point) falls back to the enclosing diagonal, which keeps the term in [0, 1].
    """
    x1a, y1a, x2a, y2a = pred.unbind(-1)
    x1b, y1b, x2b, y2b = target.unbind(-1)
    gap_x = (torch.maximum(x1a, x1b) - torch.minimum(x2a, x2b)).clamp_min(0)
    gap_y = (torch.maximum(y1a, y1b) - torch.minimum(y2a, y2b)).clamp_min(0)
    gap = _safe_sqrt(gap_x * gap_x + gap_y * gap_y)
    tw, th = (x2b - x1b).clamp_min(0), (y2b - y1b).clamp_min(0)
    t_diag = _safe_sqrt(tw * tw + th * th)
    cw, ch = _enclosing_wh(pred, target)
    # gap ≤ c for valid boxes; the maximum only bites for inverted ones, and keeps the fallback in [0, 1]
    fallback = torch.maximum(_safe_sqrt(cw * cw + ch * ch), gap)
    return _safe_div(gap, torch.where(t_diag > eps, t_diag, fallback), eps)


# −ln IoU continues as its tangent below this IoU (Smooth-ln, Wang et al., "Repulsion Loss", CVPR 2018): the
# gradient of −ln IoU grows as 1/IoU near first contact and makes gradient descent overshoot; the tangent caps
# it at 1/0.7. 0.7 by measurement: benchmarks/RESULTS.md, "The zero-overlap term and the Smooth-ln threshold".
LOG_IOU_LINEAR_BELOW = 0.7

# the kinds whose reference is written here (in plain PyTorch, independently of their formulas in
# boxloss.losses._pair, which the tests compare with it)
KINDS = ("iou", "iou_distance", "log_iou", "log_iou_distance", "giou", "diou", "ciou")


def _smooth_neg_log(iou: Tensor, tau: float = LOG_IOU_LINEAR_BELOW) -> Tensor:
    """−ln IoU for IoU ≥ τ, its tangent −ln τ + (τ − IoU)/τ below (continuous with a continuous gradient)."""
    above = iou >= tau
    return torch.where(above, -torch.where(above, iou, 1.0).log(), -math.log(tau) + (tau - iou) / tau)


def _reference_loss(kind: str, p: Tensor, t: Tensor, eps: float) -> Tensor:
    """Per-box loss of each kind the fast paths implement, from the kernels above: what every fast path is
    tested against, what runs when they are off, and what second derivatives differentiate."""
    if kind in ("iou", "iou_distance"):
        loss = 1 - _iou_kernel(p, t, eps)[0]
    elif kind == "log_iou":  # the textbook UnitBox loss (zero_overlap="none")
        loss = -_iou_kernel(p, t, eps)[0].clamp_min(eps).log()
    elif kind == "log_iou_distance":
        loss = _smooth_neg_log(_iou_kernel(p, t, eps)[0])
    else:
        loss = 1 - _SCORE_KERNELS[kind](p, t, eps)[0]
    if kind.endswith("_distance"):
        loss = loss + _gap_term(p, t, eps)
    return loss


_SCORE_KERNELS = {"iou": _iou_kernel, "giou": _giou_kernel, "diou": _diou_kernel, "ciou": _ciou_kernel}
