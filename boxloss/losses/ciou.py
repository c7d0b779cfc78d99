"""Complete IoU loss, 1 − CIoU."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _fill_loss_doc, _prepare_loss_inputs
from ..backends import aligned_loss
from ..kinds import register
from ._pair import ciou_formula

__all__ = ["ciou_loss"]


@_fill_loss_doc
def ciou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
              avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy") -> Tensor:
    r"""Complete IoU loss.

    .. math::
        \mathcal{L} = 1 - \mathrm{IoU} + \frac{\rho^2(p, t)}{c^2} + \alpha v, \quad
        v = \frac{4}{\pi^2}\Big(\arctan\frac{w_T}{h_T} - \arctan\frac{w_P}{h_P}\Big)^2, \quad
        \alpha = \frac{v}{1 - \mathrm{IoU} + v}

    DIoU plus an aspect-ratio term. :math:`\alpha` is a constant in the backward pass, as in the paper and
    :func:`torchvision.ops.complete_box_iou_loss`, which this equals for boxes larger than ``eps``. Heights enter
    the arctangent clamped at ``eps``.

    {args}

    {returns}

    Reference:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression", AAAI 2020;
        Zheng et al., "Enhancing Geometric Factors in Model Learning and Inference for Object Detection and
        Instance Segmentation", IEEE TCYB 2021. https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch
        >>> from boxloss import ciou_loss
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> ciou_loss(pred, pred)
        tensor(0.)
    """
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt)
    return aligned_loss("ciou", p, t, eps, reduction, weight, avg_factor)  # 1 − CIoU (reference: boxloss.reference)


register("ciou", ciou_formula)
