"""Private helpers shared by every public function: input checks, upcasting, format conversion, reduction.

Every check here looks at shapes, dtypes and Python values only, never at the values of a tensor, so none of
them forces a host-device synchronisation on CUDA.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
ROTATED_FORMATS = ("cxcywhr", "xywhr", "xyxyxyxy")
ALL_FORMATS = BOX_FORMATS + ROTATED_FORMATS
REDUCTIONS = ("none", "mean", "sum")
ROTATED_SUPPORT = ("box_iou, generalized_box_iou, distance_box_iou, iou_loss, log_iou_loss, giou_loss, diou_loss "
                   "and the Gaussian losses (probiou_loss, gwd_loss, kld_loss, kfiou_loss)")


def check_param(name: str, value, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> float:
    """A real, finite number in the given range, as float; ``ValueError``/``TypeError`` naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in {lo}{low:g}, {high:g}{hi}; got {value!r}")
    return value


def _check_choice(name: str, value: object, allowed: tuple) -> None:
    if not isinstance(value, str) or value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")


def _check_fmt(fmt: object, formats: tuple = BOX_FORMATS) -> None:
    """A known box format; a rotated one where only axis-aligned formats are accepted says where it is."""
    if isinstance(fmt, str) and fmt in ROTATED_FORMATS and fmt not in formats:
        raise ValueError(f"fmt={fmt!r} (rotated boxes) is not supported here; rotated boxes are supported by "
                         f"{ROTATED_SUPPORT}. Axis-aligned formats: {', '.join(repr(f) for f in formats)}")
    _check_choice("fmt", fmt, formats)


def _rotated_kind(kind: str, fmt: str) -> str:
    """The operator kind of a loss for boxes in ``fmt``: the rotated formulas (boxloss/rotated.py) for rotated
    formats."""
    return "rotated_" + kind if fmt in ROTATED_FORMATS else kind


def _columns(fmt: str) -> int:
    return 8 if fmt == "xyxyxyxy" else 5 if fmt in ROTATED_FORMATS else 4


def _check_boxes(name: str, boxes: object, fmt: str = "xyxy") -> None:
    """A box tensor: a real (floating or integer) ``Tensor[..., k]``, ``k`` the coordinates of ``fmt`` (4 for
    the axis-aligned formats, 5 for ``cxcywhr`` and ``xywhr``, 8 for ``xyxyxyxy``)."""
    k = _columns(fmt)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., {k}); got {type(boxes).__name__}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must have a real floating or integer dtype; got {boxes.dtype}")
    if boxes.dim() == 0 or boxes.shape[-1] != k:
        raise ValueError(f"{name} must have shape (..., {k}) with {k} coordinates in the last dimension "
                         f"(fmt={fmt!r}); got shape {tuple(boxes.shape)}")


_SMALLEST_NORMAL = {torch.float32: torch.finfo(torch.float32).tiny, torch.float64: torch.finfo(torch.float64).tiny}


def _check_eps(eps: object, dtype: Optional[torch.dtype] = None) -> None:
    """A positive number, and (when the compute dtype is known) at least its smallest normal number: a subnormal
    or zero ``eps`` lets 1/eps overflow, which turns clamped denominators into Inf and NaN."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not eps > 0:
        raise ValueError(f"eps must be a positive number; got {eps!r}")
    tiny = _SMALLEST_NORMAL.get(dtype, _SMALLEST_NORMAL[torch.float32] if dtype is not None else 0.0)
    if eps < tiny:
        raise ValueError(f"eps must be at least the smallest normal number of the compute dtype {dtype} "
                         f"({tiny:.3g}); got {eps!r}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the math runs in: the promoted input dtype, at least float32 (float64 stays float64)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SaturatingUpcast(torch.autograd.Function):
    """``x.to(dtype)`` whose backward clamps the gradient into the finite range of ``x``'s dtype.

    The math runs in float32, where a gradient can be finite but beyond float16's 65504 (−ln IoU near IoU = 0,
    degenerate boxes); a plain cast would turn it into Inf. Saturating keeps float16 training finite.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.in_dtype = x.dtype
        return x.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        limit = torch.finfo(ctx.in_dtype).max
        return grad.clamp(-limit, limit).to(ctx.in_dtype), None


