"""Swap the box-regression loss of torchvision detectors for an IoU-family loss on decoded boxes.

How each head is hooked (per model instance; no torchvision function is patched, other models are untouched):
the head's class is swapped for a subclass that adds a mixin below, and the options live on the instance.

* RPN (``RegionProposalNetwork``): ``assign_targets_to_anchors`` is extended to keep the anchors and matched
  boxes of the step; ``compute_loss`` is re-implemented: same sampler, same objectness loss, and the box loss on
  ``decode_boxes(deltas, anchors)`` of the sampled positives, divided by the number of sampled anchors as
  torchvision does. Matching: ``box_similarity`` (an instance attribute in torchvision) becomes boxloss' IoU.
* RoI heads (``RoIHeads``, also in Mask and Keypoint R-CNN): ``select_training_samples`` is extended to keep the
  sampled proposals and their matched boxes, a forward hook on ``box_predictor`` (registered for the training
  call only) keeps the predicted deltas, and ``forward`` replaces ``loss_box_reg`` by the loss on the decoded
  boxes of the positives for their ground-truth class, divided by the number of sampled proposals, as
  torchvision's ``fastrcnn_loss`` does. Matching: ``assign_targets_to_proposals`` re-implemented on boxloss' IoU.
* RetinaNet: ``RetinaNetRegressionHead.compute_loss`` re-implemented (per image, divided by its number of
  foreground anchors, averaged over images, as torchvision); matching: ``RetinaNet.compute_loss`` on boxloss'
  IoU.
* FCOS: ``FCOSHead.compute_loss`` keeps torchvision's classification and centerness terms and replaces
  ``bbox_regression`` by the loss on the boxes that the head's own ``BoxLinearCoder`` decodes, divided by the
  number of foreground points. FCOS matches by centre sampling, not IoU, so ``matching`` changes nothing there.

The swapped classes (``BoxLossRegionProposalNetwork``, ``BoxLossRoIHeads``, ``BoxLossRetinaNet``,
``BoxLossRetinaNetRegressionHead``, ``BoxLossFCOSHead``) exist at import time, and a swapped module pickles as
"torchvision class + boxloss mixin", so a saved model loads in any process that imports ``boxloss.detection``
(subclasses of those heads included). Boxes are decoded and the loss computed in float32 (float64 stays
float64) whatever the autocast state. :func:`restore_box_loss` undoes everything.
"""

from __future__ import annotations

from typing import Dict, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..boxes import box_iou
from .coder import decode_boxes
from .loss import BoxLossSpec, _per_box, box_math, check_loss_weight, resolve_box_loss

__all__ = ["replace_box_loss", "restore_box_loss", "DEFAULT_LOSS_WEIGHTS"]

# Multipliers of the box term, chosen so that at the start of training (random init) the IoU-family box term
# is about as large as torchvision's smooth-L1/L1 term on encoded deltas; measured by
# benchmarks/loss_weight_calibration.py and recorded in benchmarks/RESULTS.md. The RoI head's deltas are
# scaled by the coder weights (10, 10, 5, 5), so its smooth-L1 term is several times larger than an IoU loss:
# the GIoU and DIoU papers used 10–12 there.
DEFAULT_LOSS_WEIGHTS = {"rpn": 1.5, "roi_heads": 10.0, "retinanet": 1.5, "fcos": 1.0}


def _pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return box_iou(boxes1, boxes2)


_TRANSIENT = ("_boxloss_step", "_boxloss_sizes")  # per-step state: not shown, not pickled


