"""``nn.Module`` wrappers of the mask losses: the constructor stores the options, ``forward`` calls the function."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor, nn

from .._utils import REDUCTIONS, _check_choice, _check_eps
from .lovasz import lovasz_hinge_loss, lovasz_softmax_loss
from .soft_iou import MODES, soft_iou_loss

__all__ = ["SoftIoULoss", "LovaszSoftmaxLoss", "LovaszHingeLoss"]


class SoftIoULoss(nn.Module):
    """Module form of :func:`boxloss.segmentation.soft_iou_loss`; its keyword arguments go to the constructor."""

    def __init__(self, *, mode: str = "binary", from_logits: bool = True, log: bool = False, smooth: float = 0.0,
                 eps: float = 1e-7, class_weights: Union[None, Tensor, Sequence[float]] = None,
                 ignore_index: Optional[int] = None, per_image: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        _check_choice("mode", mode, MODES)
        _check_choice("reduction", reduction, REDUCTIONS)
        _check_eps(eps)
        self.options = dict(mode=mode, from_logits=from_logits, log=log, smooth=smooth, eps=eps,
                            class_weights=class_weights, ignore_index=ignore_index, per_image=per_image,
                            reduction=reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return soft_iou_loss(input, target, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class LovaszSoftmaxLoss(nn.Module):
    """Module form of :func:`boxloss.segmentation.lovasz_softmax_loss`."""

    def __init__(self, *, classes: Union[str, Sequence[int]] = "present", per_image: bool = False,
                 ignore_index: Optional[int] = None) -> None:
        super().__init__()
        self.options = dict(classes=classes, per_image=per_image, ignore_index=ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_softmax_loss(logits, target, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class LovaszHingeLoss(nn.Module):
    """Module form of :func:`boxloss.segmentation.lovasz_hinge_loss`."""

    def __init__(self, *, per_image: bool = False, ignore_index: Optional[int] = None) -> None:
        super().__init__()
        self.options = dict(per_image=per_image, ignore_index=ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_hinge_loss(logits, target, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
