"""The box losses, one module each: every one reuses a kernel of :mod:`boxloss.boxes` and adds one line."""

from .ciou import ciou_loss
from .diou import diou_loss
from .giou import giou_loss
from .iou import iou_loss, log_iou_loss

__all__ = ["iou_loss", "log_iou_loss", "giou_loss", "diou_loss", "ciou_loss"]