def _image_index(counts, device) -> Tensor:
    """The image each of the concatenated per-image rows belongs to."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device),
                                   torch.as_tensor(counts, device=device))


class _RecordImageSizes:
    """The anchor generator, called through this: it records the batch's image sizes on the head first (how
    RetinaNet and FCOS heads learn the sizes the ``"mpdiou"`` loss needs)."""

    def __init__(self, generator: nn.Module, head: nn.Module) -> None:
        self.generator, self.head = generator, head

    def __call__(self, images, features):
        object.__setattr__(self.head, "_boxloss_sizes", images.image_sizes)
        return self.generator(images, features)


class _BoxLossMixin:
    """What every swapped head shares: its repr names the loss, and it pickles as (torchvision class, mixin)."""

    def _boxloss_per_box(self, pred: Tensor, target: Tensor, image_index) -> Tensor:
        """The per-box loss; ``image_index`` (a tensor, or a callable making it) says which image each box is
        from, for the losses that need the image size (``"mpdiou"``)."""
        fn = self._boxloss_fn
        size = None
        if getattr(fn, "needs_image_size", False):
            sizes = self.__dict__.get("_boxloss_sizes")
            if sizes is None:
                raise RuntimeError("boxloss: the image sizes of this batch were not recorded (call the whole "
                                   "detector, not the head alone, with the 'mpdiou' loss)")
            wh = torch.tensor([[float(w), float(h)] for h, w in sizes], dtype=pred.dtype, device=pred.device)
            index = image_index() if callable(image_index) else image_index
            size = wh[index]
        return _per_box(fn, pred, target, size)

    def extra_repr(self) -> str:
        options = [f"{key[len('_boxloss_'):]}={value!r}" for key, value in vars(self).items()
                   if key.startswith("_boxloss_") and key not in _TRANSIENT]
        mine = f"boxloss: {', '.join(options)}" if options else "boxloss"
        theirs = super().extra_repr()
        return f"{mine}, {theirs}" if theirs else mine

    def __reduce_ex__(self, protocol):
        state = {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}
        return _rebuild_swapped, (type(self).__bases__[0].__name__, type(self).__bases__[1]), state


class _RPNMixin(_BoxLossMixin):
    def forward(self, images, features, targets=None):
        object.__setattr__(self, "_boxloss_sizes", images.image_sizes)
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        self._boxloss_step = (anchors, matched_gt_boxes)
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        anchors, matched_gt_boxes = self._boxloss_step
        self._boxloss_step = None
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        labels = torch.cat(labels, dim=0)
        with box_math(pred_bbox_deltas) as dtype:
            pred = decode_boxes(pred_bbox_deltas[sampled_pos].to(dtype),
                                torch.cat(anchors, dim=0)[sampled_pos].to(dtype), self.box_coder.weights,
                                self.box_coder.bbox_xform_clip)
            target = torch.cat(matched_gt_boxes, dim=0)[sampled_pos].to(dtype)
            image_index = lambda: _image_index([len(a) for a in anchors], pred.device)[sampled_pos]  # noqa: E731
            box_loss = (self._boxloss_weight * self._boxloss_per_box(pred, target, image_index).sum()
                        / max(sampled.numel(), 1))
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


class _RoIHeadsMixin(_BoxLossMixin):
    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        if not self._boxloss_matching:
            return super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        matched_idxs, labels = [], []
        for proposals_in_image, gt_boxes_in_image, gt_labels_in_image in zip(proposals, gt_boxes, gt_labels):
            if gt_boxes_in_image.numel() == 0:  # background image
                device = proposals_in_image.device
                clamped = torch.zeros((proposals_in_image.shape[0],), dtype=torch.int64, device=device)
                labels_in_image = torch.zeros((proposals_in_image.shape[0],), dtype=torch.int64, device=device)
            else:
                matched = self.proposal_matcher(box_iou(gt_boxes_in_image, proposals_in_image))
                clamped = matched.clamp(min=0)
                labels_in_image = gt_labels_in_image[clamped].to(dtype=torch.int64)
                labels_in_image[matched == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
                labels_in_image[matched == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(clamped)
            labels.append(labels_in_image)
        return matched_idxs, labels

    def select_training_samples(self, proposals, targets):
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        matched_gt_boxes = []
        for props, idxs, t in zip(proposals, matched_idxs, targets):
            gt = t["boxes"].to(props.dtype)
            matched_gt_boxes.append(gt[idxs] if gt.numel() else torch.zeros_like(props))
        self._boxloss_step = (proposals, matched_gt_boxes, labels)
        return proposals, matched_idxs, labels, regression_targets

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        object.__setattr__(self, "_boxloss_sizes", image_shapes)
        captured = {}

        def keep_deltas(module, inputs, outputs):
            captured.setdefault("box_regression", outputs[1])

        handle = self.box_predictor.register_forward_hook(keep_deltas)
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            handle.remove()
        proposals, matched_gt_boxes, labels = self._boxloss_step
        self._boxloss_step = None
        labels = torch.cat(labels, dim=0)
        n = labels.numel()
        box_regression = captured["box_regression"].reshape(n, -1, 4)
        pos = torch.where(labels > 0)[0]
        with box_math(box_regression) as dtype:
            pred = decode_boxes(box_regression[pos, labels[pos]].to(dtype), torch.cat(proposals, dim=0)[pos].to(dtype),
                                self.box_coder.weights, self.box_coder.bbox_xform_clip)
            target = torch.cat(matched_gt_boxes, dim=0)[pos].to(dtype)
            image_index = lambda: _image_index([len(p) for p in proposals], pred.device)[pos]  # noqa: E731
            losses["loss_box_reg"] = (self._boxloss_weight * self._boxloss_per_box(pred, target, image_index).sum()
                                      / max(n, 1))
        return result, losses


class _RetinaNetMixin(_BoxLossMixin):
    @property
    def anchor_generator(self):
        return _RecordImageSizes(self._modules["anchor_generator"], self.head.regression_head)

    def compute_loss(self, targets, head_outputs, anchors):
        if not self._boxloss_matching:
            return super().compute_loss(targets, head_outputs, anchors)
        matched_idxs = []
        for anchors_per_image, targets_per_image in zip(anchors, targets):
            if targets_per_image["boxes"].numel() == 0:
                matched_idxs.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                               device=anchors_per_image.device))
                continue
            matched_idxs.append(self.proposal_matcher(box_iou(targets_per_image["boxes"], anchors_per_image)))
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


class _RetinaNetRegressionHeadMixin(_BoxLossMixin):
    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = []
        with box_math(head_outputs["bbox_regression"]) as dtype:
            for i, (targets_per_image, deltas, anchors_per_image, matched) in enumerate(zip(
                    targets, head_outputs["bbox_regression"], anchors, matched_idxs)):
                fg = torch.where(matched >= 0)[0]
                pred = decode_boxes(deltas[fg].to(dtype), anchors_per_image[fg].to(dtype), self.box_coder.weights,
                                    self.box_coder.bbox_xform_clip)
                target = targets_per_image["boxes"][matched[fg]].to(dtype)
                image_index = lambda i=i, fg=fg: torch.full_like(fg, i)  # noqa: E731
                losses.append(self._boxloss_per_box(pred, target, image_index).sum() / max(1, fg.numel()))
            return self._boxloss_weight * sum(losses) / max(1, len(targets))


class _FCOSHeadMixin(_BoxLossMixin):
    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        gt_boxes = []
        for targets_per_image, matched in zip(targets, matched_idxs):
            boxes = targets_per_image["boxes"]
            gt_boxes.append(boxes[matched.clip(min=0)] if len(boxes) else boxes.new_zeros((len(matched), 4)))
        foreground = torch.stack(matched_idxs) >= 0
        with box_math(head_outputs["bbox_regression"]) as dtype:
            pred = self.box_coder.decode(head_outputs["bbox_regression"].to(dtype),
                                         torch.stack(anchors).to(dtype))[foreground]
            target = torch.stack(gt_boxes)[foreground].to(dtype)
            num_foreground = foreground.sum().clamp_min(1)  # torchvision: max(1, number of foreground points)
            image_index = lambda: torch.arange(foreground.shape[0], device=foreground.device)[:, None].expand_as(  # noqa: E731
                foreground)[foreground]
            losses["bbox_regression"] = (self._boxloss_weight * self._boxloss_per_box(pred, target, image_index).sum()
                                         / num_foreground)
        return losses


class _FCOSMixin(_BoxLossMixin):
    """On the FCOS model: records the batch's image sizes for its (swapped) head."""

    @property
    def anchor_generator(self):
        return _RecordImageSizes(self._modules["anchor_generator"], self.head)


