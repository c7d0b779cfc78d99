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
"""

from __future__ import annotations

from typing import Dict, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..boxes import box_iou
from .coder import decode_boxes
from .loss import BoxLossSpec, _per_box, resolve_box_loss

__all__ = ["replace_box_loss", "DEFAULT_LOSS_WEIGHTS"]

# Multipliers of the box term, chosen so that at the start of training (random init) the IoU-family box term
# is about as large as torchvision's smooth-L1/L1 term on encoded deltas; measured by
# benchmarks/loss_weight_calibration.py and recorded in benchmarks/RESULTS.md. The RoI head's deltas are
# scaled by the coder weights (10, 10, 5, 5), so its smooth-L1 term is several times larger than an IoU loss:
# the GIoU and DIoU papers used 10–12 there.
DEFAULT_LOSS_WEIGHTS = {"rpn": 1.5, "roi_heads": 10.0, "retinanet": 1.5, "fcos": 1.0}


def _pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return box_iou(boxes1, boxes2)


class _RPNMixin:
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
        pred = decode_boxes(pred_bbox_deltas[sampled_pos], torch.cat(anchors, dim=0)[sampled_pos],
                            self.box_coder.weights, self.box_coder.bbox_xform_clip)
        target = torch.cat(matched_gt_boxes, dim=0)[sampled_pos].to(pred.dtype)
        box_loss = self._boxloss_weight * _per_box(self._boxloss_fn, pred, target).sum() / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


class _RoIHeadsMixin:
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
        pred = decode_boxes(box_regression[pos, labels[pos]], torch.cat(proposals, dim=0)[pos],
                            self.box_coder.weights, self.box_coder.bbox_xform_clip)
        target = torch.cat(matched_gt_boxes, dim=0)[pos].to(pred.dtype)
        losses["loss_box_reg"] = self._boxloss_weight * _per_box(self._boxloss_fn, pred, target).sum() / max(n, 1)
        return result, losses


class _RetinaNetMixin:
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


class _RetinaNetRegressionHeadMixin:
    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = []
        for targets_per_image, deltas, anchors_per_image, matched in zip(
                targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            fg = torch.where(matched >= 0)[0]
            pred = decode_boxes(deltas[fg], anchors_per_image[fg], self.box_coder.weights,
                                self.box_coder.bbox_xform_clip)
            target = targets_per_image["boxes"][matched[fg]].to(pred.dtype)
            losses.append(_per_box(self._boxloss_fn, pred, target).sum() / max(1, fg.numel()))
        return self._boxloss_weight * sum(losses) / max(1, len(targets))


class _FCOSHeadMixin:
    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        gt_boxes = []
        for targets_per_image, matched in zip(targets, matched_idxs):
            boxes = targets_per_image["boxes"]
            gt_boxes.append(boxes[matched.clip(min=0)] if len(boxes) else boxes.new_zeros((len(matched), 4)))
        foreground = torch.stack(matched_idxs) >= 0
        pred = self.box_coder.decode(head_outputs["bbox_regression"], torch.stack(anchors))[foreground]
        target = torch.stack(gt_boxes)[foreground].to(pred.dtype)
        num_foreground = foreground.sum().clamp_min(1)  # torchvision divides by max(1, number of foreground points)
        losses["bbox_regression"] = self._boxloss_weight * _per_box(self._boxloss_fn, pred, target).sum() / num_foreground
        return losses


_SWAPPED: Dict[type, type] = {}


def _swap(module: nn.Module, mixin: type, **options) -> None:
    """Make ``module`` an instance of a subclass of its class with ``mixin`` first; store the options on it."""
    cls = type(module)
    if mixin not in cls.__mro__:
        if cls not in _SWAPPED:
            _SWAPPED[cls] = type(f"BoxLoss{cls.__name__}", (mixin, cls), {"__module__": __name__})
            globals()[_SWAPPED[cls].__name__] = _SWAPPED[cls]  # importable by name, so the model still pickles
        module.__class__ = _SWAPPED[cls]
    for key, value in options.items():
        object.__setattr__(module, f"_boxloss_{key}", value)


def _weight_for(head: str, loss_weight) -> float:
    if loss_weight is None:
        return DEFAULT_LOSS_WEIGHTS[head]
    if isinstance(loss_weight, dict):
        unknown = set(loss_weight) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"loss_weight keys must be among {', '.join(DEFAULT_LOSS_WEIGHTS)}; got {sorted(unknown)}")
        return float(loss_weight.get(head, DEFAULT_LOSS_WEIGHTS[head]))
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
        raise TypeError(f"loss_weight must be a number, a dict of numbers per head or None; "
                        f"got {type(loss_weight).__name__}")
    return float(loss_weight)


def replace_box_loss(model: nn.Module, loss: BoxLossSpec = "giou", *, rpn: bool = True, roi_heads: bool = True,
                     matching: bool = True, loss_weight: Union[None, float, Dict[str, float]] = None) -> nn.Module:
    """Make a torchvision detector train its box regression with an IoU-family loss on decoded boxes.

    The model is modified in place (only this instance: other models, and torchvision itself, are untouched)
    and returned. The loss dict keeps torchvision's keys (``loss_rpn_box_reg``, ``loss_box_reg``,
    ``bbox_regression``), and inference (``model.eval()``) is unchanged.

    Args:
        model: ``FasterRCNN``, ``MaskRCNN`` or ``KeypointRCNN`` (RPN and RoI box head), ``RetinaNet`` or ``FCOS``.
        loss: ``"iou"``, ``"log_iou"``, ``"giou"`` (default), ``"diou"``, ``"ciou"``, a boxloss loss module (its
            options are kept, its reduction is replaced by the head's normalisation), or a callable
            ``(pred_boxes, target_boxes) -> per-box loss``.
        rpn: replace the RPN's box loss (two-stage models). ``False`` leaves it as torchvision has it.
        roi_heads: replace the RoI head's box loss (two-stage models) or the box loss of the head of a one-stage
            model (RetinaNet, FCOS).
        matching: match anchors/proposals to ground truth with :func:`boxloss.box_iou` (same values as
            torchvision's) in the heads that are replaced. FCOS matches by centre sampling: no effect there.
        loss_weight: multiplier of the box term: a number for every head, a dict with some of the keys
            ``"rpn"``, ``"roi_heads"``, ``"retinanet"``, ``"fcos"``, or ``None`` for :data:`DEFAULT_LOSS_WEIGHTS`
            (RPN 1.5, RoI head 10, RetinaNet 1.5, FCOS 1: at random initialisation they make the box term about as
            large as torchvision's smooth-L1/L1 term; see ``benchmarks/RESULTS.md``).

    Returns:
        The same ``model``.

    Raises:
        TypeError: an unsupported model, or a bad ``loss``/``loss_weight`` type.
        ValueError: an unknown loss name (the message lists the valid ones) or ``loss_weight`` key.

    Example:
        >>> import torchvision
        >>> from boxloss.detection import replace_box_loss
        >>> model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        ...     weights=None, weights_backbone=None, num_classes=3)
        >>> model = replace_box_loss(model, "diou")
        >>> type(model.roi_heads).__name__
        'BoxLossRoIHeads'
    """
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

    loss_fn = resolve_box_loss(loss)
    if isinstance(model, FasterRCNN):  # MaskRCNN and KeypointRCNN are subclasses
        if rpn:
            _swap(model.rpn, _RPNMixin, fn=loss_fn, weight=_weight_for("rpn", loss_weight))
            if matching:
                model.rpn.box_similarity = _pairwise_iou
        if roi_heads:
            _swap(model.roi_heads, _RoIHeadsMixin, fn=loss_fn, weight=_weight_for("roi_heads", loss_weight),
                  matching=matching)
            if matching:
                model.roi_heads.box_similarity = _pairwise_iou
    elif isinstance(model, RetinaNet):
        if roi_heads:
            _swap(model.head.regression_head, _RetinaNetRegressionHeadMixin, fn=loss_fn,
                  weight=_weight_for("retinanet", loss_weight))
            _swap(model, _RetinaNetMixin, matching=matching)
    elif isinstance(model, FCOS):
        if roi_heads:
            _swap(model.head, _FCOSHeadMixin, fn=loss_fn, weight=_weight_for("fcos", loss_weight))
    else:
        raise TypeError(f"model must be a torchvision FasterRCNN, MaskRCNN, KeypointRCNN, RetinaNet or FCOS; "
                        f"got {type(model).__name__}")
    return model
