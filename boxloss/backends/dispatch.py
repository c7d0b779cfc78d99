"""Fast paths behind one dispatch point.

Every box function and loss calls :func:`aligned_loss` or :func:`pairwise` here; this module picks the backend
for the tensors' device and calls the matching ``boxloss`` operator (:mod:`boxloss.backends.ops`):

* CPU: the compiled C kernel (:mod:`boxloss.backends.cpu`); without a working C compiler, the PyTorch closed form
  of :mod:`boxloss.backends.closed_form` in cache-sized chunks (reported once with a :class:`FastPathWarning`).
* CUDA: the Triton kernels (:mod:`boxloss.backends.triton_kernels`) on a GPU Triton supports; else, or when a
  kernel fails to compile or launch, the PyTorch closed form (reported once per cause).
* Any other device: the PyTorch closed form.

Every backend is an implementation of the same operator, so ``torch.compile``, ``torch.export``,
``torch.jit.trace`` and ``torch.func`` see one ``boxloss::`` operator whatever runs underneath. The
plain-PyTorch reference (:mod:`boxloss.boxes`) runs instead when the fast paths are switched off
(``BOXLOSS_FAST=0`` in the environment, :func:`set_fast_path`, :func:`reference_path`). ``python -m
boxloss.info`` prints which backend each device uses and why.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Union

import torch
from torch import Tensor

from .. import kinds
from . import cpu, ops
from ._warn import FastPathWarning, warn_once

__all__ = ["aligned_loss", "pairwise", "set_fast_path", "fast_path_enabled", "reference_path", "FastPathWarning",
           "backend_for"]

_OFF = ("0", "false", "off", "no")
_enabled = os.environ.get("BOXLOSS_FAST", "1").strip().lower() not in _OFF
_broken_triton: set = set()  # CUDA device indices whose Triton kernels failed to compile or launch


def set_fast_path(enabled: bool) -> None:
    """Switch the fast paths on (default) or off (every function then runs the plain-PyTorch reference)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool; got {type(enabled).__name__}")
    _enabled = enabled


def fast_path_enabled() -> bool:
    """Whether the fast paths are on (``BOXLOSS_FAST=0`` in the environment turns them off at import)."""
    return _enabled


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Run the enclosed code on the plain-PyTorch reference path (for debugging and comparisons)."""
    global _enabled
    previous = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = previous


def _triton_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on ``device``, else why not (for the warning and ``info``)."""
    from . import triton_kernels

    return triton_kernels.unavailable_reason(device)


def backend_for(device: torch.device) -> tuple:
    """(backend name, reason) that the aligned losses use on ``device`` now (see ``python -m boxloss.info``)."""
    device = torch.device(device)
    if not _enabled:
        return "reference (plain PyTorch)", "fast paths switched off (BOXLOSS_FAST=0 or set_fast_path(False))"
    if device.type == "cpu":
        if ops.cpu_library() is not None:
            st = cpu.status()
            return "compiled C kernel", f"{st.get('reason')}: {st.get('cache_file')}"
        return "PyTorch closed form", cpu.status().get("reason", "compiled kernel switched off")
    if device.type == "cuda":
        reason = _triton_reason(device)
        if reason is None and (device.index or 0) in _broken_triton:
            reason = "a Triton kernel failed to compile or launch on this device earlier in this process"
        if reason is None:
            return "Triton", "GPU supported by the installed Triton"
        return "PyTorch closed form", reason
    return "PyTorch closed form", f"no compiled kernel for device type {device.type!r}"


@torch.compiler.assume_constant_result
def _triton_ok(index: int) -> bool:
    """Whether the Triton kernels run on CUDA device ``index`` (-1: the current one); warns once when not.
    A constant for ``torch.compile``: decided once at trace time, baked into the graph."""
    device = torch.device("cuda", torch.cuda.current_device() if index < 0 else index)
    if device.index in _broken_triton:
        return False
    reason = _triton_reason(device)
    if reason is not None and not reason.startswith("switched off"):  # BOXLOSS_TRITON=0 is a choice, not a fault
        warn_once(f"triton:{reason}", f"boxloss: the Triton kernels cannot run on {device}: {reason}. The box "
                                      f"losses use the slower PyTorch closed form there (set BOXLOSS_TRITON=0 to "
                                      f"choose that without this warning).")
    return reason is None


def _ops_for(x: Tensor):
    """(aligned op, pairwise op) for the device and dtype of ``x``; on the CPU the operator itself picks the C
    kernel or the PyTorch closed form when it runs. float64 stays off Triton, whose kernels compute in float32."""
    if (x.device.type == "cuda" and x.dtype != torch.float64
            and _triton_ok(-1 if x.device.index is None else x.device.index)):
        from . import triton_kernels

        return triton_kernels.aligned_loss_triton, triton_kernels.pairwise_score_triton
    return ops.aligned_loss_op, ops.pairwise_score_op


def _run_guarded(x: Tensor, call, triton_op, fallback_op, *args):
    """Run ``call(op, *args)`` on the Triton op, falling back (once reported) if the kernel fails in eager."""
    if triton_op is fallback_op or ops.tracing():
        return call(triton_op, *args)
    try:
        with torch.cuda.device(x.device):  # Triton launches on the current device: make it the tensor's
            return call(triton_op, *args)
    except Exception as exc:  # a compile or launch error: report it once, use the PyTorch closed form
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        _broken_triton.add(index)
        warn_once(f"triton-failed:{index}", f"boxloss: a Triton kernel failed on {x.device} "
                                            f"({type(exc).__name__}: {exc}); using the PyTorch closed form on this "
                                            f"device from now on. Please report this with `python -m boxloss.info`.")
        return call(fallback_op, *args)


