"""Distance IoU loss, 1 − DIoU."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import ALL_FORMATS, _fill_loss_doc, _prepare_loss_inputs, _rotated_kind
from ..backends import aligned_loss
from ..kinds import register
from ._pair import diou_formula

__all__ = ["diou_loss"]


@_fill_loss_doc
def diou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
              avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy") -> Tensor:
    r"""Distance IoU loss.

    .. math:: \mathcal{L} = 1 - \mathrm{DIoU}(P, T) = 1 - \mathrm{IoU} + \frac{\rho^2(p, t)}{c^2} \in [0, 2)

    with :math:`\rho(p, t)` the distance between the box centres and :math:`c` the enclosing diagonal: it
    pulls centres together directly, which converges faster than GIoU. Equals
    :func:`torchvision.ops.distance_box_iou_loss` for boxes larger than ``eps`` (up to a relative ``eps / c²``).

    {args}

    {returns}

    Reference:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression", AAAI 2020.
        https://arxiv.org/abs/1911.08287

    Example:
        >>> import torch
        >>> from boxloss import diou_loss
        >>> pred = torch.tensor([[0., 0., 1., 1.]])
        >>> target = torch.tensor([[2., 0., 3., 1.]])
        >>> diou_loss(pred, target)  # 1 - (0 - 4/10)
        tensor(1.4000)
    """
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt, ALL_FORMATS)
    # 1 − DIoU: the formula registered below (reference: boxloss.reference._reference_loss)
    return aligned_loss(_rotated_kind("diou", fmt), p, t, eps, reduction, weight, avg_factor)


register("diou", diou_formula)
