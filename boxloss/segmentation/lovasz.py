"""Lovász-Softmax and Lovász hinge: the convex Lovász extension of the Jaccard loss (Berman et al., 2018)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .soft_iou import _check_labels, _check_logits, _prod

__all__ = ["lovasz_softmax_loss", "lovasz_hinge_loss"]


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Increments of the Jaccard loss along pixels sorted by decreasing error (Berman et al., Alg. 1).

    ``fg_sorted``: ``(..., P)`` 0/1 foreground indicators in the sorted order. Entry i is
    Δ({π1..πi}) − Δ({π1..πi−1}) with Δ(M) = |M| / |fg ∪ M| for the mispredicted set M.
    """
    total = fg_sorted.sum(-1, keepdim=True)
    intersection = total - fg_sorted.cumsum(-1)
    union = total + (1 - fg_sorted).cumsum(-1)
    jaccard = 1 - intersection / union.clamp_min(1)
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _lovasz_extension(errors: Tensor, fg: Tensor) -> Tensor:
    """Σ_i e_(i) g_i over the last dimension: errors sorted in decreasing order, g from ``_lovasz_grad``.

    Pixels to ignore must come in with error 0 and fg 0: they sort last (or tie with zero errors), where
    they multiply nothing, so the result equals the loss over the valid pixels alone.
    """
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    return (errors_sorted * _lovasz_grad(fg.gather(-1, order))).sum(-1)


def _flatten_valid(target: Tensor, ignore_index: Optional[int]) -> Tensor:
    return torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index


def lovasz_softmax_loss(logits: Tensor, target: Tensor, *, classes: Union[str, Sequence[int]] = "present",
                        per_image: bool = False, ignore_index: Optional[int] = None) -> Tensor:
    r"""Lovász-Softmax loss: a convex surrogate of the multiclass Jaccard loss, optimised directly.

    For each class :math:`c`, with errors :math:`m_i = |[y_i = c] - p_{i,c}|` of the softmax probabilities,
    the Lovász extension of :math:`\Delta_{J_c}(M) = |M| / |\{y = c\} \cup M|`:

    .. math::
        \overline{\Delta}_{J_c}(m) = \sum_i m_{\pi(i)}\,
            \big(\Delta_{J_c}(\{\pi_1, \dots, \pi_i\}) - \Delta_{J_c}(\{\pi_1, \dots, \pi_{i-1}\})\big)

    with :math:`\pi` sorting the errors in decreasing order; averaged over ``classes`` (and over images with
    ``per_image=True``). On 0/1 errors it equals 1 − IoU of the discrete prediction.

    Args:
        logits (Tensor[N, C, ...]): unnormalised scores; any number of spatial dimensions. float16/bfloat16
            are computed in float32.
        target (Tensor[N, ...]): integer class indices.
        classes (str or sequence of int): ``"present"`` (default): the classes present in the target (per
            image with ``per_image``); ``"all"``; or a list of class indices.
        per_image (bool): the loss per image, then averaged. Default: ``False`` (one loss over the batch).
        ignore_index (int, optional): pixels whose target equals it are left out.

    Returns:
        Tensor: a float32 scalar (float64 for float64 logits). 0 when no class is selected, and for an empty
        batch (attached to the graph).

    Raises:
        TypeError: non-tensor or integer logits, or a target of the wrong dtype.
        ValueError: a target of the wrong shape, an unknown ``classes`` value, out-of-range ``classes`` indices,
            or target labels outside [0, C) that are not ``ignore_index`` (as ``F.cross_entropy``; one
            synchronisation on CUDA).

    Reference:
        Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for the optimization of
        the intersection-over-union measure in neural networks", CVPR 2018. https://arxiv.org/abs/1705.08790

    Example:
        >>> import torch
        >>> from boxloss.segmentation import lovasz_softmax_loss
        >>> logits = torch.tensor([[[[9., -9.]], [[-9., 9.]]]])  # (N=1, C=2, H=1, W=2), confident and right
        >>> target = torch.tensor([[[0, 1]]])
        >>> float(lovasz_softmax_loss(logits, target)) < 1e-6
        True
    """
    _check_logits(logits)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, C, ...); got {tuple(logits.shape)}")
    if not isinstance(target, Tensor) or target.shape != logits.shape[:1] + logits.shape[2:]:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must have shape (N, ...) = {tuple(logits.shape[:1] + logits.shape[2:])}; got {got}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices; got {target.dtype}")
    n, c = logits.shape[:2]
    _check_labels(target, c, ignore_index)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    size = _prod(target.shape[1:])
    probs = logits.to(dtype).softmax(1).reshape(n, c, size)
    labels = target.reshape(n, size)
    valid = _flatten_valid(labels, ignore_index).unsqueeze(1).to(dtype)  # (N, 1, P)
    fg = (labels.unsqueeze(1) == torch.arange(c, device=labels.device).view(1, c, 1)).to(dtype) * valid
    errors = (fg - probs).abs() * valid
    if not per_image:  # one sequence over the whole batch: (1, C, N·P)
        fg = fg.permute(1, 0, 2).reshape(1, c, n * size)
        errors = errors.permute(1, 0, 2).reshape(1, c, n * size)
    loss = _lovasz_extension(errors, fg)  # (N or 1, C)
    if classes == "present":
        selected = (fg.sum(-1) > 0).to(dtype)
    elif classes == "all":
        selected = torch.ones_like(loss)
    elif isinstance(classes, (list, tuple)) and all(isinstance(k, int) and 0 <= k < c for k in classes):
        selected = torch.zeros(c, dtype=dtype, device=loss.device)
        selected[list(classes)] = 1
        selected = selected.expand_as(loss)
    else:
        raise ValueError(f"classes must be 'present', 'all' or a list of class indices in [0, {c}); got {classes!r}")
    # per image: mean over the selected classes of each image, then over images with at least one
    per_row = (loss * selected).sum(-1) / selected.sum(-1).clamp_min(1)
    has_any = (selected.sum(-1) > 0).to(dtype)
    return (per_row * has_any).sum() / has_any.sum().clamp_min(1)