def aligned_loss(kind: str, p: Tensor, t: Tensor, eps: float, reduction: str = "none",
                 weight: Optional[Tensor] = None, avg_factor: Union[None, float, Tensor] = None) -> Tensor:
    """The loss of ``kind`` for checked xyxy ``p`` and ``t`` of one shape ``(..., 4)`` and one floating dtype,
    reduced as :func:`boxloss._utils._reduce` reduces it (the weighted mean or sum computed in the kernel pass).
    """
    from .._utils import _reduce, _upcast

    if not kinds.is_registered(kind):
        raise ValueError(f"unknown loss kind {kind!r}")
    if not _enabled:
        cd = ops.compute_dtype(p.dtype)
        loss = ops.reference_aligned(kind, _upcast(p, cd), _upcast(t, cd), None, None, eps, False, 1.0)
        return _reduce(loss, reduction, weight, avg_factor, eps)
    shape = p.shape[:-1]
    p2, t2 = p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1])
    if p2.dtype == torch.bfloat16 and p2.device.type == "cuda" and not _bf16_native(p2.device):
        p2, t2 = _upcast(p2, torch.float32), _upcast(t2, torch.float32)
    # every kind has a Triton kernel on CUDA (the variants': generated from their formulas)
    op = _ops_for(p2)[0]
    tracing = ops.tracing()
    transformed = not tracing and ops.functorch_or_forward_ad_active()  # torch.func or forward-mode AD
    grad_mode = torch.is_grad_enabled()
    # forward-mode AD needs the local gradients too
    need_p = (grad_mode and p2.requires_grad) or transformed
    need_t = (grad_mode and t2.requires_grad) or transformed
    # the weighted reduction runs in the kernel pass unless weight or avg_factor need gradients, or inside a
    # torch.func transform / forward-mode AD (there the reduction stays visible to it)
    fuse = (reduction != "none" and not transformed and not (weight is not None and weight.requires_grad)
            and not (isinstance(avg_factor, Tensor) and avg_factor.requires_grad))
    if fuse:
        n = p2.shape[0]
        w = None if weight is None else weight.expand(shape).reshape(-1)
        scale, divisor = 1.0, None
        if reduction == "mean":
            if avg_factor is None and tracing:
                # a traced graph is replayed on other sizes: the count is read from the tensor at run time
                divisor = torch.ones_like(p2[:, 0]).sum()
            elif avg_factor is None:
                scale = 1.0 / max(n, 1)
            elif isinstance(avg_factor, Tensor):
                divisor = avg_factor.reshape(())
            else:
                scale = 1.0 / max(float(avg_factor), eps)
        args = (p2, t2, w, divisor, kind, float(eps), True, scale, need_p, need_t)
    else:
        args = (p2, t2, None, None, kind, float(eps), False, 1.0, need_p, need_t)
    if transformed:
        out = ops.AlignedLoss.apply(op, *args)[0]
    elif tracing:
        out = op(*args)[0]  # the operator with its registered autograd, as torch.compile/export/trace record it
    else:
        out = _run_guarded(p2, _eager_aligned, op, ops.aligned_loss_op, *args)[0]
    return out if fuse else _reduce(out.reshape(shape), reduction, weight, avg_factor, eps)


def _eager_aligned(op, *args):
    if (args[-2] or args[-1] or (args[2] is not None and args[2].requires_grad)
            or (isinstance(args[3], Tensor) and args[3].requires_grad)) and torch.is_grad_enabled():
        return (ops.EagerAligned.apply(op, *args),)
    with torch._C._AutoDispatchBelowAutograd():  # nothing to differentiate: the kernel alone
        return op(*args)


def _bf16_native(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pairwise(kind: str, b1: Tensor, b2: Tensor, eps: float) -> Tensor:
    """Scores ``(..., N, M)`` of checked xyxy ``b1`` ``(..., N, 4)`` against ``b2`` ``(..., M, 4)`` (batch
    dimensions broadcast)."""
    from .._utils import _upcast

    if not _enabled or (not ops.tracing() and ops.plain_forward_ad_active()):
        # (plain forward-mode AD: the reference is differentiated forward as it is)
        cd = ops.compute_dtype(b1.dtype)
        if kind.startswith("rotated_"):
            from ..rotated import score_reference

            return score_reference(kind, _upcast(b1, cd).unsqueeze(-2), _upcast(b2, cd).unsqueeze(-3), eps)
        from ..reference import _SCORE_KERNELS

        return _SCORE_KERNELS[kind](_upcast(b1, cd).unsqueeze(-2), _upcast(b2, cd).unsqueeze(-3), eps)[0]
    batch_shape = torch.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    n, m, cols = b1.shape[-2], b2.shape[-2], b1.shape[-1]
    size = 1
    for s in batch_shape:
        size *= s
    a = b1.expand(*batch_shape, n, cols).reshape(size, n, cols)
    b = b2.expand(*batch_shape, m, cols).reshape(size, m, cols)
    if a.dtype == torch.bfloat16 and a.device.type == "cuda" and not _bf16_native(a.device):
        a, b = _upcast(a, torch.float32), _upcast(b, torch.float32)
    _, op = _ops_for(a)
    out = _run_guarded(a, ops.call_pairwise, op, ops.pairwise_score_op, a, b, kind, eps)
    return out.reshape(*batch_shape, n, m)
