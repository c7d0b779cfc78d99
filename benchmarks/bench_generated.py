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

``--pairwise`` times the pairwise scores (IoU, GIoU, DIoU, CIoU, no gradient) at 20,000 × 1,000 boxes:
``classic.c``'s hand-written kernel against C generated from the same formulas (the generator's pairwise form,
built here into the kernel cache), float32 and float64.

Triton cannot be timed without a GPU; ``--triton`` compiles the hand-written Triton kernel of each classic loss
(value and gradients, float32) and the one generated from its formula ahead of time for sm_80 and sm_90, and
reports what the compiler gives: registers per thread, bytes of spill stores (``ptxas -v``) and the PTX
instructions.

    python benchmarks/bench_generated.py            # writes benchmarks/results/bench_generated_cpu.json
    python benchmarks/bench_generated.py --triton   # the Triton kernels, compiled ahead of time (no GPU needed)
    python benchmarks/bench_generated.py --pairwise # the pairwise scores
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


def triton_static(kinds_: list, archs=(80, 90)) -> list:
    """The hand-written Triton kernel of each classic kind against the one generated from its formula, compiled
    ahead of time: registers, spills and PTX instructions (value and both gradients, float32 boxes)."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from boxloss import expr
    from boxloss.backends import kernel_cache, triton_kernels
    from boxloss.backends.closed_form import KIND_CODES

    source = ("import triton\nimport triton.language as tl\n\n"
              "from boxloss.backends.triton_kernels import _atan2  # noqa: F401\n\n\n"
              + "\n\n".join(expr.generate_triton_aligned(f"_g_{kind}", FORMULAS[kind], 0, 4, nan_minmax=True)
                            for kind in kinds_))
    module = kernel_cache.python_module("bench_triton_classic", source)
    hand_sig = next(sig for name, sig, c in triton_kernels.launch_specialisations()
                    if name == "_aligned_kernel" and sig["P"] == "*fp32")
    gen_sig = next(sig for name, sig, c in triton_kernels.launch_specialisations()
                   if name.startswith("generated.") and sig["P"] == "*fp32")
    rows = []
    for arch in archs:
        for kind in kinds_:
            for label, fn, sig, const in (
                    ("hand-written", triton_kernels._aligned_kernel, hand_sig,
                     {"KIND": KIND_CODES[kind], "NEED_GRAD": True, "REDUCE": False, "USE_LIBDEVICE": True,
                      "BLOCK": triton_kernels.BLOCK}),
                    ("generated", getattr(module, f"_g_{kind}"), gen_sig, {"BLOCK": generated_block()})):
                kernel = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", arch, 32),
                                        options=triton_kernels.LAUNCH_OPTIONS)
                per_thread = const["BLOCK"] // (32 * kernel.metadata.num_warps)  # boxes each thread computes
                ptx = kernel.asm["ptx"]
                regs, spill = triton_kernels.ptxas_usage(ptx, arch)
                instructions = len(re.findall(r"^\s+(?!//)[a-z][\w.]*\s[^\n]*;\s*$", ptx, re.M))
                rows.append({"arch": f"sm_{arch}", "kind": kind, "kernel": label, "boxes per thread": per_thread,
                             "registers": regs, "spill bytes": spill, "PTX instructions": instructions,
                             "PTX instructions per box": instructions / per_thread})
                print(f"sm_{arch} {kind} {label}: {per_thread} boxes per thread, {regs} registers, {spill} B "
                      f"spilled, {instructions} PTX instructions", file=sys.stderr)
    return rows


PAIRWISE_SCORES = {"iou": lambda a, b, m: _pair.Pair(a, b, m).iou,
                   "giou": lambda a, b, m: 1 - _pair.giou_formula(a, b, m),
                   "diou": lambda a, b, m: 1 - _pair.diou_formula(a, b, m),
                   "ciou": lambda a, b, m: 1 - _pair.ciou_formula(a, b, m)}


def pairwise_side_by_side(n: int, m: int, repeats: int) -> list:
    """classic.c's pairwise scores against C generated from the formulas, timed interleaved (no gradient)."""
    from boxloss import expr
    from boxloss.backends import generated, kernel_cache

    text = expr.generate_library([], runtime=generated.c_runtime(), columns=4, nan_minmax=True,
                                 pairwise=[(f"bench_pw_{kind}", fn, 4) for kind, fn in PAIRWISE_SCORES.items()])
    compiler = cpu._compiler()
    directory = kernel_cache.first_writable()
    path, _ = cpu._compile(compiler, directory,
                           lambda flags: kernel_cache.module_name("bench_pairwise", text + " ".join(flags)) + ".so",
                           text)
    import ctypes

    lib = ctypes.CDLL(path)
    cpu._declare_wait(lib)
    hand = cpu.load()
    rows = []
    for dtype in (torch.float32, torch.float64):
        a, b = random_boxes(n, dtype, 3)[None], random_boxes(m, dtype, 4)[None]
        columns = b.transpose(1, 2).contiguous()
        for kind in PAIRWISE_SCORES:
            fn = getattr(lib, f"bench_pw_{kind}_" + ("f64" if dtype == torch.float64 else "f32"))
            fn.restype, fn.argtypes = None, [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_double,
                                                                                          ctypes.c_int]

            def gen(fn=fn, a=a, columns=columns):
                out = a.new_empty(1, n, m)
                threads = cpu.threads_for(n * m, cpu.GRAIN["pairwise"])
                fn(a.data_ptr(), columns.data_ptr(), out.data_ptr(), 1, n, m, 1e-7, threads)
                return out

            def hand_written(kind=kind, a=a, b=b):
                return cpu.run_pairwise(hand, kind, a, b, 1e-7)

            torch.testing.assert_close(gen(), hand_written(), rtol=1e-5, atol=1e-5)
            times = time_pair({"hand-written": hand_written, "generated": gen}, repeats)
            row = {"backend": "compiled C kernel, pairwise", "dtype": str(dtype).replace("torch.", ""),
                   "n": f"{n}x{m}", "kind": kind, "hand-written ms": times["hand-written"] * 1e3,
                   "generated ms": times["generated"] * 1e3,
                   "generated / hand-written": times["generated"] / times["hand-written"]}
            rows.append(row)
            print(f"pairwise {row['dtype']} {kind}: hand-written {row['hand-written ms']:.2f} ms, generated "
                  f"{row['generated ms']:.2f} ms ({row['generated / hand-written']:.2f}×)", file=sys.stderr)
    return rows


