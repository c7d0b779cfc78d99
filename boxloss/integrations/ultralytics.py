"""Ultralytics: one call puts a boxloss loss into the training of YOLO (detect, segment, pose, OBB, and the
end-to-end YOLO26 heads, both branches) and RT-DETR.

``replace_box_loss(model, "siou")`` takes an ``ultralytics.YOLO`` (or ``RTDETR``) object before ``.train()``.
The trainer builds its own model and criterion; the swap reaches them through a callback registered on the model
object (``on_train_start``: after the trainer has built its model, its EMA and, when resuming, its criterion).
The callback gives the trainer's model and its EMA (which computes the validation losses) a criterion of
Ultralytics' own class whose IoU term is the boxloss loss: for YOLO heads the box-loss module is replaced, with
Ultralytics' weighting (``target_scores`` summed per box) and normalisation (``/ target_scores_sum``) kept and
its DFL (or YOLO26's L1) term its own; for RT-DETR the GIoU term of every decoder layer and of the denoising
queries, with its gain and ``/ n_gt``. Label assignment (``TaskAlignedAssigner``, the Hungarian matcher) is
untouched.

What survives what Ultralytics does:

* **Checkpoints.** Ultralytics strips the criterion before it saves ``last.pt``/``best.pt``; what boxloss adds
  to the saved model is a plain dict (Wise-IoU v2/v3's running means): checkpoints load and predict in plain
  Ultralytics, without boxloss.
* **Resume.** A resumed run is a new model object: call ``replace_box_loss`` on it again before
  ``.train(resume=True)``; the callback then replaces the criterion that resuming rebuilds and restores the
  running means from the checkpoint.
* **Multi-GPU.** Ultralytics' DDP launch pickles the trainer's callbacks (cloudpickle) into the state each new
  process rebuilds its trainer from, so the swap is re-established in every process.
* **AMP.** The boxes are cast to float32 and the loss computed with autocast off.

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
    from ultralytics.models.utils.loss import RTDETRDetectionLoss as _RTDETRDetectionLoss
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


WIOU_STATE_PARAMS = ("version", "momentum", "steps_to_plateau", "gamma", "alpha", "delta", "sync")
STATE_ATTRIBUTE = "boxloss_state"  # a plain dict on the saved EMA model: loads without boxloss


class _Spec(NamedTuple):
    """What replaces one branch's IoU term: a loss name, its options, the box kind and a multiplier. Plain data:
    Ultralytics' DDP launch pickles the callbacks that hold it."""

    loss: str
    params: tuple  # sorted (name, value) pairs: picklable, comparable
    rotated: bool
    weight: float = 1.0

    @property
    def stateful(self) -> bool:
        """Wise-IoU with any of :class:`boxloss.WIoULoss`' options (``version=3``, …): computed by that module,
        whose running mean of 1 − IoU (v2, v3) is state."""
        return self.loss == "wiou" and any(k in WIOU_STATE_PARAMS for k, _ in self.params)

    def build(self) -> "BoxTerm":
        return BoxTerm(self)


def _to_cxcywhr(xywhr: Tensor) -> Tensor:
    return torch.cat([xywhr[..., :4], -xywhr[..., 4:5] * DEGREES_PER_RADIAN], -1)