_MIXINS = {m.__name__: m for m in (_RPNMixin, _RoIHeadsMixin, _RetinaNetMixin, _RetinaNetRegressionHeadMixin,
                                    _FCOSHeadMixin, _FCOSMixin)}
_SWAPPED: Dict[tuple, type] = {}


def _swapped_class(mixin: type, cls: type) -> type:
    """The subclass of ``cls`` with ``mixin`` first (one per pair, made once)."""
    key = (mixin, cls)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(f"BoxLoss{cls.__name__}", (mixin, cls), {"__module__": __name__,
                                                                        "__qualname__": f"BoxLoss{cls.__name__}"})
    return _SWAPPED[key]


def _rebuild_swapped(mixin_name: str, cls: type):
    """Unpickling: an empty instance of the swapped class; pickle then restores its state."""
    swapped = _swapped_class(_MIXINS[mixin_name], cls)
    return swapped.__new__(swapped)


def _make_importable_classes() -> None:
    """The swapped class of every supported torchvision head, as a module attribute, made at import time."""
    from torchvision.models.detection.fcos import FCOS, FCOSHead
    from torchvision.models.detection.retinanet import RetinaNet, RetinaNetRegressionHead
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    for mixin, cls in ((_RPNMixin, RegionProposalNetwork), (_RoIHeadsMixin, RoIHeads), (_RetinaNetMixin, RetinaNet),
                       (_RetinaNetRegressionHeadMixin, RetinaNetRegressionHead), (_FCOSHeadMixin, FCOSHead),
                       (_FCOSMixin, FCOS)):
        swapped = _swapped_class(mixin, cls)
        globals()[swapped.__name__] = swapped


