"""``python -m boxloss.info --check``: every backend of every kind against the reference, on every device here.

What it runs, per device (the CPU, and each CUDA device) and per backend that can run there (the compiled C
kernels and the PyTorch closed form on the CPU; the Triton kernels and the PyTorch closed form on CUDA):

* every aligned kind (the IoU family, each loss variant with typical parameters, the rotated and Gaussian
  losses) through ``boxloss::aligned_loss`` (or its Triton twin): the per-box loss and both local gradients,
  against the plain-PyTorch reference (:mod:`boxloss.boxes`, the variants' formulas: what ``BOXLOSS_FAST=0``
  runs) on the same inputs, in the precision it computes them in (float64 for float64, float32 below), its
  gradients by autograd;
* every pairwise score (IoU, GIoU, DIoU, CIoU, the rotated IoU, GIoU and DIoU) through
  ``boxloss::pairwise_score``, likewise;
* float64, float32, float16 and bfloat16 inputs, where the backend takes them;
* a small fuzz with the degenerate boxes training produces: identical and nearly identical pairs, zero-size
  boxes, far-apart pairs, touching edges, inverted corners, and one NaN coordinate: that pair's loss must be
  NaN (NaN in, NaN out) and every other output finite.

It prints one line per device, backend and kind, and returns non-zero on any mismatch. Tolerances: 1e-9
relative (float64), 1e-4 (float32 and below, relative to the value's size), gradients 1e-3.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch
from torch import Tensor

from . import kinds
from .backends import ops

# typical parameter values of the variants (the public functions' defaults where they have one)
PARAMS = {"theta": 4.0, "gamma": 0.5, "width": 640.0, "height": 480.0, "scale": 0.5, "constant": 12.8,
          "alpha": 3.0, "ratio": 0.8, "d": 0.0, "u": 0.95, "tau": 1.0, "beta": 2.0}
PAIRWISE_KINDS = ("iou", "giou", "diou", "ciou")
EPS = 1e-7
N = 256


def aligned_kinds() -> List[str]:
    """Every aligned kind: each registered formula (the IoU family and the variants) with typical parameters."""
    return [kinds.kind_of(name, *[PARAMS[p] for p in entry.params]) for name, entry in kinds.VARIANTS.items()]


def pairwise_kinds() -> List[str]:
    from .rotated import PAIRWISE_SCORES

    return list(PAIRWISE_KINDS) + list(PAIRWISE_SCORES)


def _columns(kind: str) -> int:
    if kind in PAIRWISE_KINDS:
        return 4
    if kinds.is_registered(kind):
        return kinds.parse(kind)[1].columns
    return 5  # the rotated pairwise scores


def fuzz(columns: int, n: int = N, seed: int = 0) -> tuple:
    """Pairs of boxes (float64) with the degenerate cases of training in the first rows; row 0 holds a NaN."""
    g = torch.Generator().manual_seed(seed)
    if columns == 4:
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
        p = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 1], 1)
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
        t = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 1], 1)
        t[1:20] = p[1:20]  # identical
        t[20:40] = p[20:40] + 1e-3  # nearly identical
        p[40:50, 2:] = p[40:50, :2]  # zero-size prediction
        t[50:55, 2:] = t[50:55, :2]  # point target
        t[55:65] = p[55:65] + 500  # far apart
        t[65:70, 0], t[65:70, 2] = p[65:70, 2], p[65:70, 2] + 5  # touching edges
        p[70:75] = p[70:75][:, [2, 3, 0, 1]]  # inverted corners
    else:
        p = torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64) * 200,
                       torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 5,
                       torch.rand(n, 1, generator=g, dtype=torch.float64) * 180 - 90], 1)
        t = p + torch.cat([torch.randn(n, 2, generator=g, dtype=torch.float64) * 5,
                           torch.randn(n, 2, generator=g, dtype=torch.float64),
                           torch.randn(n, 1, generator=g, dtype=torch.float64) * 10], 1)
        t[:, 2:4] = t[:, 2:4].abs() + 1
        t[1:20] = p[1:20]  # identical
        t[20:30] = p[20:30][:, [0, 1, 3, 2, 4]]  # the same box, turned by 90 degrees
        t[20:30, 4] += 90
        t[30:40] = p[30:40] + 1e-4  # nearly identical
        t[40:50, :2] = p[40:50, :2] + 1000  # far apart
    p[0, 0] = float("nan")
    return p, t


@contextlib.contextmanager
def _compiled_cpu(on: bool) -> Iterator[None]:
    before = ops.USE_COMPILED_CPU
    ops.USE_COMPILED_CPU = on
    try:
        yield
    finally:
        ops.USE_COMPILED_CPU = before


def backends(device: torch.device) -> list:
    """(name, aligned op, pairwise op, context, dtypes, why not) for the backends of ``device``."""
    if device.type == "cpu":
        dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
        compiled = ops.cpu_library() is not None
        return [("compiled C kernel", ops.aligned_loss_op, ops.pairwise_score_op, lambda: _compiled_cpu(True),
                 dtypes, None if compiled else "the C kernel could not be built (see python -m boxloss.info)"),
                ("PyTorch closed form", ops.aligned_loss_op, ops.pairwise_score_op, lambda: _compiled_cpu(False),
                 dtypes, None)]
    out = []
    from .backends.dispatch import _triton_reason

    why = _triton_reason(device)
    if why is None:
        from .backends import triton_kernels

        out.append(("Triton", triton_kernels.aligned_loss_triton, triton_kernels.pairwise_score_triton,
                    contextlib.nullcontext, (torch.float32, torch.float16, torch.bfloat16), None))
    else:
        out.append(("Triton", None, None, contextlib.nullcontext, (), why))
    out.append(("PyTorch closed form", ops.aligned_loss_op, ops.pairwise_score_op, contextlib.nullcontext,
                (torch.float64, torch.float32, torch.float16, torch.bfloat16), None))
    return out


def _error(got: Tensor, ref: Tensor, rel: float, floor: float = 1.0) -> float:
    """The largest |got − ref| over rel · max(|ref|, floor), NaN where they differ in NaN-ness: ≤ 1 passes."""
    got, ref = got.double().cpu(), ref.double().cpu()
    nan = torch.isnan(got) != torch.isnan(ref)
    if nan.any():
        return float("inf")
    both = ~torch.isnan(ref)
    if not both.any():
        return 0.0
    err = (got[both] - ref[both]).abs() / (rel * ref[both].abs().clamp_min(floor))
    return float(err.max()) if err.numel() else 0.0


def check_aligned(op, kind: str, dtype: torch.dtype, device: torch.device) -> dict:
    p64, t64 = fuzz(_columns(kind))
    p, t = p64.to(dtype), t64.to(dtype)  # the inputs as the backend sees them ...
    cd = ops.compute_dtype(dtype)  # ... and the reference on the same values, in the precision the reference
    rp = p.to(cd, copy=True).requires_grad_()  # path computes them in (float64 for float64, float32 below)
    rt = t.to(cd, copy=True).requires_grad_()
    ref = ops.reference_aligned(kind, rp, rt, None, None, EPS, False, 1.0)
    gp_ref, gt_ref = torch.autograd.grad(ref.nansum(), (rp, rt), allow_unused=True)
    gp_ref = torch.zeros_like(rp) if gp_ref is None else gp_ref
    gt_ref = torch.zeros_like(rt) if gt_ref is None else gt_ref
    with torch.no_grad():
        loss, gp, gt = op(p.to(device), t.to(device), None, None, kind, EPS, False, 1.0, True, True)
    rel = 1e-9 if dtype == torch.float64 else 1e-4
    ok_rows = torch.ones(len(p), dtype=torch.bool)
    ok_rows[0] = False
    value_err = _error(loss[1:], ref.detach()[1:], rel)
    grad_err = max(_error(gp[1:], gp_ref[1:], rel * 10), _error(gt[1:], gt_ref[1:], rel * 10))
    nan_in_nan_out = bool(torch.isnan(loss[0]).item())
    finite = bool(torch.isfinite(loss[ok_rows]).all() and torch.isfinite(gp[ok_rows]).all()
                  and torch.isfinite(gt[ok_rows]).all())
    return {"value": value_err, "grad": grad_err, "nan": nan_in_nan_out, "finite": finite}


def check_pairwise(op, kind: str, dtype: torch.dtype, device: torch.device) -> dict:
    a64, b64 = fuzz(_columns(kind), n=64, seed=1)
    a, b = a64.to(dtype), b64.to(dtype)
    cd = ops.compute_dtype(dtype)
    ref = ops.reference_pairwise(kind, a.to(cd)[None], b.to(cd)[None], EPS)[0]
    with torch.no_grad():
        got = op(a.to(device)[None], b.to(device)[None], kind, EPS)[0]
    rel = 1e-9 if dtype == torch.float64 else 1e-4
    nan_row = bool(torch.isnan(got[0]).all().item())
    finite = bool(torch.isfinite(got[1:]).all())
    return {"value": _error(got[1:], ref[1:], rel), "grad": 0.0, "nan": nan_row, "finite": finite}


def run(devices: Optional[list] = None) -> List[dict]:
    """One row per device, backend, kind and dtype: the errors (≤ 1 passes), NaN propagation, finiteness."""
    if devices is None:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    rows = []
    for device in devices:
        for name, aligned_op, pairwise_op, context, dtypes, why in backends(device):
            if why is not None:
                rows.append({"device": str(device), "backend": name, "kind": "(all)", "dtype": "-",
                             "skipped": why})
                continue
            jobs = [("aligned", k) for k in aligned_kinds()] + [("pairwise", k) for k in pairwise_kinds()]
            for family, kind in jobs:
                for dtype in dtypes:
                    with context():
                        try:
                            check = check_aligned if family == "aligned" else check_pairwise
                            result = check(aligned_op if family == "aligned" else pairwise_op, kind, dtype, device)
                        except Exception as exc:  # a crash is a failure of that backend, reported as such
                            result = {"error": f"{type(exc).__name__}: {exc}"}
                    result.update(device=str(device), backend=name, family=family, kind=kind,
                                  dtype=str(dtype).replace("torch.", ""))
                    result["passed"] = ("error" not in result and result["value"] <= 1 and result["grad"] <= 1
                                        and result["nan"] and result["finite"])
                    rows.append(result)
    return rows


def format_rows(rows: List[dict]) -> str:
    lines = [f"{'device':8} {'backend':20} {'kind':34} {'dtype':9} {'value':>8} {'grad':>8} {'NaN':>4} {'finite':>6}"
             "  result"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['device']:8} {r['backend']:20} {r['kind']:34} {r['dtype']:9} skipped: {r['skipped']}")
        elif "error" in r:
            lines.append(f"{r['device']:8} {r['backend']:20} {r['kind']:34} {r['dtype']:9} FAILED: {r['error']}")
        else:
            lines.append(f"{r['device']:8} {r['backend']:20} {r['kind']:34} {r['dtype']:9} {r['value']:8.3f} "
                         f"{r['grad']:8.3f} {'ok' if r['nan'] else 'NO':>4} {'ok' if r['finite'] else 'NO':>6}  "
                         f"{'ok' if r['passed'] else 'MISMATCH'}")
    checked = [r for r in rows if "passed" in r]
    failed = [r for r in checked if not r["passed"]]
    lines.append(f"\n{len(checked)} checks, {len(failed)} failed"
                 + (f" ({', '.join(sorted({r['backend'] + ' ' + r['kind'] for r in failed}))})" if failed else "")
                 + "; errors in units of the tolerance (at most 1 passes)")
    return "\n".join(lines)
