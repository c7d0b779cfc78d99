"""One formula, two back ends: the loss variants are written once against a small math namespace, and that one
function is both the PyTorch reference (evaluated on tensors, differentiated by autograd) and the source of
the compiled CPU kernel (traced into an expression graph, differentiated in reverse mode, printed as C).

A variant's math is a function ``fn(p, t, m, *params) -> loss`` where ``p`` and ``t`` are the four columns
``(x1, y1, x2, y2)`` of the predicted and target boxes and ``m`` is a :class:`TorchMath` (tensors) or a
:class:`SymbolicMath` (expression nodes). Both namespaces offer the same primitives, with the same values and
the same derivatives (PyTorch's conventions: ``maximum``/``minimum`` split the gradient evenly on ties,
``clamp_min``/``clamp_max`` pass none at the bound, ``where`` passes none to the branch not taken) and the
same composites built from them (``safe_div``, ``safe_sqrt``, ``safe_pow``), so a kernel generated from a
formula agrees with the reference to rounding; the tests check this for every registered variant.

Python ``if``/``for`` on parameters is not allowed inside a formula (parameters are runtime inputs of the
generated kernel); branches are written with ``m.where``.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


# ----------------------------------------------------------------------------------------------------------
# the PyTorch namespace (the reference)
# ----------------------------------------------------------------------------------------------------------
class _Composites:
    """The composites every namespace offers, built from its primitives (written once, in the functions below)."""

    def safe_div(self, num, den):
        return _safe_div(self, num, den)

    def safe_sqrt(self, x):
        return _safe_sqrt(self, x)

    def safe_pow(self, x, y):
        return _safe_pow(self, x, y)

    def atan2_safe(self, y, x):
        return _atan2_safe(self, y, x)


class TorchMath(_Composites):
    """The primitives on tensors; ``eps`` is the loss' ``eps``."""

    def __init__(self, eps: float, ulp: float = 2.0 ** -23) -> None:
        self.eps = eps
        self.ulp = ulp  # the compute dtype's machine epsilon (scale-aware tolerances of the rotated geometry)

    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    log1p = staticmethod(torch.log1p)
    expm1 = staticmethod(torch.expm1)
    sqrt = staticmethod(torch.sqrt)
    sin = staticmethod(torch.sin)
    cos = staticmethod(torch.cos)
    abs = staticmethod(torch.abs)
    atan2 = staticmethod(torch.atan2)
    floor = staticmethod(torch.floor)  # no gradient (a step function)

    @staticmethod
    def clamp_min(x: Tensor, c) -> Tensor:
        return x.clamp_min(c)

    @staticmethod
    def clamp_max(x: Tensor, c) -> Tensor:
        return x.clamp_max(c)

    @staticmethod
    def where(cond: Tensor, a, b) -> Tensor:
        return torch.where(cond, a, b)

    @staticmethod
    def detach(x: Tensor) -> Tensor:
        return x.detach()

    @staticmethod
    def const(value: float, like: Tensor) -> Tensor:
        return torch.full_like(like, value)


def _safe_div(m, num, den):
    """num / max(den, eps), with no gradient where den <= eps (``reference._safe_div``)."""
    return m.where(den > m.eps, num, m.detach(num)) / m.clamp_min(den, m.eps)


def _safe_sqrt(m, x):
    """sqrt with a zero (not infinite) gradient at 0; 0 for x <= 0; NaN for NaN."""
    positive = (x > 0) | (x != x)
    return m.where(positive, m.sqrt(m.where(positive, x, m.const(1.0, x))), m.const(0.0, x))


def _safe_pow(m, x, y):
    """x ** y for x > 0; for x <= 0: 1 where y == 0, else 0 — with no gradient there (the exponent ``y`` is a
    parameter: no gradient either); NaN for NaN."""
    positive = (x > 0) | (x != x)
    base = m.where(positive, x, m.const(1.0, x))
    value = m.exp(m.log(base) * y)
    zero_power = m.where(y == 0, m.const(1.0, x), m.const(0.0, x)) if isinstance(y, Expr) else \
        m.const(1.0 if float(y) == 0 else 0.0, x)
    return m.where(positive, value, zero_power)


def _atan2_safe(m, y, x):
    """atan2(y, x), 0 with no gradient at (0, 0) (``boxes``' CIoU aspect convention)."""
    ok = (x + y) > m.eps
    return m.where(ok, m.atan2(y, m.where(ok, x, m.const(1.0, x))), m.const(0.0, x))


# ----------------------------------------------------------------------------------------------------------
# the symbolic namespace: expression graphs
# ----------------------------------------------------------------------------------------------------------
BOOL_OPS = ("gt", "ge", "lt", "le", "eq", "ne", "and", "or", "not")


class Expr:
    """A node of a traced formula. Arithmetic and comparisons build new nodes (hash-consed per trace)."""

    __slots__ = ("graph", "op", "args", "value", "index")

    def __init__(self, graph: "Graph", op: str, args: Tuple["Expr", ...], value=None) -> None:
        self.graph, self.op, self.args, self.value = graph, op, args, value
        self.index = -1

    @property
    def is_bool(self) -> bool:
        return self.op in BOOL_OPS

    def _lift(self, other) -> "Expr":
        return other if isinstance(other, Expr) else self.graph.const(float(other))

    def __add__(self, o):
        return self.graph.node("add", self, self._lift(o))

    def __radd__(self, o):
        return self.graph.node("add", self._lift(o), self)

    def __sub__(self, o):
        return self.graph.node("sub", self, self._lift(o))

    def __rsub__(self, o):
        return self.graph.node("sub", self._lift(o), self)

    def __mul__(self, o):
        return self.graph.node("mul", self, self._lift(o))

    def __rmul__(self, o):
        return self.graph.node("mul", self._lift(o), self)

    def __truediv__(self, o):
        return self.graph.node("div", self, self._lift(o))

    def __rtruediv__(self, o):
        return self.graph.node("div", self._lift(o), self)

    def __neg__(self):
        return self.graph.node("neg", self)

    def __pow__(self, k):
        if k == 2:
            return self * self
        raise TypeError("boxloss formulas: use m.safe_pow(x, y) for powers other than ** 2")

    def __gt__(self, o):
        return self.graph.node("gt", self, self._lift(o))

    def __ge__(self, o):
        return self.graph.node("ge", self, self._lift(o))

    def __lt__(self, o):
        return self.graph.node("lt", self, self._lift(o))

    def __le__(self, o):
        return self.graph.node("le", self, self._lift(o))

    def __eq__(self, o):  # noqa: D105 - a node, not a bool: formulas compare values
        return self.graph.node("eq", self, self._lift(o))

    def __ne__(self, o):
        return self.graph.node("ne", self, self._lift(o))

    def __and__(self, o):
        return self.graph.node("and", self, o)

    def __or__(self, o):
        return self.graph.node("or", self, o)

    def __invert__(self):
        return self.graph.node("not", self)

    def __bool__(self):
        raise TypeError("boxloss formulas cannot branch on a value in Python; write m.where(cond, a, b)")

    __hash__ = object.__hash__


