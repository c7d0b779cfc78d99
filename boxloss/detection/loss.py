"""The box-regression loss on decoded boxes, for torchvision's heads and for custom detectors."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterator, Sequence, Union

import torch
from torch import Tensor

from .. import losses as _losses
from .._utils import ROTATED_FORMATS
from ..modules import _BoxLoss
from .coder import DEFAULT_CLAMP, decode_boxes

__all__ = ["LOSS_NAMES", "resolve_box_loss", "decoded_box_loss", "box_math", "check_loss_weight"]

CLASSIC_LOSS_NAMES = ("iou", "log_iou", "giou", "diou", "ciou")
VARIANT_LOSS_NAMES = ("siou", "eiou", "focal_eiou", "wiou", "mpdiou", "shape_iou", "nwd", "alpha_iou", "inner_iou",
                      "focaler_iou")
# every name: the function ``<name>_loss`` of boxloss, with its default options ("mpdiou" gets the image size
# from the detector's heads, or ``image_size=`` of decoded_box_loss)
LOSS_FUNCTIONS = {name: getattr(_losses, f"{name}_loss") for name in CLASSIC_LOSS_NAMES + VARIANT_LOSS_NAMES}
LOSS_NAMES = tuple(LOSS_FUNCTIONS)

BoxLossSpec = Union[str, _BoxLoss, Callable[[Tensor, Tensor], Tensor]]


class _PerBoxLoss:
    """A boxloss loss with fixed options and ``reduction="none"``; a class, not a lambda, so models pickle."""

    def __init__(self, fn: Callable[..., Tensor], **options) -> None:
        self.fn = fn
        self.options = {**options, "reduction": "none"}
        # MPDIoU by name: the image size comes with each call (the heads know it per image)
        self.needs_image_size = fn is _losses.mpdiou_loss and options.get("image_size") is None
        if self.needs_image_size:
            self.options.pop("image_size", None)

    def __call__(self, pred: Tensor, target: Tensor, **per_call) -> Tensor:
        return self.fn(pred, target, **self.options, **per_call)

    def __repr__(self) -> str:
        return f"{self.fn.__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


class _StatefulPerBoxLoss:
    """A copy of a loss module with state (:class:`boxloss.WIoULoss`: its running mean), called with
    ``reduction="none"`` on xyxy boxes. Each head that gets one gets its own copy: the RPN's proposals and the RoI
    head's boxes have different IoU statistics, and one running mean shared by both would focus neither."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = copy.deepcopy(module)
        self.module.reduction = "none"
        self.module.fmt = "xyxy"

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.module(pred, target)

    def __repr__(self) -> str:
        return f"per-head copy of {self.module!r}"


def _check_axis_aligned(loss: torch.nn.Module, fn: Callable) -> None:
    """The detectors decode axis-aligned xyxy boxes: a loss that cannot take them is refused at the call."""
    empty = torch.zeros(0, 4)
    try:
        fn(empty, empty)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"loss {type(loss).__name__} cannot be a detector's box loss: the heads decode "
                         f"axis-aligned xyxy boxes, and it refuses them ({exc})") from None


