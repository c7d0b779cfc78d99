"""``nn.Module`` wrappers of the box losses: the constructor stores the options, ``forward`` calls the function."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from ._utils import (
    ALL_FORMATS,
    BOX_FORMATS,
    REDUCTIONS,
    ROTATED_FORMATS,
    _check_choice,
    _check_eps,
    _check_fmt,
    _columns,
)
from .losses import (
    WIoULoss,
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
)
from .losses.gaussian import gwd_loss, kfiou_loss, kld_loss, probiou_loss
from .losses.iou import ZERO_OVERLAP

__all__ = ["IoULoss", "LogIoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "SIoULoss", "EIoULoss", "FocalEIoULoss",
           "WIoULoss", "MPDIoULoss", "ShapeIoULoss", "NWDLoss", "AlphaIoULoss", "InnerIoULoss", "FocalerIoULoss",
           "ProbIoULoss", "GWDLoss", "KLDLoss", "KFIoULoss"]


class _BoxLoss(nn.Module):
    _fn = None  # the functional loss this module wraps
    _formats = BOX_FORMATS  # the box formats it accepts

    def __init__(self, *, reduction: str = "mean", eps: float = 1e-7, fmt: str = "xyxy") -> None:
        super().__init__()
        # fail at construction rather than at the first forward, deep in a training loop
        _check_choice("reduction", reduction, REDUCTIONS)
        _check_fmt(fmt, self._formats)
        _check_eps(eps)
        self.reduction = reduction
        self.eps = eps
        self.fmt = fmt

    def _options(self) -> dict:
        return {"reduction": self.reduction, "eps": self.eps, "fmt": self.fmt}

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Union[None, float, Tensor] = None) -> Tensor:
        return type(self)._fn(pred, target, weight=weight, avg_factor=avg_factor, **self._options())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())


class _ZeroOverlapBoxLoss(_BoxLoss):
    _formats = ALL_FORMATS

    def __init__(self, *, reduction: str = "mean", eps: float = 1e-7, fmt: str = "xyxy",
                 zero_overlap: str = "distance") -> None:
        super().__init__(reduction=reduction, eps=eps, fmt=fmt)
        _check_choice("zero_overlap", zero_overlap, ZERO_OVERLAP)
        self.zero_overlap = zero_overlap

    def _options(self) -> dict:
        return {**super()._options(), "zero_overlap": self.zero_overlap}


class IoULoss(_ZeroOverlapBoxLoss):
    """Module form of :func:`boxloss.iou_loss` (1 − IoU with zero-overlap handling).

    Example:
        >>> import torch
        >>> from boxloss import IoULoss
        >>> loss = IoULoss(reduction="sum")
        >>> loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 4.]]))
        tensor(0.5000)
    """

    _fn = staticmethod(iou_loss)


class LogIoULoss(_ZeroOverlapBoxLoss):
    """Module form of :func:`boxloss.log_iou_loss` (−ln IoU, UnitBox, with zero-overlap handling)."""

    _fn = staticmethod(log_iou_loss)


class GIoULoss(_BoxLoss):
    """Module form of :func:`boxloss.giou_loss` (1 − GIoU; axis-aligned or rotated boxes)."""

    _formats = ALL_FORMATS
    _fn = staticmethod(giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`boxloss.diou_loss` (1 − DIoU; axis-aligned or rotated boxes)."""

    _formats = ALL_FORMATS
    _fn = staticmethod(diou_loss)


class CIoULoss(_BoxLoss):
    """Module form of :func:`boxloss.ciou_loss` (1 − CIoU)."""

    _fn = staticmethod(ciou_loss)