class Graph:
    def __init__(self) -> None:
        self.nodes: List[Expr] = []
        self._memo: Dict[tuple, Expr] = {}

    def _add(self, op, args, value=None) -> Expr:
        key = (op, tuple(id(a) for a in args), value)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        e = Expr(self, op, tuple(args), value)
        e.index = len(self.nodes)
        self.nodes.append(e)
        self._memo[key] = e
        return e

    def node(self, op: str, *args: Expr) -> Expr:
        return self._add(op, args)

    def const(self, value: float) -> Expr:
        return self._add("const", (), float(value))

    def input(self, name: str) -> Expr:
        return self._add("input", (), name)


class SymbolicMath(_Composites):
    """The primitives on expression nodes (what :func:`trace` hands a formula)."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.eps = graph.input("eps")
        self.ulp = graph.input("ulp")

    def _n(self, op, *args):
        return self.g.node(op, *[a if isinstance(a, Expr) else self.g.const(float(a)) for a in args])

    def maximum(self, a, b):
        return self._n("max", a, b)

    def minimum(self, a, b):
        return self._n("min", a, b)

    def clamp_min(self, x, c):
        return self._n("clamp_min", x, c)

    def clamp_max(self, x, c):
        return self._n("clamp_max", x, c)

    def where(self, cond, a, b):
        return self._n("where", cond, a, b)

    def detach(self, x):
        return self._n("detach", x)

    def const(self, value, like=None):
        return self.g.const(value)

    def exp(self, x):
        return self._n("exp", x)

    def log(self, x):
        return self._n("log", x)

    def log1p(self, x):
        return self._n("log1p", x)

    def expm1(self, x):
        return self._n("expm1", x)

    def sqrt(self, x):
        return self._n("sqrt", x)

    def sin(self, x):
        return self._n("sin", x)

    def cos(self, x):
        return self._n("cos", x)

    def abs(self, x):
        return self._n("abs", x)

    def atan2(self, y, x):
        return self._n("atan2", y, x)

    def floor(self, x):
        return self._n("floor", x)


def trace(fn: Callable, n_params: int, columns: int = 4) -> Tuple[Graph, Expr, List[Expr], List[Expr], List[Expr]]:
    """The expression graph of ``fn(p, t, m, *params)``: (graph, output, p inputs, t inputs, param inputs);
    ``p`` and ``t`` have ``columns`` columns (4 for axis-aligned boxes, 5 for rotated ones)."""
    g = Graph()
    m = SymbolicMath(g)
    p = [g.input(f"p{k}") for k in range(columns)]
    t = [g.input(f"t{k}") for k in range(columns)]
    params = [g.input(f"q{k}") for k in range(n_params)]
    out = fn(tuple(p), tuple(t), m, *params)
    if not isinstance(out, Expr):
        raise TypeError("a boxloss formula must return an expression built from its inputs")
    return g, out, p, t, params


# ----------------------------------------------------------------------------------------------------------
# C generation: forward, then reverse-mode adjoints
# ----------------------------------------------------------------------------------------------------------
_C_BINARY = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
             "gt": "({a} > {b})", "ge": "({a} >= {b})", "lt": "({a} < {b})", "le": "({a} <= {b})",
             "eq": "({a} == {b})", "ne": "({a} != {b})", "and": "({a} & {b})", "or": "({a} | {b})",
             "max": "BL_MAX({a}, {b})", "min": "BL_MIN({a}, {b})",
             "clamp_min": "BL_CLAMP_MIN({a}, {b})", "clamp_max": "BL_CLAMP_MAX({a}, {b})",
             "atan2": "BL_ATAN2({a}, {b})"}
_C_UNARY = {"neg": "(-{a})", "not": "(1 ^ {a})", "detach": "{a}", "exp": "BL_EXP({a})", "log": "BL_LOG({a})", "log1p": "BL_LOG1P({a})",
            "expm1": "BL_EXPM1({a})",
            "sqrt": "BL_SQRT({a})", "sin": "BL_SIN({a})", "cos": "BL_COS({a})", "abs": "BL_ABS({a})",
            "floor": "BL_FLOOR({a})"}


def _c_number(x: float) -> str:
    if math.isinf(x):
        return "BL_INF" if x > 0 else "(-BL_INF)"
    return f"((R){float(x)!r})"


def _live(out: Expr) -> List[bool]:
    live = [False] * len(out.graph.nodes)
    stack = [out]
    while stack:
        e = stack.pop()
        if live[e.index]:
            continue
        live[e.index] = True
        stack.extend(e.args)
    return live


def _needs_grad(nodes: Sequence[Expr]) -> Dict[int, bool]:
    """Which nodes carry gradient: those depending on p or t through differentiable edges."""
    needs: Dict[int, bool] = {}
    for e in nodes:
        if e.op == "input":
            needs[e.index] = e.value[0] in "pt"
        elif e.op in ("const", "detach", "floor") or e.is_bool:
            needs[e.index] = False
        elif e.op == "where":
            needs[e.index] = needs[e.args[1].index] or needs[e.args[2].index]
        elif e.op in ("clamp_min", "clamp_max"):
            needs[e.index] = needs[e.args[0].index]
        else:
            needs[e.index] = any(needs[a.index] for a in e.args)
    return needs


def generate_c(name: str, fn: Callable, n_params: int, columns: int = 4) -> str:
    """C source of ``void name(params, P, T, W, L, GP, GT, n, eps, scale, total, threads)`` — per-box loss,
    local gradients and the weighted sum in one pass, with the arguments of ``boxloss_aligned_*`` in
    ``classic.c`` (the parameters where that has the kind) — for the float and double types (suffixes ``_f32``,
    ``_f64``)."""
    g, out, p, t, _params = trace(fn, n_params, columns)
    live = _live(out)
    nodes = [e for e in g.nodes if live[e.index]]
    inputs = {f"p{k}": f"P[{columns} * i + {k}]" for k in range(columns)}
    inputs.update({f"t{k}": f"T[{columns} * i + {k}]" for k in range(columns)})
    inputs.update({f"q{k}": f"(R)prm[{k}]" for k in range(n_params)})
    inputs.update(eps="eps", ulp="BL_ULP")
    v = lambda e: f"v{e.index}"  # noqa: E731
    fwd = _forward_lines(nodes, inputs)

    needs = _needs_grad(nodes)
    bwd = [f"R a{e.index} = 0;" for e in nodes if needs[e.index]]
    if needs[out.index]:
        bwd.append(f"a{out.index} = 1;")
    bwd += [f"a{i} += {expr};" for i, expr in _reverse(nodes, needs, _C_SPELLING)]
    grad_p = [f"a{e.index}" if needs.get(e.index) and live[e.index] else "(R)0" for e in p]
    grad_t = [f"a{e.index}" if needs.get(e.index) and live[e.index] else "(R)0" for e in t]

    body = "\n        ".join(fwd)
    back = "\n            ".join(bwd)
    gp = "\n                ".join(f"GP[{columns} * i + {k}] = f * (loss != loss ? loss : {grad_p[k]});"
                                  for k in range(columns))
    gt = "\n                ".join(f"GT[{columns} * i + {k}] = f * (loss != loss ? loss : {grad_t[k]});"
                                  for k in range(columns))
    return _KERNEL.format(name=name, body=body, out=v(out), back=back, gp=gp, gt=gt)


# library calls: the compiler vectorises no loop that makes them (glibc offers no vector versions without
# -ffast-math), so the column form evaluates them in loops of their own, between the vectorised stages
_CALL_OPS = frozenset({"exp", "log", "log1p", "expm1", "atan2", "sin", "cos"})
_SCRATCH_BYTES = 64 * 1024  # a sub-chunk's columns (all stages' spilled values), on the thread's stack


def generate_columns_c(name: str, fn: Callable, n_params: int, columns: int = 4, real_bools: bool = True) -> str:
    """The vectorisable form of :func:`generate_c`: the same signature and, bit for bit, the same results.

    Each chunk of boxes is taken in sub-chunks whose values live in columns (``st[slot][j]``): the inputs are
    copied into columns; the forward pass is cut into stages at its library calls — a vectorised loop computes
    a stage's values, a plain loop applies the calls, the next stage reads their results — and the last stage
    also runs the reverse pass; a last plain loop writes the losses, the weighted sum (in the order of the
    boxes) and the gradients as rows. Only values that cross a loop are kept in columns. The reverse pass of a
    sine or cosine needs the other one of the same argument: it is taken in the call loop beside it."""
    g, out, p, t, _params = trace(fn, n_params, columns)
    live = _live(out)
    nodes = [e for e in g.nodes if live[e.index]]
    needs = _needs_grad(nodes)
    reverse = _reverse(nodes, needs, _C_SPELLING_REAL_BOOLS if real_bools else _C_SPELLING)
    # the reverse pass of sin and cos calls cos and sin of the same argument: taken in the call loop beside them
    partner_of = {("COS" if e.op == "sin" else "SIN", e.args[0].index): e for e in nodes
                  if e.op in ("sin", "cos") and needs.get(e.args[0].index)}
    partner_call = re.compile(r"BL_(COS|SIN)\(v(\d+)\)")
    reverse = [(i, partner_call.sub(lambda m: f"p{m.group(1).lower()}{m.group(2)}", expr)) for i, expr in reverse]
    free_inputs = {"eps": "eps", "ulp": "BL_ULP", **{f"q{k}": f"(R)prm[{k}]" for k in range(n_params)}}
    box_inputs = [f"p{k}" for k in range(columns)] + [f"t{k}" for k in range(columns)]

    def is_free(e):
        return e.op == "const" or (e.op == "input" and e.value in free_inputs)

    stage: Dict[int, int] = {}
    for e in nodes:
        base = max((stage[a.index] for a in e.args), default=0)
        stage[e.index] = base + 1 if e.op in _CALL_OPS else base
    last = max(stage.values(), default=0)
    by_index = {e.index: e for e in nodes}
    ref = re.compile(r"\bv(\d+)\b")
    back_refs = {int(i) for _, expr in reverse for i in ref.findall(expr)}
    # where each value is used: the loop of each user (a call's argument: the call loop before its stage)
    used_in: Dict[int, set] = {e.index: set() for e in nodes}
    for e in nodes:
        for a in e.args:
            used_in[a.index].add(("call", stage[e.index]) if e.op in _CALL_OPS else ("stage", stage[e.index]))
    for i in back_refs:
        used_in[i].add(("stage", last))
    made_in = {e.index: ("call", stage[e.index]) if e.op in _CALL_OPS else
               ("input", 0) if e.op == "input" and not is_free(e) else ("stage", stage[e.index]) for e in nodes}
    slots: Dict[int, int] = {}
    for e in nodes:
        if not is_free(e) and (made_in[e.index][0] != "stage" or any(u != made_in[e.index] for u in used_in[e.index])):
            slots[e.index] = len(slots)
    partner_slots = {key: len(slots) + k for k, key in enumerate(sorted(partner_of))}
    n_grads = 2 * columns
    loss_slot, grad_slot = len(slots) + len(partner_slots), len(slots) + len(partner_slots) + 1
    n_slots = grad_slot + n_grads
    sub = max(16, min(256, _SCRATCH_BYTES // (8 * n_slots)) // 16 * 16)

    def value_line(e, inputs):
        return _forward_lines([e], inputs, real_bools=real_bools)[0]

    def load(i):
        e = by_index[i]
        if e.is_bool and not real_bools:
            return f"const int v{i} = (int)st[{slots[i]}][j];"
        return f"const R v{i} = st[{slots[i]}][j];"

    def stage_loop(k: int, backward: bool) -> str:
        body, have = [], set()
        mine = [e for e in nodes if stage[e.index] == k and e.op not in _CALL_OPS and e.op != "input"
                and not is_free(e)]
        wanted = {a.index for e in mine for a in e.args} | ({out.index} | back_refs if k == last else set())
        wanted |= {e.index for e in mine}
        for i in sorted(wanted):
            e = by_index[i]
            if is_free(e):
                body.append(value_line(e, free_inputs))
            elif i in slots and made_in[i] != ("stage", k):
                body.append(load(i))
            have.add(i)
        for e in mine:
            body.append(value_line(e, free_inputs))
            if e.index in slots:
                body.append(f"st[{slots[e.index]}][j] = (R)v{e.index};")
        if k == last:
            body.append(f"st[{loss_slot}][j] = v{out.index};")
            if backward:
                body += [f"const R p{fname.lower()}{x} = st[{slot}][j];" for (fname, x), slot in partner_slots.items()]
                body += [f"R a{e.index} = 0;" for e in nodes if needs[e.index]]
                if needs[out.index]:
                    body.append(f"a{out.index} = 1;")
                body += [f"a{i} += {expr};" for i, expr in reverse]
                for k2, e in enumerate(list(p) + list(t)):
                    grad = f"a{e.index}" if needs.get(e.index) and live[e.index] else "(R)0"
                    body.append(f"st[{grad_slot + k2}][j] = {grad};")
        lines = "\n        ".join(body)
        return (f"static BL_VECTOR_LOOP void {name}_s{k}{'b' if backward else ''}_SFX(R (*restrict st)[{sub}], long m, "
                f"const double *prm, const R eps) {{\n    (void)prm; (void)eps;\n    _Pragma(\"omp simd\")\n"
                f"    for (long j = 0; j < m; ++j) {{\n        {lines}\n    }}\n}}\n")

    def call_loop(k: int) -> str:
        body = []
        for e in nodes:
            if e.op in _CALL_OPS and stage[e.index] == k:
                args = ", ".join(f"st[{slots[a.index]}][j]" if a.index in slots else
                                 _forward_lines([a], free_inputs)[0].split(" = ", 1)[1].rstrip(";") for a in e.args)
                fn_name = _C_BINARY.get(e.op) or _C_UNARY[e.op]
                expr = fn_name.split("(")[0]
                body.append(f"st[{slots[e.index]}][j] = {expr}({args});")
        for (fname, x), e in partner_of.items():
            if stage[e.index] == k:
                body.append(f"st[{partner_slots[(fname, x)]}][j] = BL_{fname}(st[{slots[x]}][j]);")
        return "\n        ".join(body)

    funcs = [stage_loop(k, False) for k in range(last)] + [stage_loop(last, False), stage_loop(last, True)]
    calls = {k: call_loop(k) for k in range(1, last + 1)}
    loads = "\n                ".join(
        f"st[{slots[by_index[e.index].index]}][j] = {('P' if nm.startswith('p') else 'T')}[{columns} * (b + j) + {nm[1:]}];"
        for nm in box_inputs for e in nodes if e.op == "input" and e.value == nm and e.index in slots)
    steps = []
    for k in range(last + 1):
        if k:
            steps.append(f"for (long j = 0; j < m; ++j) {{\n                {calls[k]}\n            }}")
        if k < last:
            steps.append(f"{name}_s{k}_SFX(st, m, prm, eps);")
        else:
            steps.append(f"if (GP || GT) {name}_s{k}b_SFX(st, m, prm, eps); else {name}_s{k}_SFX(st, m, prm, eps);")
    gp = "\n                    ".join(f"GP[{columns} * i + {k}] = f * (loss != loss ? loss : st[{grad_slot + k}][j]);"
                                      for k in range(columns))
    gt = "\n                    ".join(f"GT[{columns} * i + {k}] = f * (loss != loss ? loss : "
                                      f"st[{grad_slot + columns + k}][j]);" for k in range(columns))
    return "".join(funcs) + _COLUMNS_KERNEL.format(
        name=name, sub=sub, n_slots=n_slots, loads=loads, steps="\n            ".join(steps), loss=loss_slot,
        gp=gp, gt=gt)


_COLUMNS_KERNEL = """
void {name}_SFX(const double *prm, const R *P, const R *T, const R *W, R *L, R *GP, R *GT, long n,
                double eps_d, double scale, double *total, int threads) {{
    const R eps = (R)eps_d;
    const long chunks = (n + BL_CHUNK - 1) / BL_CHUNK;
    double *partial = bl_partials(total, chunks, &threads);
    double acc1 = 0;
    (void)threads;
    BL_WATCH_START;
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")
    for (long c = 0; c < chunks; ++c) {{
        double acc = 0;
        const long end = (c + 1) * BL_CHUNK < n ? (c + 1) * BL_CHUNK : n;
        R st[{n_slots}][{sub}];
        for (long b = c * BL_CHUNK; b < end; b += {sub}) {{
            const long m = end - b < {sub} ? end - b : {sub};
            for (long j = 0; j < m; ++j) {{
                {loads}
            }}
            {steps}
            for (long j = 0; j < m; ++j) {{
                const long i = b + j;
                const R loss = st[{loss}][j];
                const R f = (W ? W[i] : (R)1) * (R)scale;
                if (L) L[i] = loss;
                if (total) acc += (double)f * (double)loss;
                if (GP) {{
                    {gp}
                }}
                if (GT) {{
                    {gt}
                }}
            }}
        }}
        if (partial) partial[c] = acc; else if (total) acc1 += acc;  /* (then one thread) */
    BL_CHUNK_DONE;
    }}
    BL_WATCH_END;
    bl_total(total, partial, chunks, acc1);
}}
"""


class _Spelling:
    """How a generated program writes a select, a number and a library function (C or Triton), and the gate of a
    clamp's gradient: ``gate(x, bound, adjoint, op)`` passes the adjoint where ``x`` is beyond the bound."""

    def __init__(self, sel: Callable, num: Callable, fn: Callable, gate: Optional[Callable] = None) -> None:
        self.sel, self.num, self.fn = sel, num, fn
        self.gate = gate or (lambda x, c, ga, op: sel(f"{x} {'>' if op == 'clamp_min' else '<'} {c}", ga, num("0")))


