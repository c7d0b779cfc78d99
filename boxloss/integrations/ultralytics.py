"""Ultralytics YOLO: one call puts a boxloss loss into YOLO's training (detect, segment, pose, OBB, and the
end-to-end YOLO26 heads, both branches).

``replace_box_loss(model, "siou")`` takes an ``ultralytics.YOLO`` object before ``.train()``. The trainer builds
its own model and criterion; the swap reaches them through a callback registered on the ``YOLO`` object
(``on_train_start``: after the trainer has built its model, its EMA and, when resuming, its criterion). The
callback gives the trainer's model and its EMA (which computes the validation losses) a criterion of
Ultralytics' own class whose box-loss module is replaced: its IoU term becomes the boxloss loss, with
Ultralytics' weighting (``target_scores`` summed per box) and normalisation (``/ target_scores_sum``) kept, and
its DFL (or YOLO26's L1) term is Ultralytics' own. Label assignment (``TaskAlignedAssigner``) is untouched.

What survives what Ultralytics does:

* **Checkpoints.** Ultralytics strips the criterion before it saves ``last.pt``/``best.pt``, and nothing of
  boxloss is stored on the model: checkpoints load and predict in plain Ultralytics, without boxloss.
* **Resume.** A resumed run is a new ``YOLO`` object: call ``replace_box_loss`` on it again before
  ``.train(resume=True)``; the callback then replaces the criterion that resuming rebuilds.
* **Multi-GPU.** Ultralytics' DDP launch pickles the trainer's callbacks (cloudpickle) into the state each new
  process rebuilds its trainer from, so the swap is re-established in every process.

OBB: the rotated losses take Ultralytics' ``xywhr`` boxes (angle in radians, the width along (cos a, sin a) in
the image) converted to boxloss' ``cxcywhr`` (degrees, the width along (cos θ, −sin θ): θ = −a).

Ultralytics is AGPL-3.0: it is imported only by this module, which uses its public classes and copies none of its
code. ``pip install "boxloss[ultralytics]"``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

try:
    import ultralytics
    from ultralytics.utils import loss as _ul_loss
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('boxloss.integrations.ultralytics needs ultralytics: pip install "boxloss[ultralytics]"') from exc

import boxloss

__all__ = ["replace_box_loss", "restore_box_loss", "AXIS_LOSS_NAMES", "ROTATED_LOSS_NAMES", "TESTED_VERSIONS"]

# the Ultralytics releases this integration is tested with (the criterion classes and attributes it uses):
# from the first to the last, the last one excluded
TESTED_VERSIONS = ((8, 4, 190), (8, 5, 0))
AXIS_LOSS_NAMES = ("iou", "log_iou", "giou", "diou", "ciou", "siou", "eiou", "focal_eiou", "wiou", "mpdiou",
                   "shape_iou", "nwd", "alpha_iou", "inner_iou", "focaler_iou")
ROTATED_LOSS_NAMES = ("iou", "log_iou", "giou", "diou", "probiou", "gwd", "kld", "kfiou")
TASKS = ("detect", "segment", "pose", "obb")
DEGREES_PER_RADIAN = 180.0 / math.pi


class _Spec(NamedTuple):
    loss: str
    params: tuple  # sorted (name, value) pairs: picklable, comparable
    rotated: bool

    def per_box(self, pred: Tensor, target: Tensor, imgsz: Tensor) -> Tensor:
        """The loss of each foreground pair: xyxy pixels, or Ultralytics' xywhr (radians) for OBB; float32."""
        fn = getattr(boxloss, f"{self.loss}_loss")
        params = dict(self.params)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            if self.rotated:
                pred, target = _to_cxcywhr(pred), _to_cxcywhr(target)
                return fn(pred, target, fmt="cxcywhr", reduction="none", **params)
            if self.loss == "mpdiou" and "image_size" not in params:
                params["image_size"] = (float(imgsz[1]), float(imgsz[0]))  # Ultralytics' imgsz is (h, w)
            return fn(pred, target, reduction="none", **params)


def _to_cxcywhr(xywhr: Tensor) -> Tensor:
    return torch.cat([xywhr[..., :4], -xywhr[..., 4:5] * DEGREES_PER_RADIAN], -1)


class _BoxLossTerm:
    """The IoU term of Ultralytics' box-loss modules computed by boxloss: ``Σ loss(pred, target) · w / Σ w_all``
    with ``w`` the summed target scores of each foreground anchor, as Ultralytics weights ``1 − CIoU``
    (``1 − ProbIoU`` for OBB); the DFL/L1 term is Ultralytics' own (its forward computes it). Mixed in before
    the Ultralytics class it replaces."""

    def __init__(self, reg_max: int, spec: _Spec) -> None:
        super().__init__(reg_max)
        self.spec = spec

    def forward(self, pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum,
                fg_mask, imgsz, stride):
        _, loss_dfl = super().forward(pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores,
                                      target_scores_sum, fg_mask, imgsz, stride)
        return _weighted_box_term(self.spec, pred_bboxes, target_bboxes, target_scores, target_scores_sum,
                                  fg_mask, imgsz), loss_dfl


class BoxLossBboxLoss(_BoxLossTerm, _ul_loss.BboxLoss):
    """Ultralytics' ``BboxLoss`` (detect, segment, pose) with its CIoU term computed by a boxloss loss."""


class BoxLossRotatedBboxLoss(_BoxLossTerm, _ul_loss.RotatedBboxLoss):
    """Ultralytics' ``RotatedBboxLoss`` (OBB) with its ProbIoU term computed by a boxloss rotated loss."""


