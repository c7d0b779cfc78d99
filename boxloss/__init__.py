"""boxloss: IoU-family bounding-box regression losses for PyTorch detectors.

Box functions (pairwise and aligned): :func:`box_iou`, :func:`generalized_box_iou`, :func:`distance_box_iou`,
:func:`complete_box_iou`. Losses: :func:`iou_loss`, :func:`log_iou_loss`, :func:`giou_loss`, :func:`diou_loss`,
:func:`ciou_loss`, and their modules :class:`IoULoss`, :class:`LogIoULoss`, :class:`GIoULoss`,
:class:`DIoULoss`, :class:`CIoULoss`; the variants :func:`siou_loss`, :func:`eiou_loss`,
:func:`focal_eiou_loss`, :func:`wiou_loss` (and :class:`WIoULoss` v1-v3), :func:`mpdiou_loss`,
:func:`shape_iou_loss`, :func:`nwd_loss`, :func:`alpha_iou_loss`, :func:`inner_iou_loss`,
:func:`focaler_iou_loss` and their modules. A :class:`FastPathWarning` says (once per cause) when a compiled kernel
cannot run and a slower backend runs instead; ``python -m boxloss.info`` shows which backend runs where.
"""

from ._fast._warn import FastPathWarning
from .boxes import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou
from .losses import (
    alpha_iou_loss,
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    focaler_iou_loss,
    giou_loss,
    inner_iou_loss,
    iou_loss,
    log_iou_loss,
    mpdiou_loss,
    nwd_loss,
    shape_iou_loss,
    siou_loss,
    wiou_loss,
)
from .modules import (
    AlphaIoULoss,
    CIoULoss,
    DIoULoss,
    EIoULoss,
    FocalEIoULoss,
    FocalerIoULoss,
    GIoULoss,
    InnerIoULoss,
    IoULoss,
    LogIoULoss,
    MPDIoULoss,
    NWDLoss,
    ShapeIoULoss,
    SIoULoss,
    WIoULoss,
)

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
    "siou_loss",
    "eiou_loss",
    "focal_eiou_loss",
    "wiou_loss",
    "mpdiou_loss",
    "shape_iou_loss",
    "nwd_loss",
    "alpha_iou_loss",
    "inner_iou_loss",
    "focaler_iou_loss",
    "SIoULoss",
    "EIoULoss",
    "FocalEIoULoss",
    "WIoULoss",
    "MPDIoULoss",
    "ShapeIoULoss",
    "NWDLoss",
    "AlphaIoULoss",
    "InnerIoULoss",
    "FocalerIoULoss",
    "FastPathWarning",
]
