"""``nn.Module`` wrappers of the box losses: the constructor stores the options, ``forward`` calls the function."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from ._utils import BOX_FORMATS, REDUCTIONS, _check_choice, _check_eps
from .losses import ciou_loss, diou_loss, giou_loss, iou_loss, log_iou_loss
from .losses.iou import ZERO_OVERLAP

__all__ = ["IoULoss", "LogIoULoss", "GIoULoss", "DIoULoss", "CIoULoss"]


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