def _upcast(boxes: Tensor, dtype: torch.dtype) -> Tensor:
    # fp16 areas overflow for boxes of ~256 px and over, so half inputs are computed in float32.
    if boxes.dtype == dtype:
        return boxes
    if boxes.is_floating_point() and boxes.requires_grad and torch.finfo(boxes.dtype).max < torch.finfo(dtype).max:
        return _SaturatingUpcast.apply(boxes, dtype)
    return boxes.to(dtype)


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    """Convert ``boxes`` to ``(x1, y1, x2, y2)``; ``fmt`` has the meaning of :func:`torchvision.ops.box_convert`."""
    if fmt == "xyxy":
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    # cxcywh
    return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)


def _prepare_pair(boxes1: Tensor, boxes2: Tensor, fmt: str, eps: float, names=("boxes1", "boxes2"),
                  formats: tuple = BOX_FORMATS):
    """Check two box tensors and return them in xyxy format and one floating dtype: as given when they already
    are (float16/bfloat16 included), else upcast to the compute dtype (see :func:`_compute_dtype`). Rotated
    boxes (where ``formats`` allows them) come back as cxcywhr in the compute dtype."""
    _check_fmt(fmt, formats)
    _check_boxes(names[0], boxes1, fmt)
    _check_boxes(names[1], boxes2, fmt)
    _check_eps(eps, _compute_dtype(boxes1, boxes2))
    if boxes1.device != boxes2.device:
        raise ValueError(f"{names[0]} and {names[1]} must be on the same device; "
                         f"got {boxes1.device} and {boxes2.device}")
    if fmt in ROTATED_FORMATS:
        from .rotated import to_cxcywhr

        dtype = _compute_dtype(boxes1, boxes2)
        return to_cxcywhr(_upcast(boxes1, dtype), fmt), to_cxcywhr(_upcast(boxes2, dtype), fmt)
    if fmt == "xyxy" and boxes1.dtype == boxes2.dtype and boxes1.is_floating_point():
        # as they are: the fast paths read float16/bfloat16 natively and compute in float32 (the reference path
        # upcasts with _upcast), which saves a converted copy of both inputs
        return boxes1, boxes2
    dtype = _compute_dtype(boxes1, boxes2)
    return _to_xyxy(_upcast(boxes1, dtype), fmt), _to_xyxy(_upcast(boxes2, dtype), fmt)


def _check_same_device(name: str, value: Tensor, pred: Tensor) -> None:
    """A tensor argument beside the boxes must be on their device: a kernel would read another device's memory
    as its own (a CUDA pointer from the CPU kernel, or the uninitialised data of a meta tensor)."""
    if value.device != pred.device:
        raise ValueError(f"{name} must be on the boxes' device {pred.device}; got a tensor on {value.device} "
                         f"(move it with .to(pred.device))")


def _check_loss_inputs(pred: Tensor, target: Tensor, reduction: str, weight: Optional[Tensor],
                       avg_factor: Union[None, float, Tensor], fmt: str = "xyxy") -> None:
    _check_boxes("pred", pred, fmt)
    _check_boxes("target", target, fmt)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape (..., {_columns(fmt)}); "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    _check_choice("reduction", reduction, REDUCTIONS)
    loss_shape = pred.shape[:-1]
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor broadcastable to {tuple(loss_shape)} or None; "
                            f"got {type(weight).__name__}")
        try:
            ok = torch.broadcast_shapes(weight.shape, loss_shape) == loss_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"weight must be broadcastable to the loss shape pred.shape[:-1] = "
                             f"{tuple(loss_shape)}; got shape {tuple(weight.shape)}")
        if weight.is_complex():
            raise TypeError(f"weight must be a real tensor; got dtype {weight.dtype}")
        _check_same_device("weight", weight, pred)
    if avg_factor is not None:
        if reduction != "mean":
            raise ValueError(f"avg_factor only applies with reduction='mean'; got reduction={reduction!r}")
        if isinstance(avg_factor, Tensor):
            # (a tensor's value is not checked: that would synchronise with the GPU; it is clamped at eps)
            if avg_factor.numel() != 1:
                raise ValueError(f"avg_factor must be a number or a one-element tensor; "
                                 f"got a tensor of shape {tuple(avg_factor.shape)}")
            if avg_factor.is_complex():
                raise TypeError(f"avg_factor must be a real tensor; got dtype {avg_factor.dtype}")
            _check_same_device("avg_factor", avg_factor, pred)
        elif isinstance(avg_factor, (bool, np.bool_)) or not isinstance(avg_factor, (int, float, np.integer,
                                                                                     np.floating)):
            raise TypeError(f"avg_factor must be a number, a one-element tensor or None; "
                            f"got {type(avg_factor).__name__}")
        elif not avg_factor >= 0:
            raise ValueError(f"avg_factor must be >= 0 (e.g. the number of positives); got {avg_factor!r}")


