"""boxloss: IoU-family bounding-box regression losses for PyTorch detectors.

Box functions (pairwise and aligned): :func:`box_iou`, :func:`generalized_box_iou`, :func:`distance_box_iou`,
:func:`complete_box_iou`. Losses: :func:`iou_loss`, :func:`log_iou_loss`, :func:`giou_loss`, :func:`diou_loss`,
:func:`ciou_loss`, and their modules :class:`IoULoss`, :class:`LogIoULoss`, :class:`GIoULoss`,
:class:`DIoULoss`, :class:`CIoULoss`. A :class:`FastPathWarning` says (once per cause) when a compiled kernel
cannot run and a slower backend runs instead; ``python -m boxloss.info`` shows which backend runs where.
"""

from ._fast._warn import FastPathWarning
from .boxes import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou
from .losses import ciou_loss, diou_loss, giou_loss, iou_loss, log_iou_loss
from .modules import CIoULoss, DIoULoss, GIoULoss, IoULoss, LogIoULoss

__version__ = "0.1.0"

__all__ = [
    "box_iou",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "iou_loss",
    "log_iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "IoULoss",
    "LogIoULoss",
    "GIoULoss",
    "DIoULoss",
    "CIoULoss",
    "FastPathWarning",
]
