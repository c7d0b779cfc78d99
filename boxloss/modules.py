"""``nn.Module`` wrappers of the box losses: the constructor stores the options, ``forward`` calls the function."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from ._utils import BOX_FORMATS, REDUCTIONS, _check_choice, _check_eps
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
from .losses.iou import ZERO_OVERLAP

__all__ = ["IoULoss", "LogIoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "SIoULoss", "EIoULoss", "FocalEIoULoss",
           "WIoULoss", "MPDIoULoss", "ShapeIoULoss", "NWDLoss", "AlphaIoULoss", "InnerIoULoss", "FocalerIoULoss"]


class _BoxLoss(nn.Module):
    _fn = None  # the functional loss this module wraps

    def __init__(self, *, reduction: str = "mean", eps: float = 1e-7, fmt: str = "xyxy") -> None:
        super().__init__()
        # fail at construction rather than at the first forward, deep in a training loop
        _check_choice("reduction", reduction, REDUCTIONS)
        _check_choice("fmt", fmt, BOX_FORMATS)
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
    """Module form of :func:`boxloss.giou_loss` (1 − GIoU)."""

    _fn = staticmethod(giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`boxloss.diou_loss` (1 − DIoU)."""

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

        empty = torch.zeros(0, 4)
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
