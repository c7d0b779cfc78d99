"""Detector integration: IoU-family box losses in torchvision's detectors, and pieces for custom detectors.

* :func:`replace_box_loss`: one call swaps smooth-L1 for an IoU-family loss on decoded boxes in Faster/Mask/
  Keypoint R-CNN (RPN and RoI head), RetinaNet and FCOS; :func:`restore_box_loss` undoes it.
* :func:`encode_boxes` / :func:`decode_boxes`: deltas ↔ boxes with torchvision's ``BoxCoder`` conventions.
* :func:`decoded_box_loss`: (deltas, anchors, matched targets, positive mask) → the loss, normalised by the
  number of positives, optionally averaged over processes.

Requires torchvision (a dependency of boxloss).
"""

from .coder import decode_boxes, encode_boxes
from .loss import LOSS_NAMES, decoded_box_loss
from .torchvision_models import DEFAULT_LOSS_WEIGHTS, replace_box_loss, restore_box_loss

__all__ = ["replace_box_loss", "restore_box_loss", "encode_boxes", "decode_boxes", "decoded_box_loss", "LOSS_NAMES",
           "DEFAULT_LOSS_WEIGHTS"]
