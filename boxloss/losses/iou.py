"""IoU losses with zero-overlap handling: 1 − IoU and −ln IoU (UnitBox).

For disjoint boxes IoU is 0 whatever their distance, so 1 − IoU has no gradient and −ln IoU is infinite: a
prediction that misses its target cannot learn from it. boxloss adds, on disjoint pairs only, the distance
between the boxes' nearest points divided by the diagonal of their enclosing box (see :func:`iou_loss`).
"""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._fast import aligned_loss
from .._utils import _check_choice, _fill_loss_doc, _prepare_loss_inputs

__all__ = ["iou_loss", "log_iou_loss"]

ZERO_OVERLAP = ("distance", "none")


@_fill_loss_doc
def iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
             avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
             zero_overlap: str = "distance") -> Tensor:
    r"""IoU loss, 1 − IoU, with a gradient for boxes that do not overlap.

    .. math::
        \mathcal{L} = 1 - \mathrm{IoU}(P, T) + \frac{d(P, T)}{c}

    where :math:`d(P, T) = \sqrt{g_x^2 + g_y^2}` is the distance between the nearest points of the two boxes
    (:math:`g_x = \max(0, \max(x_1^P, x_1^T) - \min(x_2^P, x_2^T))`, likewise :math:`g_y`) and :math:`c` the
    diagonal of the smallest box enclosing both.

    Why this term (``zero_overlap="distance"``, the default):

    * it is 0 whenever the boxes overlap or touch, so the loss is exactly the textbook 1 − IoU wherever
      IoU > 0, and it is continuous at the boundary (both sides tend to 1 as the boxes come to touch);
    * on disjoint pairs it lies in [0, 1), so the loss stays in [0, 2) like the GIoU loss, and it is scale
      invariant like every term of the family;
    * its gradient shrinks the gap at a rate that does not vanish near contact (the distance is not
      squared, unlike DIoU's centre term), so gradient descent reaches overlap in finitely many steps.

    It borrows DIoU's normalisation by the enclosing diagonal (Zheng et al., 2020) and GIoU's motivation
    (Rezatofighi et al., 2019), but measures the gap between the boxes rather than between their centres, so
    that it leaves overlapping pairs alone. ``zero_overlap="none"`` gives the textbook loss: 1 on every
    disjoint pair, with zero gradient.

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
        >>> iou_loss(pred, target, reduction="none")  # 1 - 1/7; 1 + 1/sqrt(10)
        tensor([0.8571, 1.3162])
        >>> iou_loss(pred, target, reduction="none", zero_overlap="none")
        tensor([0.8571, 1.0000])
    """
    _check_choice("zero_overlap", zero_overlap, ZERO_OVERLAP)
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt)
    kind = "iou_distance" if zero_overlap == "distance" else "iou"  # the formulas: boxes._reference_loss
    return aligned_loss(kind, p, t, eps, reduction, weight, avg_factor)


@_fill_loss_doc
def log_iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                 avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                 zero_overlap: str = "distance") -> Tensor:
    r"""UnitBox's log IoU loss, −ln IoU, with a gradient for boxes that do not overlap.

    .. math::
        \mathcal{L} = -\ln \max(\mathrm{IoU}(P, T), \epsilon) + \frac{d(P, T)}{c}

    with :math:`d/c` the zero-overlap term of :func:`iou_loss` (0 whenever the boxes overlap). IoU is clamped
    at ``eps`` as every implementation of UnitBox must (−ln 0 is infinite), so the loss is at most
    :math:`-\ln\epsilon + 1` (17.1 for the default ``eps``), exactly the textbook value wherever
    IoU ≥ ``eps``, and continuous as disjoint boxes come to touch (both sides tend to :math:`-\ln\epsilon`).
    On disjoint pairs its gradient is that of :math:`d/c`, which pulls the boxes together.

    ``zero_overlap="none"`` gives the textbook loss: on every disjoint pair the clamp makes it the constant
    :math:`-\ln\epsilon` (≈ 16.12 for ``eps=1e-7``) with zero gradient, so such a pair contributes a large
    value but teaches nothing.

    {args}
        zero_overlap (str): ``"distance"`` (default) or ``"none"``.

    {returns}

    Reference:
        Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016. https://arxiv.org/abs/1608.01471

    Example:
        >>> import torch
        >>> from boxloss import log_iou_loss
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> target = torch.tensor([[0., 0., 2., 4.]])
        >>> log_iou_loss(pred, target)  # -ln(4 / 8)
        tensor(0.6931)
    """
    _check_choice("zero_overlap", zero_overlap, ZERO_OVERLAP)
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt)
    kind = "log_iou_distance" if zero_overlap == "distance" else "log_iou"  # the formulas: boxes._reference_loss
    return aligned_loss(kind, p, t, eps, reduction, weight, avg_factor)

