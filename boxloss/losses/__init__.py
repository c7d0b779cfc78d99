"""The box losses, one module each: the classic ones reuse a kernel of :mod:`boxloss.boxes`; the variants are
each one formula, registered by a line in its own file (see :mod:`boxloss.kinds`)."""

from .alpha_iou import alpha_iou_loss
from .ciou import ciou_loss
from .diou import diou_loss
from .eiou import eiou_loss, focal_eiou_loss
from .focaler_iou import focaler_iou_loss
from .gaussian import gwd_loss, kfiou_loss, kld_loss, probiou_loss
from .giou import giou_loss
from .inner_iou import inner_iou_loss
from .iou import iou_loss, log_iou_loss
from .mpdiou import mpdiou_loss
from .nwd import nwd_loss
from .shape_iou import shape_iou_loss
from .siou import siou_loss
from .wiou import WIoULoss, wiou_loss

__all__ = ["iou_loss", "log_iou_loss", "giou_loss", "diou_loss", "ciou_loss", "siou_loss", "eiou_loss",
           "focal_eiou_loss", "wiou_loss", "mpdiou_loss", "shape_iou_loss", "nwd_loss", "alpha_iou_loss",
           "inner_iou_loss", "focaler_iou_loss", "WIoULoss", "probiou_loss", "gwd_loss", "kld_loss", "kfiou_loss"]