_make_importable_classes()


def _swap(module: nn.Module, mixin: type, **options) -> None:
    """Make ``module`` an instance of the subclass of its class with ``mixin`` first; store the options on it."""
    _unswap(module)
    module.__class__ = _swapped_class(mixin, type(module))
    for key, value in options.items():
        object.__setattr__(module, f"_boxloss_{key}", value)


def _unswap(module: nn.Module) -> None:
    """Give ``module`` back its torchvision class, attributes and IoU function (a no-op if it is not swapped)."""
    if isinstance(module, _BoxLossMixin):
        module.__class__ = type(module).__bases__[1]
    for key in [k for k in vars(module) if k.startswith("_boxloss_")]:
        del module.__dict__[key]
    if getattr(module, "box_similarity", None) is _pairwise_iou:
        from torchvision.ops import boxes as box_ops

        module.box_similarity = box_ops.box_iou  # what torchvision's __init__ sets


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a DistributedDataParallel / DataParallel wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _weight_for(head: str, loss_weight) -> float:
    if loss_weight is None:
        return DEFAULT_LOSS_WEIGHTS[head]
    if isinstance(loss_weight, dict):
        unknown = set(loss_weight) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"loss_weight keys must be among {', '.join(DEFAULT_LOSS_WEIGHTS)}; got {sorted(unknown)}")
        value = loss_weight.get(head, DEFAULT_LOSS_WEIGHTS[head])
    else:
        value = loss_weight
    return check_loss_weight(value, head)


def _loss_for(head: str, loss, model_heads=()):
    """(replace this head?, its per-box loss) from ``loss``: one spec for every head, or a dict per head (whose
    keys must be heads of this model: a key for another model's head would silently do nothing)."""
    if isinstance(loss, dict):
        unknown = set(loss) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"loss keys must be among {', '.join(DEFAULT_LOSS_WEIGHTS)}; got {sorted(unknown)}")
        foreign = set(loss) - set(model_heads)
        if model_heads and foreign:
            raise ValueError(f"loss keys must be heads of this model ({', '.join(model_heads)}); got "
                             f"{sorted(foreign)}, which it does not have")
        if head not in loss:
            return False, None
        return True, resolve_box_loss(loss[head])
    return True, resolve_box_loss(loss)


