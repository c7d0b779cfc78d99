"""Deltas ↔ boxes, with the conventions of torchvision's ``BoxCoder`` (Faster R-CNN parametrisation)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._utils import _check_boxes

__all__ = ["encode_boxes", "decode_boxes", "DEFAULT_CLAMP"]

# torchvision's bbox_xform_clip: dw, dh above log(1000 / 16) would make boxes over 1000/16 times the anchor
DEFAULT_CLAMP = math.log(1000.0 / 16)


def _check_weights(weights: Sequence[float]) -> tuple:
    if len(weights) != 4 or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0 for w in weights):
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh); got {tuple(weights)!r}")
    return tuple(float(w) for w in weights)


def _centre_size(boxes: Tensor):
    """(cx, cy, w, h) of xyxy boxes, as torchvision's BoxCoder computes them (no +1)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    r"""Encode ``boxes`` as deltas relative to ``anchors`` (the inverse of :func:`decode_boxes`).

    .. math::
        d_x = w_x \frac{x_b - x_a}{w_a}, \quad d_y = w_y \frac{y_b - y_a}{h_a}, \quad
        d_w = w_w \ln\frac{w_b}{w_a}, \quad d_h = w_h \ln\frac{h_b}{h_a}

    with :math:`(x, y)` box centres. Equals ``torchvision.models.detection._utils.BoxCoder(weights).encode_single``.

    Args:
        boxes (Tensor[..., 4]): target boxes, xyxy, positive widths and heights.
        anchors (Tensor[..., 4]): reference boxes (anchors or proposals), xyxy, broadcastable to ``boxes``.
        weights (4 floats): (wx, wy, ww, wh); torchvision uses (1, 1, 1, 1) in the RPN and RetinaNet and
            (10, 10, 5, 5) in the Faster R-CNN RoI head.

    Returns:
        Tensor[..., 4]: deltas (dx, dy, dw, dh), in the dtype of ``boxes``.

    Example:
        >>> import torch
        >>> from boxloss.detection import encode_boxes
        >>> encode_boxes(torch.tensor([[1., 0., 5., 2.]]), torch.tensor([[0., 0., 2., 2.]]))
        tensor([[1.0000, 0.0000, 0.6931, 0.0000]])
    """
    _check_boxes("boxes", boxes)
    _check_boxes("anchors", anchors)
    wx, wy, ww, wh = _check_weights(weights)
    ax, ay, aw, ah = _centre_size(anchors.to(boxes.dtype))
    bx, by, bw, bh = _centre_size(boxes)
    return torch.stack((wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)),
                       dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = DEFAULT_CLAMP) -> Tensor:
    r"""Decode ``deltas`` relative to ``anchors`` into xyxy boxes (the inverse of :func:`encode_boxes`).

    .. math::
        x = x_a + \frac{d_x}{w_x} w_a, \quad w = w_a \exp\Big(\min\big(\frac{d_w}{w_w}, \text{clamp}\big)\Big)

    and likewise for y and h. Equals ``torchvision.models.detection._utils.BoxCoder(weights).decode_single``;
    the clamp (torchvision's ``bbox_xform_clip``, default log(1000/16)) keeps ``exp`` finite.

    Args:
        deltas (Tensor[..., 4]): predicted (dx, dy, dw, dh).
        anchors (Tensor[..., 4]): reference boxes, xyxy, broadcastable to ``deltas``.
        weights (4 floats): as in :func:`encode_boxes`.
        clamp (float): upper bound of dw/ww and dh/wh before ``exp``.

    Returns:
        Tensor[..., 4]: xyxy boxes, in the dtype of ``deltas``; differentiable in ``deltas``.

    Example:
        >>> import torch
        >>> from boxloss.detection import decode_boxes
        >>> decode_boxes(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0., 0., 2., 2.]]))  # one width right
        tensor([[2., 0., 4., 2.]])
    """
    _check_boxes("deltas", deltas)
    _check_boxes("anchors", anchors)
    wx, wy, ww, wh = _check_weights(weights)
    ax, ay, aw, ah = _centre_size(anchors.to(deltas.dtype))
    dx, dy, dw, dh = deltas.unbind(-1)
    cx = dx / wx * aw + ax
    cy = dy / wy * ah + ay
    half_w = 0.5 * torch.exp(torch.clamp(dw / ww, max=clamp)) * aw
    half_h = 0.5 * torch.exp(torch.clamp(dh / wh, max=clamp)) * ah
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