def _weighted_box_term(spec, pred_bboxes, target_bboxes, target_scores, target_scores_sum, fg_mask, imgsz):
    weight = target_scores[fg_mask].sum(-1)
    per_box = spec.per_box(pred_bboxes[fg_mask], target_bboxes[fg_mask], imgsz)
    return (per_box * weight.float()).sum() / target_scores_sum


def _swap_bbox_losses(criterion, spec: _Spec):
    """Replace the box-loss module of ``criterion`` (both branches of an end-to-end criterion) in place."""
    parts = [criterion.one2many, criterion.one2one] if hasattr(criterion, "one2one") else [criterion]
    for part in parts:
        old = part.bbox_loss
        reg_max = old.dfl_loss.reg_max if old.dfl_loss is not None else 1
        cls = BoxLossRotatedBboxLoss if spec.rotated else BoxLossBboxLoss
        device = next((b.device for b in old.buffers()), getattr(part, "device", None))
        part.bbox_loss = cls(reg_max, spec).to(device) if device is not None else cls(reg_max, spec)
    return criterion


class _SwapAtTrainStart:
    """The ``on_train_start`` callback: a criterion with the boxloss term for the trainer's model and its EMA.
    A plain object: Ultralytics' DDP launch pickles the callbacks."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec

    def __call__(self, trainer) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        models = [unwrap_model(trainer.model)]
        if getattr(trainer, "ema", None) is not None:
            models.append(trainer.ema.ema)
        for model in models:
            previous = getattr(model, "criterion", None)
            criterion = model.init_criterion()
            if previous is not None and hasattr(previous, "updates") and hasattr(criterion, "updates"):
                criterion.updates = previous.updates  # an end-to-end criterion's schedule, as resuming sets it
            model.criterion = _swap_bbox_losses(criterion, self.spec)

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.spec.params)
        return f"boxloss box loss: {self.spec.loss}{params}"


def _check_version() -> None:
    version = tuple(int(x) for x in ultralytics.__version__.split(".")[:3] if x.isdigit())
    low, high = TESTED_VERSIONS
    if not low <= version < high:
        raise ValueError(f"ultralytics {ultralytics.__version__} is outside the versions this integration is "
                         f"tested with (>= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))}): install a "
                         f"tested one, e.g. pip install \"ultralytics==8.4.190\"")


def replace_box_loss(model, loss: str = "siou", **params):
    """Make an Ultralytics YOLO model train its boxes with a boxloss loss in place of CIoU (ProbIoU for OBB).

    Args:
        model: an ``ultralytics.YOLO`` object whose task is ``detect``, ``segment``, ``pose`` or ``obb``
            (YOLOv8/11/26 heads, end-to-end ones included), before ``.train()``.
        loss: for axis-aligned tasks one of :data:`AXIS_LOSS_NAMES` (``"siou"`` by default, ``"ciou"`` equals
            Ultralytics' own term; ``"mpdiou"`` takes the training image size); for ``obb`` one of
            :data:`ROTATED_LOSS_NAMES` (the rotated IoU family and the Gaussian losses).
        **params: the loss' own options (``theta=``, ``ratio=``, ``tau=``, …).

    Returns:
        The same ``model`` (calls chain: ``replace_box_loss(YOLO("yolo11n.yaml"), "diou").train(...)``).

    Raises:
        TypeError: ``model`` is not an Ultralytics ``YOLO`` object, or an option the loss does not take.
        ValueError: a task without a box loss of this kind (classification, RT-DETR, semantic segmentation), an
            unknown name, an axis-aligned-only loss on OBB or a rotated-only one elsewhere (the message lists
            what the task takes), a bad option value, or an Ultralytics version outside :data:`TESTED_VERSIONS`.
            Nothing is changed when it raises.
    """
    from ultralytics.engine.model import Model

    _check_version()
    if not isinstance(model, Model):
        raise TypeError(f"model must be an ultralytics YOLO object (e.g. YOLO('yolo11n.yaml')); got "
                        f"{type(model).__name__}")
    task = getattr(model, "task", None)
    if task not in TASKS or type(model).__name__ not in ("YOLO", "YOLOWorld", "YOLOE"):
        raise ValueError(f"model's task must be one of {', '.join(TASKS)} (a YOLO detection-family model); got "
                         f"{type(model).__name__} with task {task!r}")
    names = ROTATED_LOSS_NAMES if task == "obb" else AXIS_LOSS_NAMES
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a loss name; got {type(loss).__name__}")
    if loss not in names:
        raise ValueError(f"loss for the {task!r} task must be one of {', '.join(names)}; got {loss!r}")
    if "fmt" in params or "reduction" in params:
        raise ValueError("fmt and reduction are set by the integration; got "
                         f"{sorted(set(params) & {'fmt', 'reduction'})}")
    spec = _Spec(loss, tuple(sorted(params.items())), task == "obb")
    empty = torch.zeros(0, 5 if spec.rotated else 4)
    try:  # the loss' own checks of its options, before anything changes
        spec.per_box(empty, empty, torch.tensor([640.0, 640.0]))
    except TypeError as exc:
        raise TypeError(f"{loss}_loss does not take these options: {exc}") from None
    restore_box_loss(model)
    model.add_callback("on_train_start", _SwapAtTrainStart(spec))
    return model


def restore_box_loss(model):
    """Undo :func:`replace_box_loss`: later ``.train()`` calls use Ultralytics' own box loss. Returns ``model``."""
    callbacks = getattr(model, "callbacks", None)
    if isinstance(callbacks, dict):
        callbacks["on_train_start"] = [c for c in callbacks.get("on_train_start", [])
                                       if not isinstance(c, _SwapAtTrainStart)]
    return model