def replace_box_loss(model: nn.Module, loss: BoxLossSpec = "giou", *, rpn: bool = True, roi_heads: bool = True,
                     matching: bool = True, loss_weight: Union[None, float, Dict[str, float]] = None) -> nn.Module:
    """Make a torchvision detector train its box regression with an IoU-family loss on decoded boxes.

    The model is modified in place (only this instance: other models, and torchvision itself, are untouched)
    and returned. The loss dict keeps torchvision's keys (``loss_rpn_box_reg``, ``loss_box_reg``,
    ``bbox_regression``), and inference (``model.eval()``) is unchanged.

    Args:
        model: ``FasterRCNN``, ``MaskRCNN`` or ``KeypointRCNN`` (RPN and RoI box head), ``RetinaNet`` or ``FCOS``,
            or one of them wrapped in ``DistributedDataParallel``/``DataParallel`` (the wrapped model is changed).
        loss: ``"iou"``, ``"log_iou"``, ``"giou"`` (default), ``"diou"``, ``"ciou"``, a variant's name
            (``"siou"``, ``"eiou"``, ``"focal_eiou"``, ``"wiou"``, ``"mpdiou"`` — each box gets the size of its own
            image, as the transform resized it —, ``"shape_iou"``, ``"nwd"``, ``"alpha_iou"``, ``"inner_iou"``,
            ``"focaler_iou"``; default options), a boxloss loss module (its
            options are kept, except that it reads the decoded boxes as ``xyxy`` whatever its ``fmt``, and its
            reduction is replaced by the head's normalisation; the rotated-only ``ProbIoULoss``, ``GWDLoss``,
            ``KLDLoss`` and ``KFIoULoss`` are refused), a :class:`boxloss.WIoULoss` (copied for each head, so the
            RPN and the RoI head keep their own running means of 1 − IoU, which live in the model's heads and are
            pickled with the model, not in its ``state_dict``), a callable ``(pred_boxes, target_boxes) ->
            per-box loss`` on xyxy boxes, or a dict of those keyed by this model's heads (``"rpn"`` and
            ``"roi_heads"`` for the two-stage models, ``"retinanet"``, ``"fcos"``), e.g.
            ``{"rpn": "giou", "roi_heads": "ciou"}``: heads missing from the dict are left as torchvision has
            them, and a key the model has no head for is refused.
        rpn: replace the RPN's box loss (two-stage models). ``False`` leaves it, or puts it back, as torchvision
            has it.
        roi_heads: replace the RoI head's box loss (two-stage models) or the box loss of the head of a one-stage
            model (RetinaNet, FCOS); ``False`` leaves it, or puts it back, as torchvision has it.
        matching: match anchors/proposals to ground truth with :func:`boxloss.box_iou` (same values as
            torchvision's) in the heads that are replaced. FCOS matches by centre sampling: no effect there.
        loss_weight: multiplier of the box term: a number for every head, a dict with some of the keys
            ``"rpn"``, ``"roi_heads"``, ``"retinanet"``, ``"fcos"``, or ``None`` for :data:`DEFAULT_LOSS_WEIGHTS`.

    Defaults, and what torchvision and mmdetection already do:

    * :data:`DEFAULT_LOSS_WEIGHTS`: RPN 1.5, RoI head 10, RetinaNet 1.5, FCOS 1. At random initialisation they
      make the box term about as large as torchvision's smooth-L1/L1 term (``benchmarks/RESULTS.md``).
    * torchvision's FCOS already trains its boxes with GIoU (weight 1) on the boxes its coder decodes, so
      ``replace_box_loss(fcos, "giou")`` changes nothing but the code path; choose another loss to change it.
    * ``retinanet_resnet50_fpn_v2`` already uses GIoU (its ``head.regression_head._loss_type`` is ``"giou"``);
      ``retinanet_resnet50_fpn`` uses L1. boxloss' head ignores ``_loss_type``.
    * mmdetection's GIoU Faster R-CNN config replaces only the RoI head's loss and keeps smooth-L1/L1 in the
      RPN: ``replace_box_loss(model, {"roi_heads": "giou"})`` (or ``rpn=False``) is the same choice here.

    Boxes are decoded and the loss computed in float32 (float64 stays float64) even under ``torch.autocast``:
    decoding bfloat16 deltas puts a floor of 0.06–0.16 GIoU under a perfect prediction.

    A swapped model trains, evaluates, pickles and ``torch.save``-s like the original; ``torch.jit.script``
    cannot compile the boxloss heads: call :func:`restore_box_loss` first, or load the ``state_dict`` (which is
    unchanged) into a stock model.

    Returns:
        The same ``model``.

    Raises:
        TypeError: an unsupported model, or a bad ``loss``/``loss_weight`` type.
        ValueError: an unknown loss name (the message lists the valid ones), an unknown ``loss``/``loss_weight``
            key, a ``loss`` key for a head the model does not have, a loss module for rotated boxes, or a
            negative ``loss_weight``.

    Example:
        >>> import torchvision
        >>> from boxloss.detection import replace_box_loss, restore_box_loss
        >>> model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3)
        >>> model = replace_box_loss(model, {"rpn": "giou", "roi_heads": "ciou"})
        >>> type(model.roi_heads).__name__
        'BoxLossRoIHeads'
        >>> type(restore_box_loss(model).roi_heads).__name__
        'RoIHeads'
    """
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

    inner = _unwrap(model)
    if isinstance(inner, FasterRCNN):  # MaskRCNN and KeypointRCNN are subclasses
        heads = (("rpn", inner.rpn, _RPNMixin, rpn), ("roi_heads", inner.roi_heads, _RoIHeadsMixin, roi_heads))
    elif isinstance(inner, RetinaNet):
        heads = (("retinanet", inner.head.regression_head, _RetinaNetRegressionHeadMixin, roi_heads),)
    elif isinstance(inner, FCOS):
        heads = (("fcos", inner.head, _FCOSHeadMixin, roi_heads),)
    else:
        raise TypeError(f"model must be a torchvision FasterRCNN, MaskRCNN, KeypointRCNN, RetinaNet or FCOS (or one "
                        f"wrapped in DistributedDataParallel); got {type(inner).__name__}")
    plan = []
    for name, module, mixin, wanted in heads:  # check everything before changing anything
        replace, fn = _loss_for(name, loss, tuple(h[0] for h in heads))
        plan.append((name, module, mixin, wanted and replace, fn, _weight_for(name, loss_weight)))
    for name, module, mixin, replace, fn, weight in plan:
        if not replace:
            _unswap(module)
            if name in ("retinanet", "fcos"):
                _unswap(inner)
            continue
        if name == "rpn":
            _swap(module, mixin, fn=fn, weight=weight)
            if matching:
                module.box_similarity = _pairwise_iou
        elif name == "roi_heads":
            _swap(module, mixin, fn=fn, weight=weight, matching=matching)
            if matching:
                module.box_similarity = _pairwise_iou
        elif name == "retinanet":
            _swap(module, mixin, fn=fn, weight=weight)
            _swap(inner, _RetinaNetMixin, matching=matching)
        else:
            _swap(module, mixin, fn=fn, weight=weight)
            _swap(inner, _FCOSMixin)
    return model


def restore_box_loss(model: nn.Module) -> nn.Module:
    """Undo :func:`replace_box_loss`: every head is again exactly torchvision's (class, losses, matching).

    The model is changed in place and returned; parameters and buffers are untouched (the ``state_dict`` is the
    same before and after). Afterwards ``torch.jit.script(model)`` works as for a stock model. A model that was
    never swapped is returned unchanged.

    Args:
        model: a torchvision detector (or one wrapped in ``DistributedDataParallel``/``DataParallel``).

    Returns:
        The same ``model``.

    Example:
        >>> import torchvision
        >>> from boxloss.detection import replace_box_loss, restore_box_loss
        >>> model = replace_box_loss(torchvision.models.detection.fcos_resnet50_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3), "diou")
        >>> type(restore_box_loss(model).head).__name__
        'FCOSHead'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    for module in _unwrap(model).modules():
        _unswap(module)
    return model