_C_SPELLING = _Spelling(sel=lambda c, a, b: f"({c} ? {a} : {b})", num=lambda x: f"(R){x}",
                        fn=lambda name, x: f"BL_{name.upper()}({x})")
# the column form with truth values as numbers (real_bools): a select on a truth value tests it against 0 (a float
# compare; a bare float condition would become a one-byte _Bool), and a clamp's gate is written as the select of
# the opposite comparison, which GCC does not merge with the forward clamp's NaN test into a _Bool: with both, it
# keeps the reverse pass in float lanes and vectorises it. For x NaN the gate passes the adjoint where the other
# form passes 0; the adjoint reaching a NaN node is non-zero only when the loss itself is NaN, and then the kernel
# writes NaN gradients either way (tests: the column form bit for bit against the row form, edge cases included)
_C_SPELLING_REAL_BOOLS = _Spelling(
    sel=lambda c, a, b: f"(({c}) != 0 ? {a} : {b})", num=lambda x: f"(R){x}",
    fn=lambda name, x: f"BL_{name.upper()}({x})",
    gate=lambda x, c, ga, op: f"(({x} {'<=' if op == 'clamp_min' else '>='} {c}) ? (R)0 : {ga})")
_TRITON_SPELLING = _Spelling(sel=lambda c, a, b: f"tl.where({c}, {a}, {b})", num=lambda x: f"{float(x)!r}",
                             fn=lambda name, x: f"tl.{name}({x})")


