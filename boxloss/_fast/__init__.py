"""Fast paths behind one dispatch point.

* :func:`aligned_loss`: the aligned losses as one autograd node with a closed-form local gradient computed in
  the same pass as the value, saving one ``(n, 4)`` gradient per input that needs one instead of a graph of
  intermediates. On the CPU the compiled C kernel (:mod:`boxloss._fast.cpu`, ``aligned.c``), else the PyTorch
  closed form (:mod:`boxloss._fast.fused`) in cache-sized chunks; on CUDA (float32) one Triton kernel
  (:mod:`boxloss._fast.triton_kernels`), else the PyTorch closed form.
* :func:`pairwise`: pairwise scores without gradient (matching, evaluation) written straight into the output,
  never materialising ``N×M×2`` temporaries: the compiled C kernel on the CPU, Triton on CUDA, else the
  reference in row chunks of bounded size.
* The reference (plain PyTorch, :mod:`boxloss.boxes`) is used when the fast path is switched off
  (``BOXLOSS_FAST=0`` in the environment, or :func:`set_fast_path`), and under ``torch.compile``, where
  Inductor fuses the plain formula itself.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import cpu
from .fused import KINDS, fused_loss_and_grad  # noqa: F401  (re-exported for tests)

__all__ = ["aligned_loss", "pairwise", "set_fast_path", "fast_path_enabled", "reference_path"]

_enabled = os.environ.get("BOXLOSS_FAST", "1").strip().lower() not in ("0", "false", "off", "no")

# Boxes per chunk of the CPU path: ~40 live (2, c) temporaries of 4–8 bytes stay within a few MiB of cache,
# and each op still spans two 32K-element grains for the intra-op thread pool.
CPU_CHUNK = 1 << 16
# the compiled C kernel on the CPU (BOXLOSS_CPU_KERNEL=0 keeps the chunked PyTorch closed form instead)
_use_compiled_cpu = os.environ.get("BOXLOSS_CPU_KERNEL", "1").strip().lower() not in ("0", "false", "off", "no")


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


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def _loss_and_local_grads(kind: str, p: Tensor, t: Tensor, eps: float, need_p: bool, need_t: bool):
    """Per-box loss and d loss / d p, d loss / d t (or None) from the fastest backend for ``p``'s device."""
    if p.device.type == "cuda" and p.dtype == torch.float32 and _triton_available(p.device):
        from . import triton_kernels

        return triton_kernels.aligned_loss_and_grad(kind, p.contiguous(), t.contiguous(), eps, need_p, need_t)
    if p.device.type == "cpu" and _use_compiled_cpu:
        lib = cpu.load()
        if lib is not None:
            return cpu.run(lib, kind, p.contiguous(), t.contiguous(), eps, need_p, need_t)
    n = p.shape[0]
    loss = p.new_empty(n)
    grad_p = p.new_empty(n, 4) if need_p else None
    grad_t = p.new_empty(n, 4) if need_t else None
    chunk = CPU_CHUNK if p.device.type == "cpu" else max(n, 1)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        value, gp, gt = fused_loss_and_grad(kind, p[s:e], t[s:e], eps, need_p or need_t)
        loss[s:e] = value
        if need_p:
            grad_p[s:e] = gp
        if need_t:
            grad_t[s:e] = gt
    return loss, grad_p, grad_t


class _FusedAlignedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: Tensor, t: Tensor, kind: str, eps: float) -> Tensor:
        loss, grad_p, grad_t = _loss_and_local_grads(kind, p, t, eps, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(grad_p, grad_t)
        return loss

    @staticmethod
    @once_differentiable  # the saved local gradient is a constant: a second derivative must fail loudly
    def backward(ctx, grad_loss: Tensor):
        grad_p, grad_t = ctx.saved_tensors
        g = grad_loss.unsqueeze(-1)
        return (g * grad_p if grad_p is not None else None, g * grad_t if grad_t is not None else None, None, None)


def _triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    from . import triton_kernels

    return triton_kernels.available()


def aligned_loss(kind: str, p: Tensor, t: Tensor, eps: float) -> Optional[Tensor]:
    """Per-box loss of ``kind`` for xyxy ``p`` and ``t`` of one shape ``(..., 4)``, or ``None`` when the
    reference path must run (fast path off, or under ``torch.compile``)."""
    if not _enabled or _is_compiling():
        return None
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}")
    shape = p.shape[:-1]
    p2 = p.reshape(-1, 4)
    t2 = t.reshape(-1, 4)
    return _FusedAlignedLoss.apply(p2, t2, kind, eps).reshape(shape)


# Bytes of temporaries per row chunk of the chunked pairwise fallback (the reference kernels keep ~12 live
# N×M tensors).
PAIRWISE_CHUNK_BYTES = 1 << 24


def pairwise(kind: str, b1: Tensor, b2: Tensor, eps: float, kernel) -> Optional[Tensor]:
    """Scores ``(..., N, M)`` of xyxy ``b1`` ``(..., N, 4)`` against ``b2`` ``(..., M, 4)`` when no gradient is
    needed, or ``None`` (the caller runs the reference). ``kernel`` is the reference kernel, for the fallback."""
    if not _enabled or _is_compiling():
        return None
    if torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad):
        return None
    batch_shape = torch.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    n, m = b1.shape[-2], b2.shape[-2]
    size = math.prod(batch_shape)
    a = b1.expand(*batch_shape, n, 4).reshape(size, n, 4)
    b = b2.expand(*batch_shape, m, 4).reshape(size, m, 4)
    if a.device.type == "cpu" and _use_compiled_cpu:
        lib = cpu.load()
        if lib is not None:
            return cpu.run_pairwise(lib, kind, a.contiguous(), b.contiguous(), eps).reshape(*batch_shape, n, m)
    if a.dtype == torch.float32 and _triton_available(a.device):
        from . import triton_kernels

        return triton_kernels.pairwise(kind, a.contiguous(), b.contiguous(), eps).reshape(*batch_shape, n, m)
    out = a.new_empty(a.shape[0], n, m)
    rows = max(1, PAIRWISE_CHUNK_BYTES // max(1, 12 * m * a.element_size()))
    for s in range(0, n, rows):
        out[:, s:s + rows] = kernel(a[:, s:s + rows, None, :], b[:, None, :, :], eps)[0]
    return out.reshape(*batch_shape, n, m)
