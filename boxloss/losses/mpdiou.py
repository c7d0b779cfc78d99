"""MPDIoU loss (Ma & Xu 2023): IoU with the distances between matching corners."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._utils import _check_same_device, _fill_loss_doc, _prepare_loss_inputs, _reduce, check_param
from ..expr import TorchMath
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["mpdiou_loss", "mpdiou_formula"]

# image sides whose W² + H² is a positive float32: smaller ones divide by 0, larger ones overflow
IMAGE_SIDE_RANGE = (1e-6, 1e18)


def mpdiou_formula(p, t, m, width, height):
    b = Pair(p, t, m)
    d1 = (p[0] - t[0]) * (p[0] - t[0]) + (p[1] - t[1]) * (p[1] - t[1])
    d2 = (p[2] - t[2]) * (p[2] - t[2]) + (p[3] - t[3]) * (p[3] - t[3])
    return 1 - b.iou + (d1 + d2) / (width * width + height * height)


@_fill_loss_doc
def mpdiou_loss(pred: Tensor, target: Tensor, *, image_size: Union[Sequence[float], Tensor],
                reduction: str = "mean", weight: Optional[Tensor] = None,
                avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy") -> Tensor:
    r"""MPDIoU loss: 1 − IoU plus the squared distances between the top-left corners and between the
    bottom-right corners, over the image's squared diagonal.

    .. math::
        \mathcal{L} = 1 - \Big(\mathrm{IoU} - \frac{d_1^2}{W^2 + H^2} - \frac{d_2^2}{W^2 + H^2}\Big),\quad
        d_1^2 = (x_1 - x_1^{gt})^2 + (y_1 - y_1^{gt})^2,\ d_2^2 = (x_2 - x_2^{gt})^2 + (y_2 - y_2^{gt})^2

    with (W, H) the width and height of the **input image** (not of the enclosing box), so the corner term is
    comparable across boxes of one image and, for boxes inside the image, at most 2. Disjoint boxes get a
    gradient from the corner distances; identical boxes cost 0.

    {args}
        image_size ((W, H) or Tensor[..., 2]): required, keyword only. Two numbers in [1e-6, 1e18] for the whole
            batch (the compiled fast path), or a tensor of per-box image sizes broadcastable to
            ``pred.shape[:-1] + (2,)`` on the boxes' device (e.g. one row per box of a batch of images of
            different sizes; this runs the plain-PyTorch formula). A CPU tensor's values are checked against the
            same range (``ValueError``); on an accelerator and in compiled or traced graphs they are clamped to it
            instead (checking would synchronise with the device, or branch the graph on data).

    {returns}

    Reference:
        S. Ma, Y. Xu, "MPDIoU: A Loss for Efficient and Accurate Bounding Box Regression", arXiv 2023.
        https://arxiv.org/abs/2307.07662

    Example:
        >>> import torch
        >>> from boxloss import mpdiou_loss
        >>> mpdiou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]]), image_size=(4, 3))
        tensor(0.7467)
    """
    if isinstance(image_size, Tensor):
        p, t = _prepare_loss_inputs(pred, target, reduction, weight, avg_factor, eps, fmt)
        if image_size.shape[-1:] != (2,) or image_size.is_complex() or image_size.dtype == torch.bool:
            raise ValueError(f"image_size as a tensor must be real with shape (..., 2); got {image_size.dtype} "
                             f"{tuple(image_size.shape)}")
        _check_same_device("image_size", image_size, pred)
        low, high = IMAGE_SIDE_RANGE
        checked = image_size.device.type == "cpu" and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
        if checked and image_size.numel():  # free to check here; on a GPU or in a traced graph: clamped below
            smallest, largest = float(image_size.min()), float(image_size.max())
            if not (low <= smallest and largest <= high):  # (NaN fails both)
                raise ValueError(f"image_size must hold sides in [{low:g}, {high:g}]; got values from "
                                 f"{smallest!r} to {largest!r}")
        try:
            size = image_size.to(p.dtype if p.dtype == torch.float64 else torch.float32).expand(
                *p.shape[:-1], 2)
        except RuntimeError:
            raise ValueError(f"image_size of shape {tuple(image_size.shape)} does not broadcast to the boxes' "
                             f"{tuple(p.shape[:-1])} + (2,)") from None
        cd = size.dtype
        if not checked:  # checking the values would synchronise with the device (or branch a graph): clamp them
            size = size.clamp(low, high)
        loss = mpdiou_formula(tuple(p.to(cd).unbind(-1)), tuple(t.to(cd).unbind(-1)), TorchMath(eps), *size.unbind(-1))
        return _reduce(loss, reduction, weight, avg_factor, eps)
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__") or len(image_size) != 2:
        raise TypeError(f"image_size must be (width, height) or a tensor of shape (..., 2); got {image_size!r}")
    width = check_param("image_size[0] (width)", image_size[0], *IMAGE_SIDE_RANGE)
    height = check_param("image_size[1] (height)", image_size[1], *IMAGE_SIDE_RANGE)
    return variant_loss("mpdiou", (width, height), pred, target, reduction, weight, avg_factor, eps, fmt)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
register("mpdiou", mpdiou_formula, ("width", "height"))
