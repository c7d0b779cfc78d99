"""IoU losses with zero-overlap handling: 1 − IoU and −ln IoU (UnitBox).

For disjoint boxes IoU is 0 whatever their distance, so 1 − IoU has no gradient and −ln IoU is infinite: a
prediction that misses its target cannot learn from it. boxloss adds, on disjoint pairs only, the distance
between the boxes' nearest points divided by the target's diagonal (see :func:`iou_loss`), and continues −ln IoU
by its tangent below IoU 0.7 so that its gradient stays bounded (see :func:`log_iou_loss`).
"""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import ALL_FORMATS, _check_choice, _fill_loss_doc, _prepare_loss_inputs, _rotated_kind
from ..backends import aligned_loss
from ..kinds import register
from ._pair import iou_distance_formula, iou_formula, log_iou_distance_formula, log_iou_formula

__all__ = ["iou_loss", "log_iou_loss"]

ZERO_OVERLAP = ("distance", "none")


@_fill_loss_doc
def iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
             avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
             zero_overlap: str = "distance") -> Tensor:
    r"""IoU loss, 1 − IoU, with a gradient for boxes that do not overlap.

    .. math::
        \mathcal{L} = 1 - \mathrm{IoU}(P, T) + \frac{d(P, T)}{\lVert T \rVert}

    where :math:`d(P, T) = \sqrt{g_x^2 + g_y^2}` is the distance between the nearest points of the two boxes
    (:math:`g_x = \max(0, \max(x_1^P, x_1^T) - \min(x_2^P, x_2^T))`, likewise :math:`g_y`) and
    :math:`\lVert T \rVert` the diagonal of the target (for a point target, at or under ``eps``, the diagonal of
    the box enclosing both, which keeps the term in [0, 1]).

    Why this term (``zero_overlap="distance"``, the default):

    * it is 0 whenever the boxes overlap or touch, so the loss is exactly the textbook 1 − IoU wherever
      IoU > 0, and it is continuous at the boundary (both sides tend to 1 as the boxes come to touch);
    * on disjoint pairs it grows linearly with the gap, so its gradient, 1/‖T‖ towards the target, neither
      vanishes as the gap closes (the distance is not squared, unlike DIoU's centre term) nor fades far away,
      and gradient descent reaches overlap in finitely many steps; it is scale invariant;
    * it is normalised by the *target's* size alone: a normaliser that involves the prediction (the enclosing
      box's diagonal, as DIoU uses) lets the prediction lower the term by growing instead of moving. Measured
      in the DIoU paper's simulation (``benchmarks/RESULTS.md``): the enclosing diagonal ends at 4.5× GIoU's
      final error, the target's diagonal at 1.8×.

    The loss is therefore not bounded on disjoint pairs (1 + gap/‖T‖). ``zero_overlap="none"`` gives the
    textbook loss: 1 on every disjoint pair, with zero gradient.

    {args}
        zero_overlap (str): ``"distance"`` (default) or ``"none"``.

    {returns}

    Reference:
        Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016 (IoU loss);
        Rezatofighi et al., CVPR 2019 (GIoU); Zheng et al., AAAI 2020 (DIoU).

    Example:
        >>> import torch
        >>> from boxloss import iou_loss
        >>> pred = torch.tensor([[0., 0., 2., 2.], [0., 0., 1., 1.]])
        >>> target = torch.tensor([[1., 1., 3., 3.], [2., 0., 3., 1.]])
        >>> iou_loss(pred, target, reduction="none")  # 1 - 1/7; 1 + 1/sqrt(2)
        tensor([0.8571, 1.7071])
        >>> iou_loss(pred, target, reduction="none", zero_overlap="none")
        tensor([0.8571, 1.0000])
    """
    _check_choice("zero_overlap", zero_overlap, ZERO_OVERLAP)
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt, ALL_FORMATS)
    # the formulas in _pair.py (reference: boxloss.reference)
    kind = "iou_distance" if zero_overlap == "distance" else "iou"
    return aligned_loss(_rotated_kind(kind, fmt), p, t, eps, reduction, weight, avg_factor)


@_fill_loss_doc
def log_iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                 avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                 zero_overlap: str = "distance") -> Tensor:
    r"""UnitBox's log IoU loss, −ln IoU, with a bounded gradient and a gradient for boxes that do not overlap.

    .. math::
        \mathcal{L} = \begin{cases} -\ln \mathrm{IoU} & \mathrm{IoU} \ge \tau \\
            -\ln\tau + (\tau - \mathrm{IoU})/\tau & \mathrm{IoU} < \tau \end{cases}
            \; + \frac{d(P, T)}{\lVert T \rVert}, \qquad \tau = 0.7

    with :math:`d/\lVert T \rVert` the zero-overlap term of :func:`iou_loss` (0 whenever the boxes overlap).
    Above IoU 0.7 it is exactly UnitBox's −ln IoU; below, its tangent at 0.7 (the Smooth-ln of Wang et al.,
    "Repulsion Loss", CVPR 2018): same value and slope at 0.7, and a slope of at most 1/0.7 instead of the 1/IoU
    that grows without bound as boxes come to first contact. Plain gradient descent on −ln IoU overshoots there
    and diverges in the DIoU paper's simulation (error 1e7); with the tangent below 0.7 it ends at half GIoU's
    final error (``benchmarks/RESULTS.md``: thresholds from 0.05 to 0.8 were measured; below 0.5 the slope
    1/τ itself is large enough to oscillate). At IoU 0 the loss is 1 − ln 0.7 ≈ 1.357, continuous as disjoint
    boxes come to touch.

    ``zero_overlap="none"`` gives the textbook loss :math:`-\ln\max(\mathrm{IoU}, \epsilon)` everywhere: on
    every disjoint pair the clamp makes it the constant :math:`-\ln\epsilon` (≈ 16.12 for ``eps=1e-7``) with
    zero gradient, so such a pair contributes a large value but teaches nothing.

    {args}
        zero_overlap (str): ``"distance"`` (default) or ``"none"``.

    {returns}

    Reference:
        Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016. https://arxiv.org/abs/1608.01471

    Example:
        >>> import torch
        >>> from boxloss import log_iou_loss
        >>> pred = torch.tensor([[0., 0., 2., 2.], [0., 0., 2., 2.]])
        >>> target = torch.tensor([[0., 0., 2., 2.5], [0., 0., 2., 4.]])
        >>> log_iou_loss(pred, target, reduction="none")  # -ln 0.8; below 0.7: -ln 0.7 + (0.7 - 0.5) / 0.7
        tensor([0.2231, 0.6424])
        >>> log_iou_loss(pred, target, reduction="none", zero_overlap="none")  # the textbook -ln IoU
        tensor([0.2231, 0.6931])
    """
    _check_choice("zero_overlap", zero_overlap, ZERO_OVERLAP)
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt, ALL_FORMATS)
    # the formulas in _pair.py (reference: boxloss.reference)
    kind = "log_iou_distance" if zero_overlap == "distance" else "log_iou"
    return aligned_loss(_rotated_kind(kind, fmt), p, t, eps, reduction, weight, avg_factor)


# the formulas of the four kinds (textbook or with the zero-overlap term): the kernels the backends generate
register("iou", iou_formula)
register("iou_distance", iou_distance_formula)
register("log_iou", log_iou_formula)
register("log_iou_distance", log_iou_distance_formula)