class BoxTerm(torch.nn.Module):
    """The per-box boxloss loss of one criterion branch, in float32 with autocast off.

    Boxes reach it as xyxy pixels (detect, segment, pose), Ultralytics' xywhr with the angle in radians (OBB), or
    RT-DETR's cxcywh normalised to the image. Wise-IoU v2/v3 keep their running mean of 1 − IoU here (the
    ``wiou`` submodule's ``iou_mean`` buffer), updated only by calls that track gradients (training, not
    validation)."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.spec = spec
        if spec.stateful:
            self.wiou = boxloss.WIoULoss(reduction="none", **dict(spec.params))

    def forward(self, pred: Tensor, target: Tensor, *, weight: Tensor | None = None, fmt: str = "xyxy",
                image_size: tuple | None = None) -> Tensor:
        params = dict(self.spec.params)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            if self.spec.rotated:
                pred, target, fmt = _to_cxcywhr(pred), _to_cxcywhr(target), "cxcywhr"
            if self.spec.stateful:
                self.wiou.fmt = fmt
                self.wiou.train(torch.is_grad_enabled())  # validation losses leave the running mean alone
                loss = self.wiou(pred, target, weight=None if weight is None else weight.float())
            else:
                if self.spec.loss == "mpdiou" and "image_size" not in params and image_size is not None:
                    params["image_size"] = image_size
                loss = getattr(boxloss, f"{self.spec.loss}_loss")(pred, target, fmt=fmt, reduction="none", **params)
        return loss * self.spec.weight if self.spec.weight != 1.0 else loss

    def extra_repr(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.spec.params)
        return f"{self.spec.loss}{params}" + (f", weight={self.spec.weight}" if self.spec.weight != 1.0 else "")


class _BoxLossTerm:
    """The IoU term of Ultralytics' box-loss modules computed by boxloss: ``Σ loss(pred, target) · w / Σ w_all``
    with ``w`` the summed target scores of each foreground anchor, as Ultralytics weights ``1 − CIoU``
    (``1 − ProbIoU`` for OBB); the DFL/L1 term is Ultralytics' own (its forward computes it). Mixed in before
    the Ultralytics class it replaces."""

    def __init__(self, reg_max: int, term: BoxTerm) -> None:
        super().__init__(reg_max)
        self.term = term

    def forward(self, pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum,
                fg_mask, imgsz, stride):
        _, loss_dfl = super().forward(pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores,
                                      target_scores_sum, fg_mask, imgsz, stride)
        weight = target_scores[fg_mask].sum(-1).float()
        per_box = self.term(pred_bboxes[fg_mask], target_bboxes[fg_mask], weight=weight,
                            image_size=(float(imgsz[1]), float(imgsz[0])))  # Ultralytics' imgsz is (h, w)
        return (per_box * weight).sum() / target_scores_sum, loss_dfl


class BoxLossBboxLoss(_BoxLossTerm, _ul_loss.BboxLoss):
    """Ultralytics' ``BboxLoss`` (detect, segment, pose) with its CIoU term computed by a boxloss loss."""


class BoxLossRotatedBboxLoss(_BoxLossTerm, _ul_loss.RotatedBboxLoss):
    """Ultralytics' ``RotatedBboxLoss`` (OBB) with its ProbIoU term computed by a boxloss rotated loss."""


class BoxLossRTDETRDetectionLoss(_RTDETRDetectionLoss):
    """Ultralytics' RT-DETR criterion with its GIoU term computed by a boxloss loss: ``gain · Σ loss / n_gt`` over
    the matched pairs, on its normalised cxcywh boxes, for the last decoder layer, the auxiliary layers and the
    denoising queries alike; the L1 and classification terms and the Hungarian matching are Ultralytics' own."""

    term: BoxTerm

    def _get_loss_bbox(self, pred_bboxes, gt_bboxes, postfix=""):
        loss = super()._get_loss_bbox(pred_bboxes, gt_bboxes, postfix)
        if len(gt_bboxes):
            per_box = self.term(pred_bboxes, gt_bboxes, fmt="cxcywh", image_size=(1.0, 1.0))
            loss[f"loss_giou{postfix}"] = self.loss_gain["giou"] * per_box.sum() / len(gt_bboxes)
        return loss


def _branches(criterion) -> dict:
    """The criterion's branches by name: ``one2many``/``one2one`` of an end-to-end criterion, else ``main``."""
    if hasattr(criterion, "one2one"):
        return {"one2many": criterion.one2many, "one2one": criterion.one2one}
    return {"main": criterion}