def _reverse(nodes: Sequence[Expr], needs: Dict[int, bool], sp: _Spelling) -> List[Tuple[int, str]]:
    """The reverse pass, node by node from the output: ``(index, expression)`` to add to adjoint ``a<index>``,
    with PyTorch's conventions at the kinks (ties of max/min split evenly; clamps and unselected branches pass
    nothing)."""
    v = lambda e: f"v{e.index}"  # noqa: E731
    out: List[Tuple[int, str]] = []
    one, zero, half = sp.num("1"), sp.num("0"), sp.num("0.5")
    for e in reversed(nodes):
        if not needs[e.index] or e.op == "input":
            continue
        ga = f"a{e.index}"
        x = e.args[0] if e.args else None
        y = e.args[1] if len(e.args) > 1 else None

        def acc(target, expr):
            if needs[target.index]:
                out.append((target.index, expr))

        if e.op == "add":
            acc(x, ga)
            acc(y, ga)
        elif e.op == "sub":
            acc(x, ga)
            acc(y, f"-{ga}")
        elif e.op == "mul":
            acc(x, f"{ga} * {v(y)}")
            acc(y, f"{ga} * {v(x)}")
        elif e.op == "div":
            acc(x, f"{ga} / {v(y)}")
            acc(y, f"-{ga} * {v(e)} / {v(y)}")
        elif e.op == "neg":
            acc(x, f"-{ga}")
        elif e.op in ("max", "min"):
            cmp = ">" if e.op == "max" else "<"
            s = sp.sel(f"{v(x)} {cmp} {v(y)}", one, sp.sel(f"{v(x)} == {v(y)}", half, zero))
            acc(x, f"{ga} * {s}")
            acc(y, f"{ga} * ({one} - {s})")
        elif e.op in ("clamp_min", "clamp_max"):
            acc(x, sp.gate(v(x), v(y), ga, e.op))
        elif e.op == "where":
            c = v(e.args[0])
            acc(e.args[1], sp.sel(c, ga, zero))
            acc(e.args[2], sp.sel(c, zero, ga))
        elif e.op == "exp":
            acc(x, f"{ga} * {v(e)}")
        elif e.op == "log":
            acc(x, f"{ga} / {v(x)}")
        elif e.op == "log1p":
            acc(x, f"{ga} / ({one} + {v(x)})")
        elif e.op == "expm1":
            acc(x, f"{ga} * ({v(e)} + {one})")
        elif e.op == "sqrt":
            acc(x, f"{ga} * {half} / {v(e)}")
        elif e.op == "sin":
            acc(x, f"{ga} * {sp.fn('cos', v(x))}")
        elif e.op == "cos":
            acc(x, f"-{ga} * {sp.fn('sin', v(x))}")
        elif e.op == "abs":
            acc(x, f"{ga} * {sp.sel(f'{v(x)} > 0', one, sp.sel(f'{v(x)} < 0', sp.num('-1'), zero))}")
        elif e.op == "atan2":  # atan2(y=x, x=y): d/dy = x / r², d/dx = −y / r²
            r2 = f"({v(x)} * {v(x)} + {v(y)} * {v(y)})"
            acc(x, sp.sel(f"{r2} > 0", f"{ga} * {v(y)} / {r2}", zero))
            acc(y, sp.sel(f"{r2} > 0", f"-{ga} * {v(x)} / {r2}", zero))
        else:
            raise NotImplementedError(f"no derivative for {e.op}")
    return out