def lovasz_hinge_loss(logits: Tensor, target: Tensor, *, per_image: bool = False,
                      ignore_index: Optional[int] = None) -> Tensor:
    r"""Lovász hinge loss: the binary Jaccard loss's Lovász extension applied to hinge errors.

    With signs :math:`s_i = 2y_i - 1` and hinge errors :math:`m_i = \max(0, 1 - s_i\,x_i)` of the logits
    :math:`x`, the loss is :math:`\overline{\Delta}_{J_1}(m)` (see :func:`lovasz_softmax_loss`) for the
    foreground class.

    Args:
        logits (Tensor[N, ...] or Tensor[N, 1, ...]): foreground logits; float16/bfloat16 computed in float32.
        target (Tensor): the same shape (or ``(N, ...)`` for ``(N, 1, ...)`` logits), 0/1 labels; values equal
            to ``ignore_index`` are left out.
        per_image (bool): the loss per image, then averaged. Default: ``False``.
        ignore_index (int, optional): label value to leave out.

    Returns:
        Tensor: a float32 scalar (float64 for float64 logits); 0, attached to the graph, for an empty batch.

    Reference:
        Berman, Rannen Triki, Blaschko, CVPR 2018. https://arxiv.org/abs/1705.08790

    Example:
        >>> import torch
        >>> from boxloss.segmentation import lovasz_hinge_loss
        >>> lovasz_hinge_loss(torch.tensor([[3., -3.]]), torch.tensor([[1, 0]]))  # every margin above 1
        tensor(0.)
    """
    _check_logits(logits)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor; got {type(target).__name__}")
    if target.shape != logits.shape and not (logits.dim() >= 2 and logits.shape[1] == 1
                                             and target.shape == logits.shape[:1] + logits.shape[2:]):
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}; got {tuple(target.shape)}")
    n = logits.shape[0] if logits.dim() > 0 else 1
    size = _prod(logits.shape[1:]) if logits.dim() > 0 else 1
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(dtype).reshape(n, size)
    labels = target.reshape(n, size)
    valid = _flatten_valid(labels, ignore_index).to(dtype)
    fg = (labels == 1).to(dtype) * valid
    errors = (1 - x * (2 * fg - 1)).clamp_min(0) * valid
    if not per_image:
        errors, fg = errors.reshape(1, n * size), fg.reshape(1, n * size)
    return _lovasz_extension(errors, fg).mean()
