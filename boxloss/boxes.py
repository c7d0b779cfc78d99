"""Box geometry: IoU, GIoU, DIoU and CIoU, pairwise and aligned.

The formulas are the kernels of :mod:`boxloss.reference` (plain PyTorch, the reference every fast path is tested
against); the public functions here only check, convert and arrange the inputs (pairwise: ``(..., N, 1, 4)``
against ``(..., 1, M, 4)``; aligned: as given) and run the operators of :mod:`boxloss.backends`.

Conventions shared by every kernel (and documented in each public docstring):

* Widths and heights are clamped at 0, so an inverted box (``x2 < x1`` or ``y2 < y1``) has zero area and
  overlaps nothing, instead of the negative or spuriously positive areas an unclamped formula gives.
* Every denominator is clamped below at ``eps``: for boxes larger than ``eps`` the values equal
  ``torchvision.ops`` (which divides exactly), and degenerate boxes give finite values instead of NaN. A box of
  zero area has IoU 0 with everything, itself included.
"""


from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import backends
from ._utils import ALL_FORMATS, BOX_FORMATS, ROTATED_FORMATS, _prepare_pair
from .reference import (  # noqa: F401 - the formulas, also reached as boxloss.boxes.<name>
    _SCORE_KERNELS,
    LOG_IOU_LINEAR_BELOW,
    _aspect_angle,
    _aspect_term,
    _ciou_kernel,
    _diou_kernel,
    _enclosing_wh,
    _gap_term,
    _giou_kernel,
    _inter_union,
    _iou_kernel,
    _reference_loss,
    _safe_div,
    _safe_sqrt,
    _smooth_neg_log,
)

__all__ = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]


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
        return 1 - backends.aligned_loss(kind, v1.expand(shape), v2.expand(shape), eps)  # every score is 1 − loss
    return backends.pairwise(kind, b1, b2, eps)


_SHAPES_DOC = """
    Args:
        boxes1 (Tensor[..., N, 4] or, with ``aligned=True``, Tensor[..., 4]): first set of boxes.
        boxes2 (Tensor[..., M, 4] or, with ``aligned=True``, Tensor[..., 4]): second set of boxes.
        aligned (bool): ``False`` (default) compares every box of ``boxes1`` with every box of ``boxes2``
            (``(N, 4) × (M, 4) → (N, M)``, batched ``(B, N, 4) × (B, M, 4) → (B, N, M)``, batch dimensions
            broadcast); ``True`` compares them elementwise, ``(..., 4) × (..., 4) → (...)`` with broadcasting.
        fmt (str): box format, ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``, as in
            :func:`torchvision.ops.box_convert`; except for ``complete_box_iou``, also the rotated formats
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

    Equals :func:`torchvision.ops.box_iou` for boxes of area larger than ``eps``.
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
    disjoint boxes move apart. Equals :func:`torchvision.ops.generalized_box_iou` for boxes of area larger
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
    enclosing box. Equals :func:`torchvision.ops.distance_box_iou` (which adds ``eps`` to :math:`c^2` where this
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
    :math:`\arctan(w/h)` clamped at ``eps``. Equals :func:`torchvision.ops.complete_box_iou` for boxes larger than
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
    _fn.__doc__ = _fn.__doc__.replace("{shapes}", "\n    " + _SHAPES_DOC.strip())
del _fn
