"""The boxloss operators: where every fast kernel enters PyTorch, through ``torch.library``.

Registered operators, not pointer calls from Python, are what ``torch.compile``, ``torch.export``,
``torch.jit.trace``, fake tensors and ``torch.func`` see:

``boxloss::aligned_loss(Tensor pred, Tensor target, Tensor? weight, Tensor? divisor, str kind, float eps,
bool reduce, float scale, bool need_pred, bool need_target) -> (Tensor, Tensor, Tensor)``
    ``pred`` and ``target``: ``(n, 4)`` xyxy of one floating dtype. ``reduce=False``: the per-box loss ``(n,)``
    and each box's local gradients ``d loss_i / d pred_i`` and ``d loss_i / d target_i`` ``(n, 4)``.
    ``reduce=True``: the scalar ``scale * sum_i w_i * loss_i / max(divisor, eps)`` (``w_i = 1`` without
    ``weight``, no division without ``divisor``) and the gradients of that scalar — the weighted mean or sum in
    the same pass over the boxes. Outputs are float64 for float64 input, float32 otherwise; a gradient that is
    not needed is an empty tensor. Implementation: the compiled C kernel on the CPU, else the PyTorch closed
    form of :mod:`boxloss.backends.closed_form` (any device).
``boxloss::pairwise_score(Tensor boxes1, Tensor boxes2, str kind, float eps) -> Tensor``
    ``(B, n, 4) × (B, m, 4) → (B, n, m)`` scores, written straight into the output (C kernel on the CPU, else
    the reference in row chunks).
``boxloss::aligned_loss_triton``, ``boxloss::pairwise_score_triton``
    The same schemas on CUDA through Triton (``torch.library.triton_op``, so Inductor sees the kernels);
    defined in :mod:`boxloss.backends.triton_kernels`.

Autograd, registered on every operator (what ``jit.trace``, ``torch.export`` and ``torch.compile`` use) and
repeated in an ``autograd.Function`` that eager code goes through (``torch.func`` transforms and forward-mode
AD need ``setup_context``, ``jvp`` and a vmap rule there):

* first order: the saved local gradient times the incoming one (one multiply, no graph of intermediates);
* when the backward itself is being differentiated (``create_graph=True``: ``hvp``, ``hessian``, gradient
  penalties, nested ``torch.func.grad``): the vector-Jacobian product of the reference formula at the saved
  inputs, so every higher derivative equals the reference path's (the closed form is constant in the inputs);
* forward mode (``jvp``): the saved local gradient against the tangent.

Batching rules (``vmap``) fold the vmapped dimensions into the box dimension: one kernel launch for all.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import kinds
from . import closed_form, cpu, generated

__all__ = ["aligned_loss_op", "pairwise_score_op", "call_pairwise", "EagerAligned", "AlignedLoss", "PairwiseScore"]

USE_COMPILED_CPU = True  # tests switch this off to exercise the PyTorch closed form on the CPU
CPU_CHUNK = 1 << 16  # boxes per chunk of the PyTorch closed form: its ~40 (2, c) temporaries stay in cache
PAIRWISE_CHUNK_BYTES = 1 << 24  # temporaries per row chunk of the reference pairwise fallback and backward
_PER_PAIR = {False: 12, True: 400}  # the reference's temporaries per pair, in elements (axis-aligned, rotated)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def cpu_library():
    """The compiled CPU kernel, or None (switched off, or it cannot be built: :func:`cpu.load` warns once)."""
    return cpu.load() if USE_COMPILED_CPU else None


def variant_library(kind: str = "axis"):
    """The compiled CPU kernel of the loss variants or rotated losses (C generated from their formulas) that
    holds ``kind``, or None."""
    which = kind if kind in ("axis", "rotated") else kinds.group(kind)
    return cpu.load_variants(which) if USE_COMPILED_CPU else None


def _saturate(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """A float32 gradient cast to a narrower input dtype, clamped into its finite range instead of overflowing."""
    if grad.dtype == dtype:
        return grad
    if torch.finfo(dtype).max < torch.finfo(grad.dtype).max:
        limit = torch.finfo(dtype).max
        grad = grad.clamp(-limit, limit)
    return grad.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# the references the operators stand for (for second derivatives and the fallbacks)
# ----------------------------------------------------------------------------------------------------------
def reference_aligned(kind, p, t, weight, divisor, eps, reduce, scale):
    """What ``boxloss::aligned_loss`` returns as its first output, in plain differentiable PyTorch."""
    from ..reference import KINDS as REFERENCE_KINDS
    from ..reference import _reference_loss

    cd = compute_dtype(p.dtype)
    if kind in REFERENCE_KINDS:  # the classic losses: their plain-PyTorch reference
        loss = _reference_loss(kind, p.to(cd), t.to(cd), eps)
    else:
        loss = generated.reference(kind, p.to(cd), t.to(cd), eps)
    if not reduce:
        return loss
    if weight is not None:
        loss = loss * weight.to(cd)
    total = loss.sum() * scale
    if divisor is not None:
        total = total / divisor.to(cd).reshape(()).clamp_min(eps)
    return total


def reference_pairwise(kind, a, b, eps):
    cd = compute_dtype(a.dtype)
    if kind.startswith("rotated_"):  # cxcywhr boxes: the score formula on their features
        from ..rotated import score_reference

        return score_reference(kind, a.to(cd)[:, :, None, :], b.to(cd)[:, None, :, :], eps)
    from ..reference import _SCORE_KERNELS

    return _SCORE_KERNELS[kind](a.to(cd)[:, :, None, :], b.to(cd)[:, None, :, :], eps)[0]


# ----------------------------------------------------------------------------------------------------------
# boxloss::aligned_loss
# ----------------------------------------------------------------------------------------------------------
def _aligned_fake(pred, target, weight, divisor, kind, eps, reduce, scale, need_pred, need_target):
    cd = compute_dtype(pred.dtype)
    n = pred.shape[0]
    loss = pred.new_empty((), dtype=cd) if reduce else pred.new_empty(n, dtype=cd)
    gp = pred.new_empty(n, pred.shape[1], dtype=cd) if need_pred else pred.new_empty(0, dtype=cd)
    gt = pred.new_empty(n, pred.shape[1], dtype=cd) if need_target else pred.new_empty(0, dtype=cd)
    return loss, gp, gt


def _closed_form(kind, p, t, eps, need_p, need_t):
    """The PyTorch closed form in cache-sized chunks (any device): per-box loss and local gradients."""
    n = p.shape[0]
    hand = kind in closed_form.KINDS  # the classic losses' hand-derived closed form (faster below 1e5 boxes)
    if p.device.type == "cpu":
        chunk = CPU_CHUNK
    else:  # one chunk for the hand-derived form; the generated graphs hold one value per node and box: bounded
        chunk = max(n, 1) if hand else generated.closed_form_rows(kind, p.element_size())
    step = closed_form.fused_loss_and_grad if hand else generated.closed_form_chunk
    loss = p.new_empty(n)
    grad_p = p.new_empty(n, p.shape[1]) if need_p else p.new_empty(0)
    grad_t = p.new_empty(n, p.shape[1]) if need_t else p.new_empty(0)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        value, gp, gt = step(kind, p[s:e], t[s:e], eps, need_p or need_t)
        loss[s:e] = value
        if need_p:
            grad_p[s:e] = gp
        if need_t:
            grad_t[s:e] = gt
    return loss, grad_p, grad_t


@torch.library.custom_op("boxloss::aligned_loss", mutates_args=())
def aligned_loss_op(pred: Tensor, target: Tensor, weight: Optional[Tensor], divisor: Optional[Tensor], kind: str,
                    eps: float, reduce: bool, scale: float, need_pred: bool,
                    need_target: bool) -> Tuple[Tensor, Tensor, Tensor]:
    cd = compute_dtype(pred.dtype)
    p = pred.to(cd).contiguous()
    t = target.to(cd).contiguous()
    hand = kind in cpu.HAND_WRITTEN_ALIGNED  # a hand-written C kernel overrides the generated one
    lib = (cpu_library() if hand else variant_library(kind)) if p.device.type == "cpu" else None
    if lib is not None:
        if hand:
            run = functools.partial(cpu.run, lib, kind)
        else:
            name, _, params = kinds.parse(kind)
            run = functools.partial(cpu.run_variant, lib, name, params)
        if not reduce:
            return run(p, t, eps, need_pred, need_target)
        w = None if weight is None else weight.to(cd).contiguous()
        s = scale if divisor is None else scale / max(float(divisor), eps)  # CPU: reading the divisor is free
        return run(p, t, eps, need_pred, need_target, w, s)
    loss, gp, gt = _closed_form(kind, p, t, eps, need_pred, need_target)
    if not reduce:
        return loss, gp, gt
    f = torch.full((), scale, dtype=cd, device=p.device)
    if divisor is not None:
        f = f / divisor.to(cd).reshape(()).clamp_min(eps)
    f = f * weight.to(cd) if weight is not None else f.expand(loss.shape)
    f4 = f.unsqueeze(-1)
    return (loss * f).sum(), (gp * f4 if need_pred else gp), (gt * f4 if need_target else gt)


aligned_loss_op.register_fake(_aligned_fake)


def _save_aligned(ctx, inputs, gp, gt):
    """What ``_aligned_backward`` reads: the boxes, weight and divisor, the local gradients, the options."""
    pred, target, weight, divisor, *options = inputs
    ctx.save_for_backward(pred, target, weight, divisor, gp, gt)
    ctx.args = tuple(options)  # kind, eps, reduce, scale, need_pred, need_target


def _aligned_setup_context(ctx, inputs, output):
    _, gp, gt = output
    ctx.mark_non_differentiable(gp, gt)
    _save_aligned(ctx, inputs, gp, gt)


def _aligned_backward(ctx, g, _g_gp, _g_gt, eager: bool = False):
    pred, target, weight, divisor, gp, gt = ctx.saved_tensors
    kind, eps, reduce, scale, need_pred, need_target = ctx.args
    needs = ctx.needs_input_grad
    if (torch.is_grad_enabled() or needs[2] or needs[3] or (needs[0] and not need_pred)
            or (needs[1] and not need_target)):
        # the backward is itself differentiated, weight/divisor need gradients, or a local gradient was not
        # computed in the forward (a jit.trace recorded without requires_grad): the reference's VJP at the
        # saved inputs, exact to every order
        grads = _reference_vjp(lambda p, t, w, d: reference_aligned(kind, p, t, w, d, eps, reduce, scale),
                               (pred, target, weight, divisor), needs[:4], g)
        return (*grads, None, None, None, None, None, None)
    dp, dt = _first_order(g, gp if needs[0] else None, gt if needs[1] else None, reduce, eager)
    dp = _saturate(dp, pred.dtype) if needs[0] else None
    dt = _saturate(dt, target.dtype) if needs[1] else None
    return dp, dt, None, None, None, None, None, None, None, None


def _first_order(g: Tensor, gp: Optional[Tensor], gt: Optional[Tensor], reduce: bool, eager: bool):
    """The incoming gradient times the saved local gradients. In eager code on the CPU, by the compiled kernel's
    own product (one thread below its grain: PyTorch's multiply opens a parallel region from 32,768 elements,
    which on a busy machine waits for descheduled threads); else (a traced or compiled backward: fake and
    functional tensors have no data) by ``torch.mul``. The same IEEE products either way."""
    ref = gp if gp is not None else gt
    if (eager and ref is not None and type(g) is Tensor and type(ref) is Tensor and ref.device.type == "cpu"
            and g.device.type == "cpu" and g.dtype == ref.dtype
            and (g.dim() == 0 if reduce else (g.dim() == 1 and g.shape[0] == ref.shape[0]))
            and (gp is None or gp.is_contiguous()) and (gt is None or gt.is_contiguous())):
        lib = cpu_library()
        if lib is not None:
            return cpu.run_scale(lib, g, gp, gt)
    gx = g if reduce else g.unsqueeze(-1)
    return (gx * gp if gp is not None else None), (gx * gt if gt is not None else None)


def _reference_vjp(fn, inputs, needs, g):
    """Gradients of ``fn(*inputs)`` against ``g`` for the inputs in ``needs``, as a differentiable graph."""
    idx = [i for i, x in enumerate(inputs) if x is not None and needs[i]]

    def partial(*diff):
        args = list(inputs)
        for i, x in zip(idx, diff):
            args[i] = x
        return fn(*args)

    _, vjp = torch.func.vjp(partial, *[inputs[i] for i in idx])
    got = vjp(g)
    out = [None] * len(inputs)
    for i, x in zip(idx, got):
        out[i] = x
    return out


aligned_loss_op.register_autograd(_aligned_backward, setup_context=_aligned_setup_context)


def _front(x: Optional[Tensor], dim: Optional[int], batch: int) -> Optional[Tensor]:
    if x is None:
        return None
    return x.movedim(dim, 0) if dim is not None else x.expand(batch, *x.shape)


def make_aligned_vmap(op):
    """The batching rule: fold the vmapped dimension into the box dimension, one call for all."""

    def rule(info, in_dims, pred, target, weight, divisor, kind, eps, reduce, scale, need_pred, need_target):
        b = info.batch_size
        p = _front(pred, in_dims[0], b)
        t = _front(target, in_dims[1], b)
        n, cols = p.shape[1], p.shape[-1]
        loss, gp, gt = op(p.reshape(-1, cols), t.reshape(-1, cols), None, None, kind, eps, False, 1.0, need_pred,
                          need_target)
        loss = loss.reshape(b, n)
        gp = gp.reshape(b, n, cols) if need_pred else gp.new_empty(b, 0)
        gt = gt.reshape(b, n, cols) if need_target else gt.new_empty(b, 0)
        if reduce:
            f = torch.full((b, n), scale, dtype=loss.dtype, device=loss.device)
            if weight is not None:
                f = f * _front(weight, in_dims[2], b).to(loss.dtype)
            if divisor is not None:
                f = f / _front(divisor, in_dims[3], b).reshape(b, 1).to(loss.dtype).clamp_min(eps)
            loss = (loss * f).sum(1)
            gp = gp * f.unsqueeze(-1) if need_pred else gp
            gt = gt * f.unsqueeze(-1) if need_target else gt
        return (loss, gp, gt), (0, 0, 0)

    return rule


aligned_loss_op.register_vmap(make_aligned_vmap(aligned_loss_op))


class EagerAligned(torch.autograd.Function):
    """The eager entry outside ``torch.func``: the operator called below autograd and the same backward as its
    registered autograd (``_aligned_backward``), without the generic per-call bookkeeping of
    ``register_autograd`` (about 0.1 ms per call, which is most of the cost of a loss on 1,000 boxes). Only the
    loss is an output: returning the local gradients as (non-differentiable) outputs as well costs one more
    ``(n, 4)`` buffer at the backward's peak (measured: 45.6 against 30.3 MiB at 1M boxes)."""

    @staticmethod
    def forward(ctx, op, pred, target, weight, divisor, kind, eps, reduce, scale, need_pred, need_target):
        inputs = (pred, target, weight, divisor, kind, eps, reduce, scale, need_pred, need_target)
        with torch._C._AutoDispatchBelowAutograd():
            loss, gp, gt = op(*inputs)
        _save_aligned(ctx, inputs, gp, gt)
        return loss

    @staticmethod
    def backward(ctx, g):
        return (None, *_aligned_backward(_NeedsShim(ctx, ctx.needs_input_grad[1:]), g, None, None, eager=True))