# Truth values as numbers 0 and 1 of the loop's floating type (real_bools): a loop that holds only one type
# of element, which GCC vectorises where a mix of int masks and floats defeats it ("no vectype" in the rotated
# geometry). The same selects, so the same results.
_REAL_BOOL = {"and": "({a} * {b})", "or": "((({a}) + ({b})) > 0 ? (R)1 : (R)0)", "not": "((R)1 - {a})"}


def _forward_lines(nodes: Sequence[Expr], inputs: Dict[str, str], real_bools: bool = False) -> List[str]:
    """One C declaration per node: the forward pass (``real_bools``: truth values as ``R`` 0/1)."""
    lines = []
    for e in nodes:
        a = [f"v{x.index}" for x in e.args]
        if e.op == "const":
            expr = _c_number(e.value)
        elif e.op == "input":
            expr = inputs[e.value]
        elif e.op == "where":
            expr = f"({a[0]} != 0 ? {a[1]} : {a[2]})" if real_bools else f"({a[0]} ? {a[1]} : {a[2]})"
        elif e.op in ("eq", "ne") and e.args[0].is_bool:  # as a sum of 0/1 (no mask-to-mask comparison)
            expr = f"(({a[0]} + {a[1]}) {'==' if e.op == 'ne' else '!='} 1)"
        elif real_bools and e.op in _REAL_BOOL:
            expr = _REAL_BOOL[e.op].format(a=a[0], b=a[-1])
        elif e.op in _C_BINARY:
            expr = _C_BINARY[e.op].format(a=a[0], b=a[1])
        else:
            expr = _C_UNARY[e.op].format(a=a[0])
        if real_bools and e.is_bool and e.op not in _REAL_BOOL:
            expr = f"({expr} ? (R)1 : (R)0)"
        lines.append(f"const {'R' if real_bools or not e.is_bool else 'int'} v{e.index} = {expr};")
    return lines


