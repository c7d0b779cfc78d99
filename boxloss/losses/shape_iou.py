"""Shape-IoU loss (Zhang & Zhang 2023): distance and shape terms weighted by the target's own shape."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from .._utils import _fill_loss_doc, check_param
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["shape_iou_loss", "shape_iou_formula"]


def shape_iou_formula(p, t, m, scale):
    b = Pair(p, t, m)
    # ww = 2 w^s / (w^s + h^s) = 2 σ(s ln(w / h)), hh = 2 − ww: as a sigmoid of the log aspect ratio, so that no
    # power of a side is formed (1000^20 overflows float32); sides clamped at eps
    z = scale * (m.log(m.clamp_min(b.tw, m.eps)) - m.log(m.clamp_min(b.th, m.eps)))
    e = m.exp(-m.abs(z))
    ww = 2 * m.where(z >= 0, 1 / (1 + e), e / (1 + e))
    hh = 2 - ww
    # hh weights the horizontal centre offset and ww the vertical one, over the enclosing diagonal squared
    distance = b.ratio_at_most_one(hh * b.sx * b.sx + ww * b.sy * b.sy, b.c2 * 2)
    omega_w = hh * m.safe_div(m.abs(b.pw - b.tw), m.maximum(b.pw, b.tw))
    omega_h = ww * m.safe_div(m.abs(b.ph - b.th), m.maximum(b.ph, b.th))
    shape = m.safe_pow(1 - m.exp(-omega_w), 4.0) + m.safe_pow(1 - m.exp(-omega_h), 4.0)
    return 1 - b.iou + distance * 2 + shape * 0.5


@_fill_loss_doc
def shape_iou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
                   avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy",
                   scale: float = 0.0) -> Tensor:
    r"""Shape-IoU loss: a centre-distance and a shape cost whose horizontal and vertical parts are weighted by
    the target box's shape.

    .. math::
        ww = \frac{2 (w^{gt})^s}{(w^{gt})^s + (h^{gt})^s},\quad hh = \frac{2 (h^{gt})^s}{(w^{gt})^s + (h^{gt})^s}

        d^{shape} = hh \frac{(x_c - x_c^{gt})^2}{c^2} + ww \frac{(y_c - y_c^{gt})^2}{c^2},\quad
        \Omega^{shape} = \sum_{t=w,h} (1 - e^{-\omega_t})^4,\
        \omega_w = hh \frac{|w - w^{gt}|}{\max(w, w^{gt})},\ \omega_h = ww \frac{|h - h^{gt}|}{\max(h, h^{gt})}

        \mathcal{L} = 1 - \mathrm{IoU} + d^{shape} + \tfrac12 \Omega^{shape}

    with s the ``scale`` (the paper: a dataset-dependent factor tied to object size), c the enclosing diagonal.
    ``scale=0`` gives ww = hh = 1: DIoU's centre term plus SIoU's shape cost. The distance term is taken over
    max(c², its numerator / 2), which changes nothing for valid boxes and bounds inverted ones. Disjoint boxes get
    a gradient from the distance term.

    {args}
        scale (float): the exponent s ≥ 0 of the target's width and height in the weights (default 0).

    {returns}

    Reference:
        H. Zhang, S. Zhang, "Shape-IoU: More Accurate Metric considering Bounding Box Shape and Scale",
        arXiv 2023. https://arxiv.org/abs/2312.17663

    Example:
        >>> import torch
        >>> from boxloss import shape_iou_loss
        >>> shape_iou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 4., 2.]]))  # 0.5 + 1/20 + Ω/2
        tensor(0.5620)
    """
    scale = check_param("scale", scale, 0.0)
    return variant_loss("shape_iou", (scale,), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
register("shape_iou", shape_iou_formula, ("scale",))