def generated_block() -> int:
    from boxloss.backends import generated

    return generated.TRITON_ALIGNED_BLOCK


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000,10000000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--kinds", default=",".join(FORMULAS), help="comma-separated kinds (default: all)")
    parser.add_argument("--backends", default="c,closed_form", help="c, closed_form or both (default)")
    parser.add_argument("--pairwise", action="store_true",
                        help="time the pairwise scores (20,000 × 1,000) instead of the aligned losses")
    parser.add_argument("--triton", action="store_true",
                        help="compile the Triton kernels ahead of time (sm_80, sm_90) instead of timing the CPU ones")
    args = parser.parse_args(argv)
    rows = []
    chosen = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(chosen) - set(FORMULAS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {sorted(FORMULAS)}")
    if args.pairwise:
        rows = pairwise_side_by_side(20_000, 1_000, args.repeats)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_generated_cpu_pairwise.json"), "w") as f:
            json.dump({"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "boxloss": boxloss.__version__, "repeats": args.repeats,
                       "rows": rows}, f, indent=1)
        print("| dtype | kind | hand-written ms | generated ms | generated / hand-written |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['dtype']} | {r['kind']} | {r['hand-written ms']:.3g} | {r['generated ms']:.3g} | "
                  f"{r['generated / hand-written']:.2f}× |")
        return {"rows": rows}
    if args.triton:
        rows = triton_static(chosen)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_generated_triton_aot.json"), "w") as f:
            json.dump({"rows": rows}, f, indent=1)
        print("| arch | kind | hand-written: boxes per thread, registers, spill B, PTX instructions per box | "
              "generated |")
        print("|---|---|---:|---:|")
        for hand, gen in zip(rows[::2], rows[1::2]):
            cells = [f"{r['boxes per thread']}, {r['registers']}, {r['spill bytes']}, {r['PTX instructions per box']:.0f}"
                     for r in (hand, gen)]
            print(f"| {hand['arch']} | {hand['kind']} | {cells[0]} | {cells[1]} |")
        return {"rows": rows}
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
