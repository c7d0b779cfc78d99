"""The kernels generated from the registered formulas (:mod:`boxloss.kinds`: the classic losses, the variants, the
rotated and Gaussian losses). Each formula becomes

* the reference: the formula evaluated on tensors and differentiated by autograd (:func:`reference`);
* a compiled CPU kernel: C generated from the formula's expression graph, forward and reverse-mode gradient in
  one pass with the weighted reduction (:func:`c_source`, built and cached by :mod:`boxloss.backends.cpu`);
* a PyTorch closed form for other devices and for CPUs without a compiler: the same expression graph and the
  same derivative rules evaluated with tensor operations in cache-sized chunks (:func:`closed_form_chunk`).

A formula enters the ``boxloss::aligned_loss`` operator (and so ``torch.compile``, ``torch.func``, ...) under a
kind string ``"name|param|param"`` (:func:`boxloss.kinds.kind_of`); the parameters are runtime arguments of the kernel.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from .. import expr
from ..kinds import GROUPS, VARIANTS, parse


def symbol(name: str) -> str:
    return "boxloss_v_" + name


def reference(kind: str, p: Tensor, t: Tensor, eps: float) -> Tensor:
    """The per-box loss from the formula on tensors (differentiable by autograd and torch.func)."""
    _, entry, params = parse(kind)
    m = expr.TorchMath(eps, torch.finfo(p.dtype).eps)
    return entry.formula(tuple(p.unbind(-1)), tuple(t.unbind(-1)), m, *params)


# ----------------------------------------------------------------------------------------------------------
# the compiled CPU kernels
# ----------------------------------------------------------------------------------------------------------
def _members(which: str) -> List[str]:
    """The kinds of one group, sorted: the generated source does not depend on the order of registration."""
    return sorted(name for name, entry in VARIANTS.items() if GROUPS[entry.columns] == which)


@functools.lru_cache(maxsize=2)
def c_source(which: str = "axis") -> str:
    """The generated C of one group: its aligned kernels and, for ``"rotated"``, the pairwise scores."""
    reg = VARIANTS
    kernels = [(symbol(name), reg[name].formula, len(reg[name].params)) for name in _members(which)]
    pairwise, extra = [], ""
    if which == "rotated":
        from .. import rotated

        pairwise = [(pairwise_symbol(kind), fn, rotated.FEATURES)
                    for kind, fn in rotated.PAIRWISE_SCORES.items() if kind not in HAND_WRITTEN]
        with open(HAND_WRITTEN_SOURCE) as f:
            extra = f.read()
    # the rotated formulas propagate NaN themselves (rotated._nan_guard): their min/max need no NaN test
    return expr.generate_library(kernels, runtime=c_runtime(), columns=4 if which == "axis" else 5,
                                 pairwise=pairwise, nan_minmax=which == "axis", extra=extra)


# the C every kernel library shares (classic.c includes it; the generated libraries start with its text)
C_RUNTIME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bl_runtime.h")
C_RUNTIME_INCLUDE = '#include "bl_runtime.h"'


def c_runtime() -> str:
    with open(C_RUNTIME) as f:
        return f.read()


# pairwise kernels written by hand (branches that skip what cannot contribute), tested against their formula
HAND_WRITTEN = {"rotated_iou": "boxloss_rotated_iou_pairwise"}
HAND_WRITTEN_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rotated_iou.c")


def pairwise_symbol(kind: str) -> str:
    return HAND_WRITTEN.get(kind, "boxloss_pw_" + kind)


@functools.lru_cache(maxsize=None)
def makes_library_calls(name: str) -> bool:
    """Whether the generated kernel of formula ``name`` calls a math library function per box (the ops the C
    printer cuts its loops at: exp, log, atan2, sin, cos, ...). The CPU backend opens a parallel region for such
    kernels from fewer boxes (``cpu.GRAIN``)."""
    return any(e.op in expr._CALL_OPS for e in _program(name)[0])


def c_symbols(which: str = "axis") -> List[str]:
    return [symbol(name) + sfx for name in _members(which) for sfx in ("_f32", "_f64")]


# ----------------------------------------------------------------------------------------------------------
# the PyTorch closed form: the generated forward and reverse pass, evaluated on tensors
# ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _program(name: str):
    entry = VARIANTS[name]
    g, out, p, t, params = expr.trace(entry.formula, len(entry.params), entry.columns)
    live = expr._live(out)
    nodes = [e for e in g.nodes if live[e.index]]
    needs = expr._needs_grad(nodes)
    return nodes, out, p, t, needs


_T_UNARY = {"neg": torch.neg, "exp": torch.exp, "log": torch.log, "log1p": torch.log1p, "expm1": torch.expm1, "sqrt": torch.sqrt, "sin": torch.sin,
            "cos": torch.cos, "abs": torch.abs, "floor": torch.floor}
_T_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "gt": torch.gt,
             "ge": torch.ge, "lt": torch.lt, "le": torch.le, "eq": torch.eq, "ne": torch.ne,
             "and": torch.logical_and, "or": torch.logical_or, "max": torch.maximum, "min": torch.minimum,
             "atan2": torch.atan2}


def _evaluate(name: str, params, p: Tensor, t: Tensor, eps: float, need_grad: bool):
    nodes, out, pin, tin, needs = _program(name)
    inputs = {f"p{k}": p[:, k] for k in range(p.shape[1])}
    inputs.update({f"t{k}": t[:, k] for k in range(t.shape[1])})
    like = p[:, 0]
    inputs.update({f"q{k}": torch.full_like(like, v) for k, v in enumerate(params)})
    inputs["eps"] = torch.full_like(like, eps)
    inputs["ulp"] = torch.full_like(like, torch.finfo(p.dtype).eps)
    val: Dict[int, Tensor] = {}
    for e in nodes:
        a = [val[x.index] for x in e.args]
        if e.op == "const":
            v = torch.full_like(like, e.value)
        elif e.op == "input":
            v = inputs[e.value]
        elif e.op == "where":
            v = torch.where(a[0], a[1], a[2])
        elif e.op == "not":
            v = torch.logical_not(a[0])
        elif e.op == "detach":
            v = a[0]
        elif e.op == "clamp_min":
            v = torch.where((a[0] > a[1]) | a[0].isnan(), a[0], a[1])
        elif e.op == "clamp_max":
            v = torch.where((a[0] < a[1]) | a[0].isnan(), a[0], a[1])
        elif e.op in _T_UNARY:
            v = _T_UNARY[e.op](a[0])
        else:
            v = _T_BINARY[e.op](a[0], a[1])
        val[e.index] = v
    loss = val[out.index]
    if not need_grad:
        return loss, None, None
    zero = torch.zeros_like(like)
    adj: Dict[int, Tensor] = {}

    def acc(x, g):
        if needs[x.index]:
            adj[x.index] = adj[x.index] + g if x.index in adj else g

    if needs[out.index]:
        adj[out.index] = torch.ones_like(like)
    for e in reversed(nodes):
        if not needs[e.index] or e.op == "input" or e.index not in adj:
            continue
        g = adj.pop(e.index)
        args = e.args
        x = val[args[0].index] if args else None
        y = val[args[1].index] if len(args) > 1 else None
        if e.op == "add":
            acc(args[0], g)
            acc(args[1], g)
        elif e.op == "sub":
            acc(args[0], g)
            acc(args[1], -g)
        elif e.op == "mul":
            acc(args[0], g * y)
            acc(args[1], g * x)
        elif e.op == "div":
            acc(args[0], g / y)
            acc(args[1], -g * val[e.index] / y)
        elif e.op == "neg":
            acc(args[0], -g)
        elif e.op in ("max", "min"):
            s = ((x > y) if e.op == "max" else (x < y)).to(g.dtype) + 0.5 * (x == y).to(g.dtype)
            acc(args[0], g * s)
            acc(args[1], g * (1 - s))
        elif e.op == "clamp_min":
            acc(args[0], torch.where(x > y, g, zero))
        elif e.op == "clamp_max":
            acc(args[0], torch.where(x < y, g, zero))
        elif e.op == "where":
            c = val[args[0].index]
            acc(args[1], torch.where(c, g, zero))
            acc(args[2], torch.where(c, zero, g))
        elif e.op == "exp":
            acc(args[0], g * val[e.index])
        elif e.op == "log":
            acc(args[0], g / x)
        elif e.op == "log1p":
            acc(args[0], g / (1 + x))
        elif e.op == "expm1":
            acc(args[0], g * (val[e.index] + 1))
        elif e.op == "sqrt":
            acc(args[0], g * 0.5 / val[e.index])
        elif e.op == "sin":
            acc(args[0], g * torch.cos(x))
        elif e.op == "cos":
            acc(args[0], -g * torch.sin(x))
        elif e.op == "abs":
            acc(args[0], g * torch.sign(x))
        elif e.op == "atan2":
            r2 = x * x + y * y
            ok = r2 > 0
            safe = torch.where(ok, r2, torch.ones_like(r2))
            acc(args[0], torch.where(ok, g * y / safe, zero))
            acc(args[1], torch.where(ok, -g * x / safe, zero))
        else:  # pragma: no cover - expr.generate_c raises for the same ops
            raise NotImplementedError(e.op)
    nan = loss.isnan().unsqueeze(-1)
    grads = []
    for cols in (pin, tin):
        g = torch.stack([adj.get(c.index, zero) for c in cols], -1)
        grads.append(torch.where(nan, loss.unsqueeze(-1), g))
    return loss, grads[0], grads[1]


CLOSED_FORM_BYTES = 1 << 28  # temporaries of one chunk of the closed form on an accelerator


def closed_form_rows(kind: str, element_size: int) -> int:
    """Boxes per chunk of the closed form on an accelerator: every node of the graph holds one value per box
    until the reverse pass has used it (~2,000 nodes for a rotated loss), so the chunk bounds the memory."""
    nodes = len(_program(parse(kind)[0])[0])
    return max(1024, CLOSED_FORM_BYTES // (2 * nodes * element_size))


def closed_form_chunk(kind: str, p: Tensor, t: Tensor, eps: float, need_grad: bool):
    """Per-box loss and, with ``need_grad``, local gradients of one chunk (the generated forward and reverse
    pass on tensors); ``ops`` runs it chunk by chunk as it runs ``closed_form.fused_loss_and_grad``."""
    name, _, params = parse(kind)
    return _evaluate(name, params, p, t, eps, need_grad)



# ----------------------------------------------------------------------------------------------------------
# the Triton pairwise kernels of the rotated scores: generated into the kernel cache at first use (Triton
# compiles from source files; triton_kernels.generated_pairwise_module)
# ----------------------------------------------------------------------------------------------------------
def triton_symbol(kind: str) -> str:
    return "_pw_" + kind


def triton_source() -> str:
    """One Triton kernel per rotated pairwise score, and their table ``KERNELS``."""
    from .. import rotated

    header = ('"""Generated by boxloss.backends.generated.triton_source from the rotated score formulas in '
              "boxloss/rotated.py: do not\nedit. Pairwise rotated IoU, GIoU and DIoU on CUDA, forward only, on the "
              'boxes\' features\n(``rotated.box_features``), computed in float32."""\n\n'
              "import triton\nimport triton.language as tl\n\n\n")
    kernels = [expr.generate_triton_pairwise(triton_symbol(kind), fn, rotated.FEATURES)
               for kind, fn in rotated.PAIRWISE_SCORES.items()]
    table = "KERNELS = {\n" + "".join(f"    {kind!r}: {triton_symbol(kind)},\n"
                                        for kind in rotated.PAIRWISE_SCORES) + "}\n"
    return header + "\n\n".join(kernels) + "\n\n" + table


