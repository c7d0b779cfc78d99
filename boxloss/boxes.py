"""Box geometry: IoU, GIoU, DIoU and CIoU, pairwise and aligned, in one place.

Every formula lives in a private kernel that takes two ``xyxy`` tensors whose leading dimensions broadcast
against each other and returns the score together with the IoU it used; the public functions only check,
convert and arrange the inputs (pairwise: ``(..., N, 1, 4)`` against ``(..., 1, M, 4)``; aligned: as given)
and the losses in the sibling modules reuse the same kernels. This plain-PyTorch code is the reference that
the fast paths in :mod:`boxloss._fast` are tested against.

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

from . import _fast
from ._utils import ALL_FORMATS, BOX_FORMATS, ROTATED_FORMATS, _prepare_pair

__all__ = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]


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
    ``benchmarks/RESULTS.md``, "Zero-overlap normalisation"). A target with a diagonal at or under ``eps`` (a
    point) falls back to the enclosing diagonal, which keeps the term in [0, 1].
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
# it at 1/0.7. 0.7 by measurement: benchmarks/RESULTS.md, "−ln IoU that converges".
LOG_IOU_LINEAR_BELOW = 0.7


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


# ----------------------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------------------
def _arrange(b1: Tensor, b2: Tensor, aligned: bool) -> Tuple[Tensor, Tensor]:
    """Views of two xyxy tensors that broadcast to the output layout."""
    if not isinstance(aligned, bool):
        raise TypeError(f"aligned must be a bool; got {type(aligned).__name__}")
    if aligned:
        try:
            torch.broadcast_shapes(b1.shape[:-1], b2.shape[:-1])
        except RuntimeError:
            raise ValueError(f"with aligned=True the leading dimensions of boxes1 and boxes2 must broadcast; "
                             f"got shapes {tuple(b1.shape)} and {tuple(b2.shape)}") from None
        return b1, b2
    if b1.dim() < 2 or b2.dim() < 2:
        raise ValueError(f"with aligned=False boxes1 and boxes2 must have shape (..., N, 4) and (..., M, 4); "
                         f"got shapes {tuple(b1.shape)} and {tuple(b2.shape)}")
    try:
        torch.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    except RuntimeError:
        raise ValueError(f"with aligned=False the batch dimensions of boxes1 (..., N, 4) and boxes2 (..., M, 4) "
                         f"must broadcast; got shapes {tuple(b1.shape)} and {tuple(b2.shape)}") from None
    return b1.unsqueeze(-2), b2.unsqueeze(-3)


def _box_function(kind: str, boxes1: Tensor, boxes2: Tensor, aligned: bool, fmt: str, eps: float) -> Tensor:
    if kind == "ciou" and isinstance(fmt, str) and fmt in ROTATED_FORMATS:
        raise ValueError(f"complete_box_iou does not support rotated boxes (fmt={fmt!r}): CIoU's aspect term "
                         f"arctan(w/h) is not periodic in the angle; use distance_box_iou or generalized_box_iou, "
                         f"or a Gaussian loss (probiou_loss, kld_loss, gwd_loss, kfiou_loss)")
    b1, b2 = _prepare_pair(boxes1, boxes2, fmt, eps, formats=ALL_FORMATS if kind != "ciou" else BOX_FORMATS)
    if fmt in ROTATED_FORMATS:  # exact rotated-rectangle geometry: boxloss/rotated.py
        kind = "rotated_" + kind
    v1, v2 = _arrange(b1, b2, aligned)  # checks the shapes
    if aligned:
        shape = torch.broadcast_shapes(v1.shape, v2.shape)
        return 1 - _fast.aligned_loss(kind, v1.expand(shape), v2.expand(shape), eps)  # every score is 1 − loss
    return _fast.pairwise(kind, b1, b2, eps)


_SHAPES_DOC = """
    Args:
        boxes1 (Tensor[..., N, 4] or, with ``aligned=True``, Tensor[..., 4]): first set of boxes.
        boxes2 (Tensor[..., M, 4] or, with ``aligned=True``, Tensor[..., 4]): second set of boxes.
        aligned (bool): ``False`` (default) compares every box of ``boxes1`` with every box of ``boxes2``
            (``(N, 4) × (M, 4) → (N, M)``, batched ``(B, N, 4) × (B, M, 4) → (B, N, M)``, batch dimensions
            broadcast); ``True`` compares them elementwise, ``(..., 4) × (..., 4) → (...)`` with broadcasting.
        fmt (str): box format, ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``, as in
            ``torchvision.ops.box_convert``; except for ``complete_box_iou``, also the rotated formats
            ``"cxcywhr"`` and ``"xywhr"`` (``Tensor[..., 5]``, angle in degrees, counter-clockwise, the width along
            (cos θ, −sin θ), as torchvision) and ``"xyxyxyxy"`` (``Tensor[..., 8]``, four corners).
        eps (float): lower bound of every denominator. Default: ``1e-7``.

    Returns:
        Tensor[..., N, M] (pairwise) or Tensor[...] (aligned): float64 for float64 inputs, float32 for every
        other dtype (float16, bfloat16 and integer inputs are computed in float32).

    Raises:
        TypeError: a box argument that is not a real-valued tensor, or a non-bool ``aligned``.
        ValueError: a last dimension other than the format's (4; rotated: 5, or 8 for ``xyxyxyxy``), shapes
            that do not broadcast, an unknown ``fmt``, a
            non-positive ``eps``, or inputs on different devices.

    Edge cases: widths and heights are clamped at 0 (an inverted box has zero area) and denominators at
    ``eps``, so every finite input gives a finite value; a zero-area box has IoU 0 with everything. Empty
    inputs give empty outputs.

    Rotated boxes (:mod:`boxloss.rotated`): the exact area of the intersection polygon, computed in the pair's
    own scale (tiny boxes are as exact as large ones); a box turned by 180° or given as (h, w, θ + 90°) is the
    same box. GIoU's enclosing region and DIoU's enclosing diagonal are those of the smallest rectangle
    enclosing both boxes aligned with the box of ``boxes2``, so rotated GIoU and DIoU are not symmetric in their
    arguments when the angles differ (at equal angles they equal the axis-aligned values)."""


def box_iou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, fmt: str = "xyxy",
            eps: float = 1e-7) -> Tensor:
    r"""Intersection over union (Jaccard index) of two sets of boxes.

    .. math:: \mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A \cup B|} \in [0, 1]

    Equals ``torchvision.ops.box_iou`` for boxes of area larger than ``eps``.
    {shapes}

    Reference:
        Jaccard, "Étude comparative de la distribution florale", 1901; as a box loss: Yu et al., "UnitBox: An
        Advanced Object Detection Network", ACM MM 2016.

    Example:
        >>> import torch
        >>> from boxloss import box_iou
        >>> a = torch.tensor([[0., 0., 2., 2.]])
        >>> b = torch.tensor([[1., 1., 3., 3.], [4., 4., 5., 5.]])
        >>> box_iou(a, b)  # 1 / (4 + 4 - 1)
        tensor([[0.1429, 0.0000]])
        >>> box_iou(a, b[:1], aligned=True)
        tensor([0.1429])
    """
    return _box_function("iou", boxes1, boxes2, aligned, fmt, eps)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, fmt: str = "xyxy",
                        eps: float = 1e-7) -> Tensor:
    r"""Generalized IoU of two sets of boxes.

    .. math:: \mathrm{GIoU}(A, B) = \mathrm{IoU}(A, B) - \frac{|C \setminus (A \cup B)|}{|C|} \in (-1, 1]

    with :math:`C` the smallest box enclosing :math:`A` and :math:`B`. Unlike IoU it keeps decreasing as
    disjoint boxes move apart. Equals ``torchvision.ops.generalized_box_iou`` for boxes of area larger
    than ``eps``.
    {shapes}

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union: A Metric and A Loss for Bounding Box
        Regression", CVPR 2019. https://arxiv.org/abs/1902.09630

    Example:
        >>> import torch
        >>> from boxloss import generalized_box_iou
        >>> a = torch.tensor([[0., 0., 1., 1.]])
        >>> b = torch.tensor([[2., 0., 3., 1.]])
        >>> generalized_box_iou(a, b)  # 0 - (3 - 2) / 3
        tensor([[-0.3333]])
    """
    return _box_function("giou", boxes1, boxes2, aligned, fmt, eps)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, fmt: str = "xyxy",
                     eps: float = 1e-7) -> Tensor:
    r"""Distance IoU of two sets of boxes.

    .. math:: \mathrm{DIoU}(A, B) = \mathrm{IoU}(A, B) - \frac{\rho^2(a, b)}{c^2} \in (-1, 1]

    with :math:`\rho(a, b)` the distance between the box centres and :math:`c` the diagonal of the smallest
    enclosing box. Equals ``torchvision.ops.distance_box_iou`` (which adds ``eps`` to :math:`c^2` where this
    clamps it) up to a relative ``eps / c²``.
    {shapes}

    Reference:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression", AAAI 2020.
        https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch
        >>> from boxloss import distance_box_iou
        >>> a = torch.tensor([[0., 0., 1., 1.]])
        >>> b = torch.tensor([[2., 0., 3., 1.]])
        >>> distance_box_iou(a, b)  # 0 - 2² / (3² + 1²)
        tensor([[-0.4000]])
    """
    return _box_function("diou", boxes1, boxes2, aligned, fmt, eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, fmt: str = "xyxy",
                     eps: float = 1e-7) -> Tensor:
    r"""Complete IoU of two sets of boxes.

    .. math::
        \mathrm{CIoU}(A, B) = \mathrm{DIoU}(A, B) - \alpha v, \quad
        v = \frac{4}{\pi^2}\Big(\arctan\frac{w_B}{h_B} - \arctan\frac{w_A}{h_A}\Big)^2, \quad
        \alpha = \frac{v}{1 - \mathrm{IoU} + v}

    :math:`\alpha` is treated as a constant by autograd, as in the paper and torchvision. Heights enter
    :math:`\arctan(w/h)` clamped at ``eps``. Equals ``torchvision.ops.complete_box_iou`` for boxes larger than
    ``eps``, up to a relative ``eps / c²``.
    {shapes}

    Reference:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression", AAAI 2020,
        section "Complete IoU Loss". https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch
        >>> from boxloss import complete_box_iou
        >>> a = torch.tensor([[0., 0., 2., 2.]])
        >>> complete_box_iou(a, a)  # a box against itself
        tensor([[1.]])
    """
    return _box_function("ciou", boxes1, boxes2, aligned, fmt, eps)


for _fn in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou):
    _fn.__doc__ = _fn.__doc__.replace("{shapes}", _SHAPES_DOC.strip())
del _fn