def resolve_box_loss(loss: BoxLossSpec) -> Callable[[Tensor, Tensor], Tensor]:
    """A callable ``(pred_boxes, target_boxes) -> per-box loss`` from a name, a boxloss module or a callable.

    A boxloss module keeps its own options (``eps``, ``zero_overlap``) but is called with ``reduction="none"``
    (the detector applies its own normalisation) and ``fmt="xyxy"``: the decoded boxes are xyxy whatever format
    the module was made for, and reading them as another would silently give wrong values.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
        TypeError: anything that is neither a name, a boxloss module nor a callable.
    """
    if isinstance(loss, str):
        if loss not in LOSS_FUNCTIONS:
            raise ValueError(f"loss must be one of {', '.join(repr(n) for n in LOSS_NAMES)}, a boxloss loss module "
                             f"or a callable; got {loss!r}")
        return _PerBoxLoss(LOSS_FUNCTIONS[loss])
    if isinstance(loss, _BoxLoss):
        if loss._formats == ROTATED_FORMATS:  # ProbIoU, GWD, KLD, KFIoU
            raise ValueError(f"loss {type(loss).__name__} takes rotated boxes only; the detectors' heads decode "
                             f"axis-aligned xyxy boxes: choose one of {', '.join(repr(n) for n in LOSS_NAMES)} or "
                             f"its module")
        fn = _PerBoxLoss(type(loss)._fn, **{**loss._options(), "fmt": "xyxy"})
        _check_axis_aligned(loss, fn)
        return fn
    if isinstance(loss, _losses.WIoULoss):
        return _StatefulPerBoxLoss(loss)
    if callable(loss):
        return loss
    raise TypeError(f"loss must be one of {', '.join(repr(n) for n in LOSS_NAMES)}, a boxloss loss module or a "
                    f"callable (pred_boxes, target_boxes) -> per-box loss; got {type(loss).__name__}")