def generate_pairwise_c(name: str, fn: Callable, columns: int) -> str:
    """C source of ``void name(A, B, O, batch, n, m, eps, threads)``: the value of ``fn(a, b, m)`` for every
    pair of a row of ``A`` ``(batch, n, columns)`` and a column of ``B`` ``(batch, columns, m)`` (column-major,
    so that the inner loop reads contiguous memory), forward only, into ``O`` ``(batch, n, m)``."""
    g = Graph()
    m = SymbolicMath(g)
    a = [g.input(f"p{k}") for k in range(columns)]
    b = [g.input(f"t{k}") for k in range(columns)]
    out = fn(tuple(a), tuple(b), m)
    # the row's columns as locals, loaded once per row
    inputs = {f"p{k}": f"ak{k}" for k in range(columns)}
    inputs.update({f"t{k}": f"bt[{k} * m + j]" for k in range(columns)})
    inputs.update(eps="eps", ulp="BL_ULP")
    live = _live(out)
    body = "\n            ".join(_forward_lines([e for e in g.nodes if live[e.index]], inputs))
    row = " ".join(f"const R ak{k} = a[{k}];" for k in range(columns))
    return _PAIRWISE.format(name=name, columns=columns, row=row, body=body, out=f"v{out.index}")


_PAIRWISE = """
void {name}_SFX(const R *restrict A, const R *restrict B, R *restrict O, long batch, long n, long m,
                double eps_d, int threads) {{
    const R eps = (R)eps_d;
    (void)threads;
    BL_WATCH_START;
    _Pragma("omp parallel for schedule(dynamic, 4) num_threads(threads) collapse(2)")
    for (long s = 0; s < batch; ++s)
    for (long i = 0; i < n; ++i) {{
        const R *restrict a = A + (s * n + i) * {columns};
        const R *restrict bt = B + s * {columns} * m;
        R *restrict o = O + (s * n + i) * m;
        {row}
        for (long j = 0; j < m; ++j) {{
            {body}
            o[j] = {out};
        }}
        BL_CHUNK_DONE;
    }}
    BL_WATCH_END;
}}
"""


_KERNEL = """
void {name}_SFX(const double *prm, const R *P, const R *T, const R *W, R *L, R *GP, R *GT, long n,
                double eps_d, double scale, double *total, int threads) {{
    const R eps = (R)eps_d;
    const long chunks = (n + BL_CHUNK - 1) / BL_CHUNK;
    double *partial = bl_partials(total, chunks, &threads);
    double acc1 = 0;
    (void)prm; (void)threads;
    BL_WATCH_START;
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")
    for (long c = 0; c < chunks; ++c) {{
    double acc = 0;
    const long end = (c + 1) * BL_CHUNK < n ? (c + 1) * BL_CHUNK : n;
    for (long i = c * BL_CHUNK; i < end; ++i) {{
        {body}
        const R loss = {out};
        const R f = (W ? W[i] : (R)1) * (R)scale;
        if (L) L[i] = loss;
        if (total) acc += (double)f * (double)loss;
        if (GP || GT) {{
            {back}
            if (GP) {{
                {gp}
            }}
            if (GT) {{
                {gt}
            }}
        }}
    }}
    if (partial) partial[c] = acc; else if (total) acc1 += acc;  /* (then one thread) */
    BL_CHUNK_DONE;
    }}
    BL_WATCH_END;
    bl_total(total, partial, chunks, acc1);
}}
"""

PRELUDE = """/* Generated by boxloss.expr from the formulas in boxloss: do not edit. */
#include <float.h>
/* boxes per work item of the aligned kernels (see classic.c) */
#define BL_CHUNK 1024
#define BL_INF (1.0 / 0.0)
#define BL_CAT_(a, b) a##b
#define BL_CAT(a, b) BL_CAT_(a, b)
"""
# maximum/minimum/clamp that propagate a NaN from either side, as torch's do (`|`, not `||`: a select without a
# branch, which the compiler can vectorise)
NAN_MINMAX = """#define BL_MAX(a, b) ((((a) > (b)) | ((a) != (a))) ? (a) : (b))
#define BL_MIN(a, b) ((((a) < (b)) | ((a) != (a))) ? (a) : (b))
#define BL_CLAMP_MIN(x, c) ((((x) > (c)) | ((x) != (x))) ? (x) : (c))
#define BL_CLAMP_MAX(x, c) ((((x) < (c)) | ((x) != (x))) ? (x) : (c))
"""
# for formulas that propagate NaN themselves (the rotated ones add x − x of every input): plain selects, one
# comparison each instead of two
PLAIN_MINMAX = """#define BL_MAX(a, b) (!((a) <= (b)) ? (a) : (b))
#define BL_MIN(a, b) (!((a) >= (b)) ? (a) : (b))
#define BL_CLAMP_MIN(x, c) (!((x) <= (c)) ? (x) : (c))
#define BL_CLAMP_MAX(x, c) (!((x) >= (c)) ? (x) : (c))
"""

_TYPES = {
    "f32": {"R": "float", "ULP": "FLT_EPSILON", "EXP": "expf", "LOG": "logf", "LOG1P": "log1pf", "EXPM1": "expm1f", "SQRT": "sqrtf", "SIN": "sinf", "COS": "cosf",
            "ABS": "fabsf", "ATAN2": "atan2f", "FLOOR": "floorf"},
    "f64": {"R": "double", "ULP": "DBL_EPSILON", "EXP": "exp", "LOG": "log", "LOG1P": "log1p", "EXPM1": "expm1", "SQRT": "sqrt", "SIN": "sin", "COS": "cos",
            "ABS": "fabs", "ATAN2": "atan2", "FLOOR": "floor"},
}