# the aligned variants on CUDA: one Triton kernel per registered formula (axis-aligned and rotated), value and
# gradient in one pass. Generated at first use into the kernel cache (Triton compiles from files).
TRITON_ALIGNED_BLOCK = 128  # boxes per program: the reverse pass keeps ~2,000 values per box in flight


def triton_aligned_symbol(name: str) -> str:
    return "_al_" + name


# formulas whose one-kernel Triton form keeps more values live through its reverse pass than a GPU thread has
# registers (ptxas spills them: tests/backends/test_triton_compile.py reads its report): one kernel per term of the
# loss instead (expr.generate_triton_aligned's split_terms)
TRITON_SPLIT_TERMS = ("rotated_iou_distance", "rotated_log_iou_distance")


@functools.lru_cache(maxsize=None)
def triton_aligned_kernels(name: str) -> Tuple[str, ...]:
    """The names of the generated Triton kernels of formula ``name``, in launch order: one, or one per term
    (cached: every launch asks)."""
    if name not in TRITON_SPLIT_TERMS:
        return (triton_aligned_symbol(name),)
    entry = VARIANTS[name]
    _, out, *_ = expr.trace(entry.formula, len(entry.params), entry.columns)
    return tuple(f"{triton_aligned_symbol(name)}_t{j}" for j in range(len(expr.split_sum(out))))


def triton_aligned_members(exclude: Tuple[str, ...] = ()) -> List[str]:
    """The registered formulas that get a generated Triton kernel: all but ``exclude`` (the kinds a hand-written
    kernel overrides)."""
    return [name for name in _members("axis") + _members("rotated") if name not in exclude]


def triton_aligned_source(exclude: Tuple[str, ...] = ()) -> str:
    """One Triton kernel per registered formula but ``exclude``: the axis-aligned ones (with NaN-propagating
    maximum and minimum, as their C kernels) and the rotated and Gaussian losses."""
    reg = VARIANTS
    kernels = [expr.generate_triton_aligned(triton_aligned_symbol(name), reg[name].formula, len(reg[name].params),
                                            reg[name].columns, nan_minmax=reg[name].columns == 4,
                                            split_terms=name in TRITON_SPLIT_TERMS)
               for name in triton_aligned_members(exclude)]
    return ('"""Generated by boxloss.backends.generated.triton_aligned_source from the registered formulas: do not '
            'edit."""\n\nimport triton\nimport triton.language as tl\n\n'
            "from boxloss.backends.triton_kernels import _atan2  # noqa: F401 - the kernels' arctangent\n\n\n"
            + "\n\n".join(kernels))