def _swap_criterion(criterion, terms: dict):
    """The criterion with each branch's IoU term replaced by ``terms[branch]`` (in place where Ultralytics' class
    holds a box-loss module; RT-DETR's criterion becomes its boxloss subclass)."""
    if isinstance(criterion, _ul_loss.v8DetectionLoss) or hasattr(criterion, "one2one"):
        for name, part in _branches(criterion).items():
            old = part.bbox_loss
            reg_max = old.dfl_loss.reg_max if old.dfl_loss is not None else 1
            term = terms[name] if name in terms else next(iter(terms.values()))
            cls = BoxLossRotatedBboxLoss if term.spec.rotated else BoxLossBboxLoss
            device = next((b.device for b in old.buffers()), getattr(part, "device", None))
            new = cls(reg_max, term)
            part.bbox_loss = new.to(device) if device is not None else new
        return criterion
    # RT-DETR: Ultralytics' own configuration (gains, focal/varifocal, matcher), as init_criterion built it
    criterion.__class__ = BoxLossRTDETRDetectionLoss
    criterion.term = terms["main"]
    return criterion


class _SwapAtTrainStart:
    """The ``on_train_start`` callback: a criterion with the boxloss term for the trainer's model and its EMA,
    sharing one :class:`BoxTerm` per branch (one running mean for Wise-IoU v2/v3, restored from the checkpoint
    when the run resumes). A plain object: Ultralytics' DDP launch pickles the callbacks."""

    def __init__(self, specs: dict) -> None:
        self.specs = specs  # branch name -> _Spec

    def __call__(self, trainer) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        model = unwrap_model(trainer.model)
        device = next(model.parameters()).device
        terms = {name: spec.build().to(device) for name, spec in self.specs.items()}
        if getattr(trainer.args, "resume", False):
            _load_state(terms, getattr(trainer.args, "model", None))
        models = [model]
        if getattr(trainer, "ema", None) is not None:
            models.append(trainer.ema.ema)
        for m in models:
            previous = getattr(m, "criterion", None)
            criterion = m.init_criterion()
            if previous is not None and hasattr(previous, "updates") and hasattr(criterion, "updates"):
                criterion.updates = previous.updates  # an end-to-end criterion's schedule, as resuming sets it
            m.criterion = _swap_criterion(criterion, terms)

    def __repr__(self) -> str:
        return "boxloss box loss: " + ", ".join(f"{n}: {BoxTerm(s).extra_repr()}" for n, s in self.specs.items())


class _KeepState:
    """The ``on_train_epoch_end`` callback (before Ultralytics saves ``last.pt``): the running means of Wise-IoU
    v2/v3 as plain floats in the ``boxloss_state`` dict of the EMA model that the checkpoint stores, so that
    ``resume=True`` continues them and the checkpoint still loads without boxloss."""

    def __call__(self, trainer) -> None:
        from ultralytics.utils.torch_utils import unwrap_model

        criterion = getattr(unwrap_model(trainer.model), "criterion", None)
        if criterion is None or getattr(trainer, "ema", None) is None:
            return
        state = {}
        for name, part in _branches(criterion).items():
            term = getattr(getattr(part, "bbox_loss", None), "term", None) or getattr(part, "term", None)
            if isinstance(term, BoxTerm) and term.spec.stateful:
                state[name] = {"loss": term.spec.loss, "iou_mean": float(term.wiou.iou_mean)}  # once per epoch
        if state:
            setattr(trainer.ema.ema, STATE_ATTRIBUTE, state)


def _load_state(terms: dict, checkpoint) -> None:
    """Restore the running means saved by :class:`_KeepState` in the checkpoint a run resumes from."""
    if not checkpoint or not str(checkpoint).endswith(".pt"):
        return
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)  # Ultralytics' own file, as it loads it
    saved = getattr(ckpt.get("ema") or ckpt.get("model"), STATE_ATTRIBUTE, None) or {}
    for name, term in terms.items():
        entry = saved.get(name)
        if term.spec.stateful and entry and entry.get("loss") == term.spec.loss:
            term.wiou.iou_mean.fill_(float(entry["iou_mean"]))


def _check_version() -> None:
    version = tuple(int(x) for x in ultralytics.__version__.split(".")[:3] if x.isdigit())
    low, high = TESTED_VERSIONS
    if not low <= version < high:
        raise ValueError(f"ultralytics {ultralytics.__version__} is outside the versions this integration is "
                         f"tested with (>= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))}): install a "
                         f"tested one, e.g. pip install \"ultralytics==8.4.190\"")