def generate_library(kernels: Sequence[Tuple[str, Callable, int]], *, runtime: str, columns: int = 4,
                     pairwise: Sequence[tuple] = (), nan_minmax: bool = True, extra: str = "",
                     rows_only: bool = False) -> str:
    """One C file with a float and a double instantiation of every aligned ``(name, formula, n_params)`` and
    every pairwise ``(name, formula, columns)`` (see :func:`generate_pairwise_c`). ``nan_minmax=False`` (only
    for formulas that propagate NaN themselves) uses min/max without a NaN test. The aligned kernels take the
    vectorisable column form (:func:`generate_columns_c`), or the row form with ``rows_only`` (the tests'
    referee).
    ``extra``: hand-written C appended once per type (with ``R``, ``SFX`` and the ``BL_`` macros defined).
    ``runtime``: the C every kernel library shares (``boxloss/backends/bl_runtime.h``: the per-chunk sums, the loop
    attributes, the wait watch), put in front."""
    parts = [runtime + PRELUDE + (NAN_MINMAX if nan_minmax else PLAIN_MINMAX)]
    for sfx, names in _TYPES.items():
        parts.append(f"#define R {names['R']}\n#define SFX _{sfx}\n"
                     + "".join(f"#define BL_{k} {fname}\n" for k, fname in names.items() if k != "R"))
        for name, fn, n_params in kernels:
            text = (generate_c if rows_only else generate_columns_c)(name, fn, n_params, columns)
            parts.append(text.replace("_SFX(", f"_{sfx}("))
        for name, fn, pair_columns in pairwise:
            parts.append(generate_pairwise_c(name, fn, pair_columns).replace("_SFX(", f"_{sfx}("))
        parts.append(extra)
        parts.append("#undef R\n#undef SFX\n" + "".join(f"#undef BL_{k}\n" for k in names if k != "R"))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Triton generation (forward only): the pairwise scores on CUDA
# ----------------------------------------------------------------------------------------------------------
_T_BIN = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
          "gt": "({a} > {b})", "ge": "({a} >= {b})", "lt": "({a} < {b})", "le": "({a} <= {b})",
          "eq": "({a} == {b})", "ne": "({a} != {b})", "and": "({a} & {b})", "or": "({a} | {b})",
          "max": "tl.maximum({a}, {b})", "min": "tl.minimum({a}, {b})", "clamp_min": "tl.maximum({a}, {b})",
          "clamp_max": "tl.minimum({a}, {b})", "atan2": "_atan2({a}, {b})"}
_T_UN = {"neg": "(-{a})", "not": "(~{a})", "detach": "{a}", "exp": "tl.exp({a})", "log": "tl.log({a})",
         "log1p": "tl.log(1.0 + {a})", "expm1": "(tl.exp({a}) - 1.0)", "sqrt": "tl.sqrt({a})", "sin": "tl.sin({a})",
         "cos": "tl.cos({a})", "abs": "tl.abs({a})", "floor": "tl.floor({a})"}


# maximum/minimum/clamp that propagate a NaN from either side, as torch's do (tl.maximum/tl.minimum return the
# other operand, like fmax): for the formulas that rely on them to propagate NaN (the axis-aligned variants)
_T_NAN_MINMAX = {"max": "tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})",
                 "min": "tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})",
                 "clamp_min": "tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})",
                 "clamp_max": "tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})"}


def _triton_expr(e: Expr, inputs: Dict[str, str], nan_minmax: bool = False) -> str:
    x = [f"v{arg.index}" for arg in e.args]
    if nan_minmax and e.op in _T_NAN_MINMAX:
        return _T_NAN_MINMAX[e.op].format(a=x[0], b=x[1])
    if e.op == "const":
        return repr(float(e.value)) if math.isfinite(e.value) else ("float('inf')" if e.value > 0 else
                                                                    "float('-inf')")
    if e.op == "input":
        return inputs[e.value]
    if e.op == "where":
        return f"tl.where({x[0]}, {x[1]}, {x[2]})"
    if e.op in _T_BIN:
        return _T_BIN[e.op].format(a=x[0], b=x[1])
    if e.op in _T_UN:
        return _T_UN[e.op].format(a=x[0])
    raise NotImplementedError(f"no Triton form for {e.op}")


def additive_terms(out: Expr) -> List[Expr]:
    """The terms of the sum at the top of a formula's graph: ``a + b + c`` gives ``[a, b, c]``."""
    if out.op == "add":
        return additive_terms(out.args[0]) + additive_terms(out.args[1])
    return [out]


def split_sum(out: Expr, min_nodes: int = 64) -> List[Expr]:
    """The formula as a sum of parts worth a kernel each: its terms of at least ``min_nodes`` nodes, the small
    ones (a NaN guard, a constant) added to the first. One part (``[out]``) when fewer than two are that large."""
    terms = additive_terms(out)
    sizes = [sum(_live(term)) for term in terms]
    heavy = [term for term, size in zip(terms, sizes) if size >= min_nodes]
    if len(heavy) < 2:
        return [out]
    first = heavy[0]
    for term, size in zip(terms, sizes):
        if size < min_nodes:
            first = first + term
    return [first] + heavy[1:]


