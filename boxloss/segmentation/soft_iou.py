"""Soft IoU (Jaccard) loss for masks: 1 − J or −ln J per class, with class weights and ignored pixels."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import REDUCTIONS, _check_choice, _check_eps

__all__ = ["soft_iou_loss"]

MODES = ("binary", "multiclass", "multilabel")


def _check_logits(input: object) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating tensor of logits or probabilities; got {input.dtype}")


def _check_labels(labels: Tensor, classes: int, ignore_index: Optional[int]) -> None:
    """Class indices in [0, classes), except ``ignore_index``: a label out of range is an error, as in
    ``F.cross_entropy`` (255 is not silently the last class, −1 not class 0). On CUDA this reads two numbers
    back (one synchronisation per call)."""
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= classes:
        hint = "" if ignore_index is not None else " (pass ignore_index= for a label that marks pixels to skip)"
        raise ValueError(f"target class indices must be in [0, {classes - 1}]"
                         + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
                         + f"; got values from {lo} to {hi}{hint}")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _probabilities_and_targets(input: Tensor, target: Tensor, mode: str, from_logits: bool,
                               ignore_index: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """(p, y, valid), each ``(N, C, P)`` float32+ with P the flattened spatial size; ignored pixels are 0 in all."""
    _check_logits(input)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor; got {type(target).__name__}")
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(dtype)  # half and bfloat16 logits: softmax/sigmoid and the sums in float32
    if mode == "multiclass":
        if input.dim() < 2:
            raise ValueError(f"input must have shape (N, C, ...) in multiclass mode; got {tuple(input.shape)}")
        if target.shape != input.shape[:1] + input.shape[2:]:
            raise ValueError(f"target must have shape (N, ...) = {tuple(input.shape[:1] + input.shape[2:])} "
                             f"in multiclass mode; got {tuple(target.shape)}")
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices in multiclass mode; got {target.dtype}")
        n, c = x.shape[:2]
        p = x.softmax(1) if from_logits else x
        _check_labels(target, c, ignore_index)
        labels = target.reshape(n, 1, _prod(target.shape[1:]))
        valid = torch.ones_like(labels, dtype=dtype) if ignore_index is None else (labels != ignore_index).to(dtype)
        # ignored (or out-of-range) labels one-hot to nothing: clamp them into range, then zero them with `valid`
        y = F.one_hot(labels.squeeze(1).clamp(0, c - 1), c).permute(0, 2, 1).to(dtype) * valid
        return p.reshape(n, c, labels.shape[-1]) * valid, y, valid
    if target.shape != input.shape:
        if not (mode == "binary" and input.dim() >= 2 and input.shape[1] == 1
                and target.shape == input.shape[:1] + input.shape[2:]):
            raise ValueError(f"target must have the shape of input {tuple(input.shape)} in {mode} mode; "
                             f"got {tuple(target.shape)}")
    if mode == "multilabel" and input.dim() < 2:
        raise ValueError(f"input must have shape (N, C, ...) in multilabel mode; got {tuple(input.shape)}")
    if mode == "binary" and not (input.dim() >= 2 and input.shape[1] == 1):
        x = x.reshape(x.shape[0], 1, _prod(x.shape[1:]))  # (N, ...) without a channel dimension
    n, c = x.shape[0], x.shape[1]
    size = _prod(x.shape[2:])
    p = (x.sigmoid() if from_logits else x).reshape(n, c, size)
    t = target.reshape(n, c, size)
    valid = torch.ones_like(p) if ignore_index is None else (t != ignore_index).to(dtype)
    y = t.to(dtype) * valid
    return p * valid, y, valid


def soft_iou_loss(input: Tensor, target: Tensor, *, mode: str = "binary", from_logits: bool = True,
                  log: bool = False, smooth: float = 0.0, eps: float = 1e-7,
                  class_weights: Union[None, Tensor, Sequence[float]] = None, ignore_index: Optional[int] = None,
                  per_image: bool = False, reduction: str = "mean") -> Tensor:
    r"""Soft IoU (Jaccard) loss for segmentation masks.

    Per class :math:`c`, with probabilities :math:`p` and targets :math:`y` summed over the batch and spatial
    dimensions (over the spatial dimensions only, per image, with ``per_image=True``):

    .. math::
        I_c = \sum p\,y, \qquad U_c = \sum p + \sum y - I_c, \qquad
        J_c = \max\Big(\frac{I_c + s}{U_c + s}, \epsilon\Big), \qquad
        \mathcal{L}_c = 1 - J_c \ \text{or, with } \texttt{log=True},\ -\ln J_c

    It is differentiable everywhere (probabilities, not an ``argmax``, enter the sums).

    Args:
        input (Tensor): ``"binary"``: logits ``(N, 1, ...)`` or ``(N, ...)``; ``"multiclass"``: logits
            ``(N, C, ...)`` (softmax over C); ``"multilabel"``: logits ``(N, C, ...)`` (sigmoid). Any number of
            spatial dimensions. Probabilities instead with ``from_logits=False``. float16/bfloat16 are computed
            in float32.
        target (Tensor): ``"binary"``: same shape as ``input``, values in [0, 1]; ``"multiclass"``: ``(N, ...)``
            integer class indices; ``"multilabel"``: ``(N, C, ...)`` in [0, 1].
        mode (str): ``"binary"`` (default), ``"multiclass"`` or ``"multilabel"``.
        from_logits (bool): apply sigmoid/softmax to ``input``. Default: ``True``.
        log (bool): −ln J instead of 1 − J (the weighted −ln IoU loss). Default: ``False``.
        smooth (float): :math:`s`, added to numerator and denominator. Default: 0.
        eps (float): lower clamp of :math:`J`, which keeps −ln J finite. Default: ``1e-7``.
        class_weights (Tensor or sequence of C floats, optional): weights of the class losses in ``"mean"``. In
            binary mode a length of 2 means (background, foreground): the complement 1 − p against 1 − y is
            scored as a second class.
        ignore_index (int, optional): pixels whose target equals it are left out of every sum.
        per_image (bool): compute J per image and class, then average over images. Default: ``False``.
        reduction (str): ``"none"``: one loss per class, shape ``(C,)`` (``(N, C)`` with ``per_image``);
            ``"mean"`` (default): the class losses averaged, weighted by ``class_weights``; ``"sum"``: summed.

    Returns:
        Tensor: float32 (float64 for float64 input).

    Raises:
        TypeError: non-tensor inputs, integer logits, floating targets in multiclass mode.
        ValueError: unknown ``mode`` or ``reduction``, a target of the wrong shape, multiclass labels outside
            [0, C) that are not ``ignore_index`` (checked as ``F.cross_entropy`` does; one synchronisation on
            CUDA), ``class_weights`` of the wrong length, a non-positive ``eps`` or a negative ``smooth``.

    Edge cases: a class with no target pixels (in the summed region) has :math:`I_c = 0`, so with
    ``smooth=0`` its J is 0 whatever the prediction, with zero gradient; such classes are left out of
    ``"mean"`` and ``"sum"`` (their ``"none"`` entry is still given), as segmentation_models_pytorch does. With
    ``smooth > 0`` use ``reduction="none"`` to weigh them yourself. An input where every class is absent gives 0,
    and so does an empty batch ``(0, C, ...)`` (attached to the graph, with zero gradients).

    Reference:
        Rahman & Wang, "Optimizing Intersection-Over-Union in Deep Neural Networks for Image Segmentation",
        ISVC 2016; Yu et al., "UnitBox", ACM MM 2016 (−ln IoU).

    Example:
        >>> import torch
        >>> from boxloss.segmentation import soft_iou_loss
        >>> probs = torch.tensor([[[0.9, 0.8, 0.1, 0.0]]])
        >>> target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
        >>> soft_iou_loss(probs, target, from_logits=False)  # I = 1.7, U = 1.8 + 2 - 1.7 = 2.1
        tensor(0.1905)
    """
    _check_choice("mode", mode, MODES)
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_eps(eps)
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or smooth < 0:
        raise ValueError(f"smooth must be a non-negative number; got {smooth!r}")
    p, y, valid = _probabilities_and_targets(input, target, mode, from_logits, ignore_index)
    if mode == "binary" and class_weights is not None and len(class_weights) == 2:
        # (background, foreground): score the complement as a second class, ignored pixels staying out
        p = torch.cat([(1 - p) * valid, p], dim=1)
        y = torch.cat([(1 - y) * valid, y], dim=1)
    n_classes = p.shape[1]
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=p.dtype, device=p.device)
        if weights.shape != (n_classes,):
            expected = "1 or 2 (background, foreground)" if mode == "binary" else str(n_classes)
            raise ValueError(f"class_weights must have length {expected}; got shape {tuple(weights.shape)}")

    dims = (2,) if per_image else (0, 2)
    inter = (p * y).sum(dims)
    total_y = y.sum(dims)
    union = p.sum(dims) + total_y - inter
    jaccard = ((inter + smooth) / (union + smooth).clamp_min(eps)).clamp_min(eps)
    loss = -jaccard.log() if log else 1 - jaccard  # (C,) or (N, C)
    if reduction == "none":
        return loss
    present = (total_y > 0).to(loss.dtype)  # absent classes carry no signal with smooth=0: leave them out
    w = present if weights is None else present * weights
    if reduction == "sum":
        return (loss * w).sum()
    return (loss * w).sum() / w.sum().clamp_min(eps)