def _spec_from(loss, params: dict, task: str, names: tuple, weight: float, what: str) -> _Spec:
    """A checked :class:`_Spec` from a loss name and options, or from a boxloss loss module (its own options)."""
    if isinstance(loss, torch.nn.Module):
        if params:
            raise TypeError(f"{what}: options go into the loss module, not beside it; got {sorted(params)}")
        loss, params = _module_spec(loss, what)
    if not isinstance(loss, str):
        raise TypeError(f"{what} must be a loss name or a boxloss loss module; got {type(loss).__name__}")
    if loss not in names:
        raise ValueError(f"{what} for the {task!r} task must be one of {', '.join(names)}; got {loss!r}")
    if "fmt" in params or "reduction" in params:
        raise ValueError(f"{what}: fmt and reduction are set by the integration; got "
                         f"{sorted(set(params) & {'fmt', 'reduction'})}")
    extra = sorted(set(params) & set(WIOU_STATE_PARAMS))
    if extra and loss != "wiou":
        raise TypeError(f"{loss}_loss does not take these options: {extra}")
    spec = _Spec(loss, tuple(sorted(params.items())), task == "obb", weight)
    empty = torch.zeros(0, 5 if spec.rotated else 4)
    try:  # the loss' own checks of its options, before anything changes
        term = spec.build()
        term(empty, empty, fmt="xyxy" if not spec.rotated else "cxcywhr", image_size=(640.0, 640.0))
    except TypeError as exc:
        raise TypeError(f"{loss}_loss does not take these options: {exc}") from None
    return spec


def _module_spec(module: torch.nn.Module, what: str) -> tuple:
    """(name, options) of a boxloss loss module; its reduction and format are the integration's to set."""
    if isinstance(module, boxloss.WIoULoss):
        if module.version == 1:  # the function: no running mean
            return "wiou", {"eps": module.eps}
        # its momentum already holds what steps_to_plateau set
        return "wiou", {**{k: getattr(module, k) for k in WIOU_STATE_PARAMS if k != "steps_to_plateau"},
                        "eps": module.eps}
    fn = getattr(type(module), "_fn", None)
    name = getattr(fn, "__name__", "")
    if not name.endswith("_loss") or not hasattr(module, "_options"):
        raise TypeError(f"{what} must be a loss name or a boxloss loss module (e.g. boxloss.SIoULoss()); got "
                        f"{type(module).__name__}")
    options = {k: v for k, v in module._options().items() if k not in ("reduction", "fmt")}
    return name[: -len("_loss")], options


def _is_end_to_end(model) -> bool:
    inner = getattr(model, "model", None)
    head = getattr(getattr(inner, "model", None), "__getitem__", None)
    return head is not None and getattr(inner.model[-1], "one2one_cv2", None) is not None