def _reduce(loss: Tensor, reduction: str, weight: Optional[Tensor] = None,
            avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7) -> Tensor:
    """Weight and reduce a per-box loss.

    ``mean`` divides the weighted sum by ``avg_factor`` when given, else by the number of elements (as
    mmdetection does), and returns a 0 still attached to the graph for an empty input.
    """
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if avg_factor is None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # traced graphs are replayed on other sizes (torch.jit.trace bakes in a Python number): count at run time
            return total / torch.ones_like(loss).sum().clamp_min(1)
        return total / max(loss.numel(), 1)
    if isinstance(avg_factor, Tensor):
        # clamp instead of testing the value: no host sync, and 0 positives give 0 rather than NaN
        return total / avg_factor.to(total.dtype).reshape(()).clamp_min(eps)
    return total / max(float(avg_factor), eps)


def _prepare_loss_inputs(pred: Tensor, target: Tensor, reduction: str, weight: Optional[Tensor],
                         avg_factor: Union[None, float, Tensor], eps: float, fmt: str,
                         formats: tuple = BOX_FORMATS) -> Tuple[Tensor, Tensor]:
    """Check the arguments every box loss shares; return pred and target upcast and in xyxy format (rotated
    formats, where ``formats`` allows them: cxcywhr)."""
    _check_fmt(fmt, formats)
    _check_loss_inputs(pred, target, reduction, weight, avg_factor, fmt)
    return _prepare_pair(pred, target, fmt, eps, names=("pred", "target"), formats=formats)


LOSS_ARGS_DOC = """
    Args:
        pred (Tensor[..., 4]): predicted boxes.
        target (Tensor[..., 4]): target boxes, same shape as ``pred``.
        reduction (str): ``"none"`` returns one loss per box (shape ``pred.shape[:-1]``); ``"mean"`` (default)
            the weighted sum divided by ``avg_factor`` or, without it, by the number of boxes; ``"sum"`` the
            weighted sum.
        weight (Tensor, optional): per-box weights, broadcastable to ``pred.shape[:-1]``.
        avg_factor (float or one-element Tensor, optional): with ``reduction="mean"``, the normaliser of the
            weighted sum (e.g. the number of positive anchors), a Python or numpy number ≥ 0 or a tensor; clamped
            below at ``eps``.
        eps (float): lower bound of every denominator, at least the smallest normal number of the compute dtype
            (1.2e-38 for float32). Default: ``1e-7``. (Rotated boxes: the geometry is computed in units of the
            pair's largest side, where the union is never small unless a box is thin, so the IoU's denominator
            is not clamped: a thin box's IoU with itself is exactly 1.)
        fmt (str): box format, ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``. ``iou_loss``, ``log_iou_loss``,
            ``giou_loss`` and ``diou_loss`` also take rotated boxes: ``"cxcywhr"``, ``"xywhr"`` (``(..., 5)``,
            angle in degrees as torchvision) and ``"xyxyxyxy"`` (``(..., 8)``), with the exact rotated geometry
            of :mod:`boxloss.rotated` (GIoU/DIoU: the enclosing rectangle aligned with the target)."""

LOSS_RETURNS_DOC = """
    Returns:
        Tensor: a scalar, or ``pred.shape[:-1]`` with ``reduction="none"``; float64 for float64 inputs and float32
        for every other dtype (float16 and bfloat16 are computed in float32; gradients reach the inputs in their
        own dtype).

    Raises:
        TypeError: ``pred``, ``target`` or ``weight`` not a tensor, or a non-real dtype.
        ValueError: a last dimension other than the format's (4; rotated: 5, or 8 for ``xyxyxyxy``), ``pred``
            and ``target`` of different shapes, an unknown
            ``reduction`` or ``fmt``, ``weight`` not broadcastable to ``pred.shape[:-1]``, ``avg_factor`` without
            ``reduction="mean"`` or negative, an ``eps`` that is not positive or is below the compute dtype's
            smallest normal number (refused rather than clamped: it would make 1/eps overflow).

    Edge cases: no NaN or Inf for finite inputs (inverted boxes count as empty, denominators are clamped at
    ``eps``); identical boxes of positive area cost 0; an empty input gives 0 with ``"mean"`` and ``"sum"``, an
    empty tensor with ``"none"``, and zero gradients of the right shape."""


def _fill_loss_doc(fn):
    fn.__doc__ = fn.__doc__.replace("{args}", LOSS_ARGS_DOC.strip()).replace("{returns}", LOSS_RETURNS_DOC.strip())
    return fn