def generate_triton_aligned(name: str, fn: Callable, n_params: int, columns: int, nan_minmax: bool = False,
                            split_terms: bool = False) -> str:
    """Source of a ``@triton.jit`` kernel ``name(P, T, PRM, W, L, GP, GT, n, eps, ulp, scale, has_w, need_p,
    need_t, reduce, BLOCK)``: per box of ``P``, ``T`` ``(n, columns)`` (float32, float16 or bfloat16, read as
    they are and computed in float32), the loss ``fn(p, t, m, *prm)`` and its local gradients (the reverse pass
    of :func:`generate_c`, spelled in Triton), times the weight and ``scale``; ``reduce != 0``: one partial
    weighted sum per block into ``L``. The flags are runtime arguments: one compiled kernel per formula.
    ``nan_minmax``: maximum, minimum and the clamps propagate NaN (for formulas that rely on them to; the rotated
    ones propagate NaN themselves and use the plain, cheaper forms).

    ``split_terms``: one kernel per large term of the sum at the top of the formula (:func:`split_sum`), named
    ``name_t0``, ``name_t1``, …, with the same arguments, launched in order on the same outputs. Each computes only
    what its term needs (the geometry the terms share is computed again by each), so that its reverse pass keeps
    fewer values live than a GPU thread has registers. The first stores its term's loss and gradients, the next
    ones add theirs to what is there; with ``reduce``, term ``j`` writes its partial sums to
    ``L + j * num_programs + pid``. A NaN term gives NaN gradients, and so the sum does."""
    g, out, p, t, _params = trace(fn, n_params, columns)
    roots = split_sum(out) if split_terms else [out]
    if len(roots) == 1:
        return _triton_aligned_kernel(name, g, out, p, t, n_params, columns, nan_minmax, 0)
    return "\n\n".join(_triton_aligned_kernel(f"{name}_t{j}", g, root, p, t, n_params, columns, nan_minmax, j)
                       for j, root in enumerate(roots))


def _triton_aligned_kernel(name: str, g: "Graph", out: Expr, p: Sequence[Expr], t: Sequence[Expr], n_params: int,
                           columns: int, nan_minmax: bool, term: int) -> str:
    """One kernel of :func:`generate_triton_aligned`: the value of ``out`` and its gradients; ``term > 0`` adds
    them to the outputs instead of storing them."""
    live = _live(out)
    nodes = [e for e in g.nodes if live[e.index]]
    needs = _needs_grad(nodes)
    inputs = {"eps": "eps", "ulp": "ulp"}
    inputs.update({f"p{k}": f"tl.load(P + base + {k}, mask=mask, other=1.0).to(tl.float32)"
                   for k in range(columns)})
    inputs.update({f"t{k}": f"tl.load(T + base + {k}, mask=mask, other=1.0).to(tl.float32)"
                   for k in range(columns)})
    inputs.update({f"q{k}": f"tl.load(PRM + {k})" for k in range(n_params)})
    lines = [
        "@triton.jit",
        f"def {name}(P, T, PRM, W, L, GP, GT, n, eps, ulp, scale, has_w, need_p, need_t, reduce,",
        "        BLOCK: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    offs = pid * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offs < n",
        f"    base = offs.to(tl.int64) * {columns}",
        "    zero = tl.zeros((BLOCK,), dtype=tl.float32)",
    ]
    lines += [f"    v{e.index} = {_triton_expr(e, inputs, nan_minmax)}" for e in nodes]
    partial = "L + pid" if term == 0 else f"L + pid + {term} * tl.num_programs(0)"
    stored = "loss" if term == 0 else "tl.load(L + offs, mask=mask, other=0.0) + loss"
    lines += [
        f"    loss = v{out.index} + zero",
        "    f = tl.load(W + offs, mask=mask & (has_w != 0), other=1.0) * scale",
        "    if reduce != 0:",
        f"        tl.store({partial}, tl.sum(tl.where(mask, f * loss, 0.0), axis=0))",
        "    else:",
        f"        tl.store(L + offs, {stored}, mask=mask)",
        "    if need_p + need_t != 0:",
    ]
    body = [f"a{e.index} = zero" for e in nodes if needs[e.index]]
    if needs[out.index]:
        body.append(f"a{out.index} = zero + 1.0")
    body += [f"a{i} = a{i} + {expr}" for i, expr in _reverse(nodes, needs, _TRITON_SPELLING)]
    body.append("nan = loss != loss")
    for cols, ptr, flag in ((p, "GP", "need_p"), (t, "GT", "need_t")):
        body.append(f"if {flag} != 0:")
        for k, e in enumerate(cols):
            grad = f"a{e.index}" if needs.get(e.index) and live[e.index] else "zero"
            value = f"f * tl.where(nan, loss, {grad})"
            if term:
                value = f"tl.load({ptr} + base + {k}, mask=mask, other=0.0) + {value}"
            body.append(f"    tl.store({ptr} + base + {k}, {value}, mask=mask)")
    lines += [f"        {line}" for line in body]
    return "\n".join(lines) + "\n"


def generate_triton_pairwise(name: str, fn: Callable, columns: int) -> str:
    """Source of a ``@triton.jit`` kernel ``name(A, B, OUT, n, m, eps, ulp, BLOCK_N, BLOCK_M)``: ``fn(a, b, m)``
    for a ``BLOCK_N × BLOCK_M`` tile of pairs of rows of ``A`` ``(batch, n, columns)`` and ``B``
    ``(batch, m, columns)`` (float32, contiguous), forward only, into ``OUT`` ``(batch, n, m)`` float32. The
    formula's min/max do not propagate NaN: only for formulas that propagate it themselves."""
    g = Graph()
    m = SymbolicMath(g)
    a = [g.input(f"p{k}") for k in range(columns)]
    b = [g.input(f"t{k}") for k in range(columns)]
    out = fn(tuple(a), tuple(b), m)
    live = _live(out)
    lines = [
        "@triton.jit",
        f"def {name}(A, B, OUT, n, m, eps, ulp, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):",
        "    bid = tl.program_id(2).to(tl.int64)",
        "    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)",
        "    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    rm = rows < n",
        "    cm = cols < m",
        f"    ab = (bid * n + rows) * {columns}",
        f"    bb = (bid * m + cols) * {columns}",
    ]
    inputs = {"eps": "eps", "ulp": "ulp"}
    inputs.update({f"p{k}": f"tl.load(A + ab + {k}, mask=rm, other=1.0).to(tl.float32)[:, None]"
                   for k in range(columns)})
    inputs.update({f"t{k}": f"tl.load(B + bb + {k}, mask=cm, other=1.0).to(tl.float32)[None, :]"
                   for k in range(columns)})
    lines += [f"    v{e.index} = {_triton_expr(e, inputs)}" for e in g.nodes if live[e.index]]
    lines += [
        f"    res = v{out.index} + tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)",
        "    ptr = OUT + (bid * n + rows[:, None]) * m + cols[None, :]",
        "    tl.store(ptr, res, mask=rm[:, None] & cm[None, :])",
    ]
    return "\n".join(lines) + "\n"
