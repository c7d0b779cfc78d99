"""Generalized IoU loss, 1 − GIoU."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import ALL_FORMATS, _fill_loss_doc, _prepare_loss_inputs, _rotated_kind
from ..backends import aligned_loss
from ..kinds import register
from ._pair import giou_formula

__all__ = ["giou_loss"]


@_fill_loss_doc
def giou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
              avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy") -> Tensor:
    r"""Generalized IoU loss.

    .. math:: \mathcal{L} = 1 - \mathrm{GIoU}(P, T) = 1 - \mathrm{IoU} + \frac{|C \setminus (P \cup T)|}{|C|}
        \in [0, 2)

    Disjoint boxes keep a gradient through the enclosing-box term. Equals
    :func:`torchvision.ops.generalized_box_iou_loss` (which adds ``eps`` where this clamps) for boxes larger than
    ``eps``.

    {args}

    {returns}

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union: A Metric and A Loss for Bounding Box
        Regression", CVPR 2019. https://arxiv.org/abs/1902.09630

    Example:
        >>> import torch
        >>> from boxloss import giou_loss
        >>> pred = torch.tensor([[0., 0., 1., 1.]])
        >>> target = torch.tensor([[2., 0., 3., 1.]])
        >>> giou_loss(pred, target)  # 1 - (0 - 1/3)
        tensor(1.3333)
    """
    p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt, ALL_FORMATS)
    # 1 − GIoU: the formula registered below (reference: boxloss.reference._reference_loss)
    return aligned_loss(_rotated_kind("giou", fmt), p, t, eps, reduction, weight, avg_factor)


register("giou", giou_formula)
