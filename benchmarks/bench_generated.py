"""The hand-written kernels of the classic losses against the kernels generated from their formulas, side by side.

Before a hand-written kernel is replaced by one generated from the formula (one formula, every backend), the two
are timed in one run: fwd+bwd of the weighted sum through the ``boxloss::aligned_loss`` operator, interleaved,
at N = 1e3 … 1e7 boxes, float32 and float64, for each CPU backend:

* the compiled C kernels: ``classic.c`` (hand-written) against C generated from the formulas in
  ``boxloss.losses._pair``. ``classic.c`` keeps the kinds whose hand-written kernel was faster (``cpu.HAND_WRITTEN_ALIGNED``:
  ``log_iou_distance`` and ``ciou``); the others run the generated kernels, so only those two are compared now (the
  full comparison that decided it is in ``benchmarks/RESULTS.md``);
* the PyTorch closed form: ``backends/closed_form.py`` (hand-derived) against the closed form evaluated from the same
  expression graphs.

The generated kinds are registered by this script under the names ``formula_<kind>`` (in this process only);
their values are checked against the hand-written kernels' before timing.

    python benchmarks/bench_generated.py            # writes benchmarks/results/bench_generated_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import boxloss
from boxloss import kinds
from boxloss.backends import aligned_loss, cpu, ops
from boxloss.kinds import kind_of
from boxloss.losses import _pair

FORMULAS = {"iou": _pair.iou_formula, "iou_distance": _pair.iou_distance_formula, "log_iou": _pair.log_iou_formula,
            "log_iou_distance": _pair.log_iou_distance_formula, "giou": _pair.giou_formula,
            "diou": _pair.diou_formula, "ciou": _pair.ciou_formula}
for _kind, _formula in FORMULAS.items():
    kinds.register(f"formula_{_kind}", _formula)


def random_boxes(n: int, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], 1).to(dtype)


def step(kind: str, p, t):
    def run():
        p.grad = None
        aligned_loss(kind, p, t, 1e-7, "sum").backward()
    return run


def time_pair(fns: dict, repeats: int, min_sample: float = 2e-3) -> dict:
    for fn in fns.values():
        fn()
        fn()
    fastest = min(_once(fn) for fn in fns.values())
    calls = max(1, int(min_sample / max(fastest, 1e-7)) + 1)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(s) for name, s in samples.items()}


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000,10000000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--kinds", default=",".join(FORMULAS), help="comma-separated kinds (default: all)")
    parser.add_argument("--backends", default="c,closed_form", help="c, closed_form or both (default)")
    args = parser.parse_args(argv)
    rows = []
    chosen = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(chosen) - set(FORMULAS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {sorted(FORMULAS)}")
    backends = [(name, compiled) for key, name, compiled in (("c", "compiled C kernel", True),
                                                             ("closed_form", "PyTorch closed form", False))
                if key in args.backends.split(",")]
    for backend, compiled in backends:
        ops.USE_COMPILED_CPU = compiled
        for dtype in (torch.float32, torch.float64):
            for n in (int(s) for s in args.sizes.split(",")):
                if not compiled and n > 1_000_000:
                    continue  # the closed form at 1e7 boxes: minutes per case, and the trend is clear by 1e6
                p = random_boxes(n, dtype, 1).requires_grad_()
                t = random_boxes(n, dtype, 2)
                for kind in chosen:
                    if compiled and kind not in cpu.HAND_WRITTEN_ALIGNED:
                        continue  # no hand-written C kernel left to compare with
                    generated = kind_of(f"formula_{kind}")
                    with torch.no_grad():  # the two must agree before their speed means anything
                        a = aligned_loss(kind, p[:4096], t[:4096], 1e-7, "none")
                        b = aligned_loss(generated, p[:4096], t[:4096], 1e-7, "none")
                    tol = 1e-12 if dtype == torch.float64 else 1e-5
                    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
                    times = time_pair({"hand-written": step(kind, p, t), "generated": step(generated, p, t)},
                                      args.repeats)
                    row = {"backend": backend, "dtype": str(dtype).replace("torch.", ""), "n": n, "kind": kind,
                           "hand-written ms": times["hand-written"] * 1e3, "generated ms": times["generated"] * 1e3,
                           "generated / hand-written": times["generated"] / times["hand-written"]}
                    rows.append(row)
                    print(f"{backend}, {row['dtype']}, n={n}, {kind}: hand-written {row['hand-written ms']:.3f} ms, "
                          f"generated {row['generated ms']:.3f} ms ({row['generated / hand-written']:.2f}×)",
                          file=sys.stderr)
    ops.USE_COMPILED_CPU = True
    payload = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "boxloss": boxloss.__version__, "repeats": args.repeats, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    suffix = "" if (chosen == list(FORMULAS) and len(backends) == 2) else "_" + "_".join(chosen)
    with open(os.path.join(args.out, f"bench_generated_cpu{suffix}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    print("| backend | dtype | N | kind | hand-written ms | generated ms | generated / hand-written |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['dtype']} | {r['n']:,} | {r['kind']} | {r['hand-written ms']:.3g} | "
              f"{r['generated ms']:.3g} | {r['generated / hand-written']:.2f}× |")
    return payload


if __name__ == "__main__":
    main()