class _VariantBoxLoss(_BoxLoss):
    """A variant's module: its own options (``theta``, ``alpha``, ``variant``, ...) are checked at construction
    by the function itself (a call on zero boxes), so a bad value fails here, not in the training loop."""

    _defaults: dict = {}

    def __init__(self, *, reduction: str = "mean", eps: float = 1e-7, fmt: str = "xyxy", **options) -> None:
        super().__init__(reduction=reduction, eps=eps, fmt=fmt)
        unknown = sorted(set(options) - set(self._defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected options {unknown}; it takes "
                            f"{sorted(self._defaults) or 'none besides reduction, eps, fmt'}")
        self.options = {**self._defaults, **options}
        import torch

        empty = torch.zeros(0, _columns(fmt))
        type(self)._fn(empty, empty, **self._options())

    def _options(self) -> dict:
        return {**super()._options(), **self.options}


class SIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.siou_loss` (options: ``theta``)."""

    _fn = staticmethod(siou_loss)
    _defaults = {"theta": 4.0}


class EIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.eiou_loss`."""

    _fn = staticmethod(eiou_loss)


class FocalEIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.focal_eiou_loss` (options: ``gamma``)."""

    _fn = staticmethod(focal_eiou_loss)
    _defaults = {"gamma": 0.5}


class MPDIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.mpdiou_loss` (options: ``image_size``, required).

    Example:
        >>> from boxloss import MPDIoULoss
        >>> MPDIoULoss(image_size=(640, 480))
        MPDIoULoss(reduction='mean', eps=1e-07, fmt='xyxy', image_size=(640, 480))
    """

    _fn = staticmethod(mpdiou_loss)
    _defaults = {"image_size": None}

    def __init__(self, *, image_size, reduction: str = "mean", eps: float = 1e-7, fmt: str = "xyxy") -> None:
        super().__init__(reduction=reduction, eps=eps, fmt=fmt, image_size=image_size)


class ShapeIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.shape_iou_loss` (options: ``scale``)."""

    _fn = staticmethod(shape_iou_loss)
    _defaults = {"scale": 0.0}


class NWDLoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.nwd_loss` (options: ``constant``)."""

    _fn = staticmethod(nwd_loss)
    _defaults = {"constant": 12.8}


class AlphaIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.alpha_iou_loss` (options: ``alpha``, ``variant``)."""

    _fn = staticmethod(alpha_iou_loss)
    _defaults = {"alpha": 3.0, "variant": "iou"}


class InnerIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.inner_iou_loss` (options: ``ratio``, ``variant``)."""

    _fn = staticmethod(inner_iou_loss)
    _defaults = {"ratio": 0.7, "variant": "iou"}


class FocalerIoULoss(_VariantBoxLoss):
    """Module form of :func:`boxloss.focaler_iou_loss` (options: ``d``, ``u``, ``variant``)."""

    _fn = staticmethod(focaler_iou_loss)
    _defaults = {"d": 0.0, "u": 0.95, "variant": "iou"}


class _GaussianBoxLoss(_VariantBoxLoss):
    _formats = ROTATED_FORMATS

    def __init__(self, *, reduction: str = "mean", eps: float = 1e-7, fmt: str = "cxcywhr", **options) -> None:
        super().__init__(reduction=reduction, eps=eps, fmt=fmt, **options)


class ProbIoULoss(_GaussianBoxLoss):
    """Module form of :func:`boxloss.probiou_loss` (rotated boxes; options: ``mode``).

    Example:
        >>> import torch
        >>> from boxloss import ProbIoULoss
        >>> loss = ProbIoULoss(mode="l2")
        >>> box = torch.tensor([[0., 0., 4., 2., 30.]])
        >>> loss(box, box)
        tensor(0.)
    """

    _fn = staticmethod(probiou_loss)
    _defaults = {"mode": "l1"}


class GWDLoss(_GaussianBoxLoss):
    """Module form of :func:`boxloss.gwd_loss` (rotated boxes; options: ``fun``, ``tau``)."""

    _fn = staticmethod(gwd_loss)
    _defaults = {"fun": "log1p", "tau": 1.0}


class KLDLoss(_GaussianBoxLoss):
    """Module form of :func:`boxloss.kld_loss` (rotated boxes; options: ``fun``, ``tau``)."""

    _fn = staticmethod(kld_loss)
    _defaults = {"fun": "log1p", "tau": 1.0}


class KFIoULoss(_GaussianBoxLoss):
    """Module form of :func:`boxloss.kfiou_loss` (rotated boxes; options: ``fun``, ``beta``)."""

    _fn = staticmethod(kfiou_loss)
    _defaults = {"fun": "none", "beta": 1.0 / 9.0}