def check_loss_weight(value, head: str = "") -> float:
    """A box-term multiplier: a finite number ≥ 0 (``TypeError`` for a non-number, ``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"loss_weight must be a number, a dict of numbers per head or None; "
                        f"got {type(value).__name__}")
    if not 0 <= value < math.inf:
        raise ValueError(f"loss_weight must be a finite number >= 0; got {value!r}" + (f" for {head!r}" if head else ""))
    return float(value)


@contextlib.contextmanager
def box_math(like: Tensor) -> Iterator[torch.dtype]:
    """Decode boxes and compute their loss in float32 (float64 stays float64) with autocast off.

    Under ``torch.autocast`` the deltas, anchors and matched boxes reach the decoder in bfloat16/float16, whose
    8-bit mantissa puts a floor under the loss (a perfect prediction costs GIoU 0.06 at 300 px); the dtype to
    cast them to is yielded.
    """
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=like.device.type, enabled=False):
        yield dtype


def _per_box(loss_fn: Callable[[Tensor, Tensor], Tensor], pred: Tensor, target: Tensor, image_size=None) -> Tensor:
    if getattr(loss_fn, "needs_image_size", False):
        if image_size is None:
            raise ValueError("the 'mpdiou' loss needs the input image size: pass image_size=(width, height) (or a "
                             "per-box tensor) to decoded_box_loss, or use boxloss.MPDIoULoss(image_size=...)")
        out = loss_fn(pred, target, image_size=image_size)
    else:
        out = loss_fn(pred, target)
    if not isinstance(out, Tensor) or out.shape != pred.shape[:-1]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the box loss must return one loss per box, shape {tuple(pred.shape[:-1])}; got {shape} "
                         f"(a loss module or function with reduction='mean' returns one number: build it with "
                         f"reduction='none')")
    return out


def decoded_box_loss(deltas: Tensor, anchors: Tensor, target_boxes: Tensor, positive: Tensor, *,
                     loss: BoxLossSpec = "giou", weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                     clamp: float = DEFAULT_CLAMP, avg_factor: Union[None, float, Tensor] = None,
                     all_reduce: bool = False, loss_weight: float = 1.0, image_size=None) -> Tensor:
    r"""IoU-family box loss of a detector's predicted deltas, on decoded boxes, with the usual normaliser.

    .. math::
        \mathcal{L} = \lambda \frac{1}{Z} \sum_{i \,:\, \text{positive}_i}
            \ell\big(\mathrm{decode}(\delta_i, a_i), g_i\big)

    with :math:`Z` the number of positives (``avg_factor`` overrides it); with ``all_reduce=True`` under
    ``torch.distributed``, :math:`Z` is the mean number of positives over all processes (the FCOS /
    mmdetection convention), so that data-parallel training, which averages gradients over processes,
    gives the gradients of one process on the whole batch. :math:`Z` is clamped below at 1.

    Args:
        deltas (Tensor[..., 4]): predicted (dx, dy, dw, dh) for every anchor.
        anchors (Tensor[..., 4]): the anchors (or proposals) they refer to, xyxy.
        target_boxes (Tensor[..., 4]): the matched ground-truth box of every anchor, xyxy (any value where
            ``positive`` is False).
        positive (Tensor[...] of bool): which anchors are regressed.
        loss: ``"iou"``, ``"log_iou"``, ``"giou"`` (default), ``"diou"``, ``"ciou"``, or a variant (``"siou"``,
            ``"eiou"``, ``"focal_eiou"``, ``"wiou"``, ``"mpdiou"``, ``"shape_iou"``, ``"nwd"``, ``"alpha_iou"``,
            ``"inner_iou"``, ``"focaler_iou"``, with their default options), a boxloss loss module, or a callable
            ``(pred_boxes, target_boxes) -> per-box loss``.
        weights (4 floats): the box coder weights (see :func:`encode_boxes`).
        clamp (float): the dw/dh clamp of :func:`decode_boxes`.
        avg_factor (float or Tensor, optional): the normaliser, instead of the number of positives.
        all_reduce (bool): average the number of positives over the processes of the default group.
        loss_weight (float): :math:`\lambda`.
        image_size ((W, H) or Tensor[..., 2], optional): the input image size that ``loss="mpdiou"`` needs: one
            pair, or per anchor (shaped like ``deltas[..., :2]``).

    Returns:
        Tensor: a scalar in float32 (float64 for float64 deltas), computed in float32 even under
        ``torch.autocast``; 0, attached to the graph, without positives.

    Example:
        >>> import torch
        >>> from boxloss.detection import decoded_box_loss
        >>> anchors = torch.tensor([[0., 0., 4., 4.], [10., 10., 14., 14.]])
        >>> deltas = torch.zeros(2, 4, requires_grad=True)
        >>> targets = torch.tensor([[0., 0., 4., 4.], [0., 0., 0., 0.]])
        >>> decoded_box_loss(deltas, anchors, targets, torch.tensor([True, False]))  # one perfect positive
        tensor(0., grad_fn=<DivBackward0>)
    """
    if not isinstance(positive, Tensor) or positive.dtype != torch.bool:
        raise TypeError(f"positive must be a bool tensor; got {getattr(positive, 'dtype', type(positive).__name__)}")
    if deltas.shape[:-1] != positive.shape or anchors.shape != deltas.shape or target_boxes.shape != deltas.shape:
        raise ValueError(f"deltas, anchors and target_boxes must have one shape (..., 4) and positive its leading "
                         f"shape; got {tuple(deltas.shape)}, {tuple(anchors.shape)}, {tuple(target_boxes.shape)}, "
                         f"{tuple(positive.shape)}")
    check_loss_weight(loss_weight)
    loss_fn = resolve_box_loss(loss)
    with box_math(deltas) as dtype:
        pred = decode_boxes(deltas[positive].to(dtype), anchors[positive].to(dtype), weights, clamp)
        if isinstance(image_size, Tensor) and image_size.shape[:-1] == positive.shape:
            image_size = image_size[positive]
        per_box = _per_box(loss_fn, pred, target_boxes[positive].to(dtype), image_size)
        total = per_box.sum()
    if avg_factor is None:
        avg_factor = positive.sum().to(total.dtype)  # a tensor: no host sync
        if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            avg_factor = avg_factor.clone()
            torch.distributed.all_reduce(avg_factor)
            avg_factor = avg_factor / torch.distributed.get_world_size()
    if isinstance(avg_factor, Tensor):
        avg_factor = avg_factor.to(total.dtype).clamp_min(1)
    else:
        avg_factor = max(float(avg_factor), 1.0)
    return loss_weight * total / avg_factor