def replace_box_loss(model, loss="siou", *, weight=None, **params):
    """Make an Ultralytics model train its boxes with a boxloss loss in place of CIoU (ProbIoU for OBB, GIoU for
    RT-DETR).

    Each foreground box's ``1 − IoU`` becomes ``weight · loss(pred, target)``; Ultralytics' weighting (the summed
    target scores of each anchor) and normalisation (``/ target_scores_sum``; RT-DETR: ``/ n_gt`` and its
    ``giou`` gain) are kept, and its DFL, L1 and classification terms and its label assignment are untouched.

    Args:
        model: an ``ultralytics.YOLO`` object whose task is ``detect``, ``segment``, ``pose`` or ``obb`` (YOLOv8,
            11 and 26 heads; the end-to-end ones get the loss in both branches), or an ``ultralytics.RTDETR``
            object, before ``.train()``.
        loss: a loss name — for axis-aligned tasks and RT-DETR one of :data:`AXIS_LOSS_NAMES` (``"siou"`` by
            default, ``"ciou"`` equals Ultralytics' own term), for ``obb`` one of :data:`ROTATED_LOSS_NAMES` —
            or a boxloss loss module (``boxloss.SIoULoss(theta=3.0)``, ``boxloss.WIoULoss(version=3)``), or, for
            an end-to-end head, a dict ``{"one2many": ..., "one2one": ...}`` of either.
        weight: a multiplier of the boxloss term (default 1: Ultralytics' ``box`` gain applies as it is), e.g. to
            bring a loss whose values run higher than ``1 − CIoU`` to its scale.
        **params: the loss' own options (``theta=``, ``ratio=``, ``tau=``; ``version=3`` makes ``"wiou"``
            Wise-IoU v3, whose running mean lives in the criterion and is saved with the checkpoint, so that
            ``resume=True`` continues it). ``"mpdiou"`` takes the training image size unless ``image_size`` is
            given; on RT-DETR, whose boxes are normalised to the image, ``"nwd"`` needs its ``constant`` in those
            units.

    Returns:
        The same ``model`` (calls chain: ``replace_box_loss(YOLO("yolo11n.yaml"), "diou").train(...)``).

    Raises:
        TypeError: ``model`` is not an Ultralytics model object, ``loss`` is neither a name nor a boxloss loss
            module, ``weight`` is not a number, or an option the loss does not take.
        ValueError: a task without a box loss of this kind (classification, semantic segmentation), an unknown
            name, an axis-aligned-only loss on OBB or a rotated-only one elsewhere (the message lists what the
            task takes), a per-branch dict for a model without an end-to-end head, a bad option value, or an
            Ultralytics version outside :data:`TESTED_VERSIONS`. Nothing is changed when it raises.
    """
    from ultralytics.engine.model import Model

    _check_version()
    if not isinstance(model, Model):
        raise TypeError(f"model must be an ultralytics YOLO or RTDETR object (e.g. YOLO('yolo11n.yaml')); got "
                        f"{type(model).__name__}")
    task = getattr(model, "task", None)
    kind = type(model).__name__
    if not ((task in TASKS and kind in ("YOLO", "YOLOWorld", "YOLOE")) or (kind == "RTDETR" and task == "detect")):
        raise ValueError(f"model's task must be one of {', '.join(TASKS)} (a YOLO detection-family model) or an "
                         f"RTDETR detector; got {kind} with task {task!r}")
    if weight is None:
        weight = 1.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be a number or None; got {type(weight).__name__}")
    if not 0 <= weight < math.inf:
        raise ValueError(f"weight must be a finite number >= 0; got {weight!r}")
    names = ROTATED_LOSS_NAMES if task == "obb" else AXIS_LOSS_NAMES
    if kind == "RTDETR" and (loss == "nwd" or isinstance(loss, boxloss.NWDLoss)) and "constant" not in params:
        raise ValueError("loss 'nwd' on RT-DETR needs constant= in units of the image size (its boxes are "
                         "normalised to 0..1; the default 12.8 is in pixels)")
    if isinstance(loss, dict):
        branches = ("one2many", "one2one")
        if not _is_end_to_end(model):
            raise ValueError(f"loss as a dict per branch ({', '.join(branches)}) is for end-to-end heads "
                             f"(YOLO26, YOLOv10); this {kind} has one branch: pass one loss")
        if set(loss) != set(branches):
            raise ValueError(f"loss as a dict must have exactly the keys {', '.join(branches)}; got {sorted(loss)}")
        specs = {b: _spec_from(loss[b], dict(params), task, names, float(weight), f"loss[{b!r}]") for b in branches}
    else:
        spec = _spec_from(loss, dict(params), task, names, float(weight), "loss")
        specs = {"one2many": spec, "one2one": spec} if _is_end_to_end(model) else {"main": spec}
    restore_box_loss(model)
    model.add_callback("on_train_start", _SwapAtTrainStart(specs))
    model.add_callback("on_train_epoch_end", _KeepState())
    return model


def restore_box_loss(model):
    """Undo :func:`replace_box_loss`: later ``.train()`` calls use Ultralytics' own box loss. Returns ``model``."""
    callbacks = getattr(model, "callbacks", None)
    if isinstance(callbacks, dict):
        for event, cls in (("on_train_start", _SwapAtTrainStart), ("on_train_epoch_end", _KeepState)):
            callbacks[event] = [c for c in callbacks.get(event, []) if not isinstance(c, cls)]
    return model