class AlignedLoss(torch.autograd.Function):
    """Eager entry to an aligned-loss operator, with what ``torch.func`` and forward-mode AD need."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, pred, target, weight, divisor, kind, eps, reduce, scale, need_pred, need_target):
        return op(pred, target, weight, divisor, kind, eps, reduce, scale, need_pred, need_target)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _aligned_setup_context(ctx, inputs[1:], output)
        ctx.save_for_forward(output[1], output[2])

    @staticmethod
    def backward(ctx, g, g_gp, g_gt):
        return (None, *_aligned_backward(_NeedsShim(ctx, ctx.needs_input_grad[1:]), g, g_gp, g_gt))

    @staticmethod
    def jvp(ctx, _op, d_pred, d_target, d_weight, d_divisor, *_):
        if d_weight is not None or d_divisor is not None:
            raise NotImplementedError("boxloss: forward-mode AD with respect to weight or avg_factor is not "
                                      "supported on the fast path; run it under boxloss.backends.reference_path()")
        gp, gt = ctx.saved_tensors
        reduce = ctx.args[2]
        out = None
        for d, g in ((d_pred, gp), (d_target, gt)):
            if d is None:
                continue
            term = g * d.to(g.dtype)
            term = term.sum() if reduce else term.sum(-1)
            out = term if out is None else out + term
        return out, None, None


class _NeedsShim:
    """A ctx view whose ``needs_input_grad`` skips the operator argument of the eager Functions."""

    def __init__(self, ctx, needs):
        self._ctx = ctx
        self.needs_input_grad = needs

    def __getattr__(self, name):
        return getattr(self._ctx, name)


# ----------------------------------------------------------------------------------------------------------
# boxloss::pairwise_score
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("boxloss::pairwise_score", mutates_args=())
def pairwise_score_op(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    cd = compute_dtype(boxes1.dtype)
    a = boxes1.to(cd).contiguous()
    b = boxes2.to(cd).contiguous()
    rotated = kind.startswith("rotated_")
    lib = (variant_library("rotated") if rotated else cpu_library()) if a.device.type == "cpu" else None
    if lib is not None:
        if rotated:
            from ..rotated import box_features

            # the second set column-major: the kernel's inner loop reads it contiguously
            return cpu.run_generated_pairwise(lib, generated.pairwise_symbol(kind), box_features(a).contiguous(),
                                              box_features(b).transpose(1, 2).contiguous(), eps)
        return cpu.run_pairwise(lib, kind, a, b, eps)
    batch, n, m = a.shape[0], a.shape[1], b.shape[1]
    out = a.new_empty(batch, n, m)
    rows = max(1, PAIRWISE_CHUNK_BYTES // max(1, _PER_PAIR[rotated] * m * a.element_size()))
    for s in range(0, n, rows):
        out[:, s:s + rows] = reference_pairwise(kind, a[:, s:s + rows], b, eps)
    return out


@pairwise_score_op.register_fake
def _pairwise_fake(boxes1, boxes2, kind, eps):
    return boxes1.new_empty(boxes1.shape[0], boxes1.shape[1], boxes2.shape[1], dtype=compute_dtype(boxes1.dtype))


def _pairwise_setup_context(ctx, inputs, output):
    boxes1, boxes2, kind, eps = inputs
    ctx.save_for_backward(boxes1, boxes2)
    ctx.args = (kind, eps)


def _pairwise_backward(ctx, g):
    # no closed form is kept for N×M pairs: the reference recomputed at the saved boxes (its temporaries live
    # only during this backward), differentiable again under create_graph
    a, b = ctx.saved_tensors
    kind, eps = ctx.args
    needs = ctx.needs_input_grad
    fn = lambda x, y: reference_pairwise(kind, x, y, eps)  # noqa: E731
    # in row chunks that bound the reference's temporaries (a rotated pair holds ~400 of them)
    rows = max(1, PAIRWISE_CHUNK_BYTES // max(1, _PER_PAIR[kind.startswith("rotated_")] * b.shape[1]
                                               * a.element_size()))
    if rows >= a.shape[1]:
        da, db = _reference_vjp(fn, (a, b), needs[:2], g)
    else:
        das, db = [], None
        for s in range(0, a.shape[1], rows):
            da_s, db_s = _reference_vjp(fn, (a[:, s:s + rows], b), needs[:2], g[:, s:s + rows])
            das.append(da_s)
            if db_s is not None:
                db = db_s if db is None else db + db_s
        da = torch.cat(das, 1) if needs[0] else None
    return (_saturate(da, a.dtype) if da is not None else None,
            _saturate(db, b.dtype) if db is not None else None, None, None)


pairwise_score_op.register_autograd(_pairwise_backward, setup_context=_pairwise_setup_context)


def make_pairwise_vmap(op):
    def rule(info, in_dims, boxes1, boxes2, kind, eps):
        bsz = info.batch_size
        a = _front(boxes1, in_dims[0], bsz)
        b = _front(boxes2, in_dims[1], bsz)
        inner, n, m = a.shape[1], a.shape[2], b.shape[2]
        out = op(a.reshape(bsz * inner, n, a.shape[-1]), b.reshape(bsz * inner, m, b.shape[-1]), kind, eps)
        return out.reshape(bsz, inner, n, m), 0

    return rule


pairwise_score_op.register_vmap(make_pairwise_vmap(pairwise_score_op))


class PairwiseScore(torch.autograd.Function):
    """Eager entry to a pairwise-score operator, with what ``torch.func`` and forward-mode AD need."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, boxes1, boxes2, kind, eps):
        return op(boxes1, boxes2, kind, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _pairwise_setup_context(ctx, inputs[1:], output)
        ctx.save_for_forward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, g):
        return (None, *_pairwise_backward(_NeedsShim(ctx, ctx.needs_input_grad[1:]), g))

    @staticmethod
    def jvp(ctx, _op, d1, d2, *_):
        a, b = ctx.saved_tensors
        kind, eps = ctx.args
        primals = (a, b)
        tangents = tuple(torch.zeros_like(x) if d is None else d for x, d in zip(primals, (d1, d2)))
        return torch.func.jvp(lambda x, y: reference_pairwise(kind, x, y, eps), primals, tangents)[1]


def functorch_or_forward_ad_active() -> bool:
    """Inside a ``torch.func`` transform or a forward-mode AD level (eager code must take the Functions)."""
    try:
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return True
        from torch.autograd import forward_ad

        return forward_ad._current_level >= 0
    except AttributeError:  # a torch without these internals: be safe
        return True


def plain_forward_ad_active() -> bool:
    """Inside a ``torch.autograd.forward_ad.dual_level`` and no ``torch.func`` transform."""
    try:
        from torch.autograd import forward_ad

        return forward_ad._current_level >= 0 and torch._C._functorch.peek_interpreter_stack() is None
    except AttributeError:
        return False


def tracing() -> bool:
    """Under ``torch.compile``/``torch.export`` or ``torch.jit.trace``: call the operators themselves."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def call_pairwise(op, a, b, kind, eps):
    if tracing() or not functorch_or_forward_ad_active():
        return op(a, b, kind, float(eps))
    return PairwiseScore.apply(op, a, b, kind, float(eps))


