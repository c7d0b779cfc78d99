"""Speed and peak extra memory of boxloss against torchvision.ops (and torch.compile), measured side by side.

Every timing interleaves the implementations repetition by repetition (so that machine noise hits them
alike) and reports the median and the interquartile range; ratios are torchvision's median over boxloss'.
Peak extra memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what the inputs take; on the CPU, the
process's peak resident set above its level before the call (Linux: ``/proc/self/clear_refs`` resets the
peak). Only the public API is used.

    python benchmarks/bench_speed.py                       # CPU: 1M boxes, 20,000 × 1,000 pairs, scaling 1e3…1e7, plot
    python benchmarks/bench_speed.py --device cuda         # adds torch.compile and the GPU sizes
    python benchmarks/bench_speed.py --mode speed --sizes 10000,1000000 --repeats 20
    python benchmarks/bench_speed.py --mode variants       # each variant against torchvision's GIoU loss, N = 1e6
    python benchmarks/bench_speed.py --mode rotated        # rotated boxes: pairwise IoU against torchvision's,
                                                           # aligned losses against the plain-PyTorch reference
    python benchmarks/bench_speed.py --mode threads --busy 0,1,2 --threads 1,default,8 --no-memory
                                                           # every case at each thread setting, idle and with
                                                           # 1 and 2 other busy processes
    python benchmarks/bench_speed.py --mode threads --against compile --no-memory
                                                           # beside the plain formula under torch.compile

Writes bench_<device>.json and scaling_<device>.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torchvision
import torchvision.ops as tvops

import boxloss

TV_LOSSES = {"giou": tvops.generalized_box_iou_loss, "diou": tvops.distance_box_iou_loss,
             "ciou": tvops.complete_box_iou_loss}
BL_LOSSES = {"giou": boxloss.giou_loss, "diou": boxloss.diou_loss, "ciou": boxloss.ciou_loss}
# every loss variant with its default options (the peer: torchvision's GIoU loss, the cheapest IoU-family loss
# torchvision has; "reference": the same formula in plain PyTorch with autograd, boxloss' reference path)
VARIANTS = {
    "siou": (boxloss.siou_loss, {}), "eiou": (boxloss.eiou_loss, {}), "focal_eiou": (boxloss.focal_eiou_loss, {}),
    "wiou": (boxloss.wiou_loss, {}), "mpdiou": (boxloss.mpdiou_loss, {"image_size": (640, 640)}),
    "shape_iou": (boxloss.shape_iou_loss, {}), "nwd": (boxloss.nwd_loss, {}),
    "alpha_iou (ciou)": (boxloss.alpha_iou_loss, {"variant": "ciou"}),
    "inner_iou (ciou)": (boxloss.inner_iou_loss, {"variant": "ciou"}),
    "focaler_iou (siou)": (boxloss.focaler_iou_loss, {"variant": "siou"}),
}
PAIRWISE = {"box_iou": (boxloss.box_iou, tvops.box_iou),
            "generalized_box_iou": (boxloss.generalized_box_iou, tvops.generalized_box_iou)}


def random_boxes(n: int, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict, device, repeats: int, warmup: int = 2, min_sample: float = 0.0) -> dict:
    """{name: (median s, iqr s)} with the implementations interleaved repetition by repetition.

    ``min_sample`` (CPU): each sample times ``k`` calls in a row and records their mean, ``k`` chosen once per
    case (the same for every implementation) so that the fastest one's sample lasts at least that long; a
    0.1 ms call is then not one reading of a noisy clock on a shared machine (a stall still counts, in
    proportion)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    calls = 1
    if min_sample > 0 and device.type != "cuda":
        fastest = float("inf")
        for fn in fns.values():
            t0 = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - t0)
        calls = max(1, math.ceil(min_sample / max(fastest, 1e-7)))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if calls > 1:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter() - t0) / calls)
                continue
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0], s[0], s[0]]
        out[name] = (statistics.median(s), q[2] - q[0])
    return out


def _read_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def peak_extra_memory(fn, device) -> int:
    """Bytes above the level before the call that ``fn`` needed at its peak."""
    fn()  # warm-up: kernel builds and caches are not part of the call
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    before = _read_status("VmRSS")
    fn()
    return _read_status("VmHWM") - before


def loss_step(fn, p, t):
    def step():
        p.grad = None
        fn(p, t, reduction="sum").backward()
    return step


def aligned_impls(kind: str, p, t, with_compile: bool) -> dict:
    impls = {"boxloss": loss_step(BL_LOSSES[kind], p, t), "torchvision": loss_step(TV_LOSSES[kind], p, t)}
    if with_compile:
        # torch.compile of a training step calling boxloss: it captures the boxloss operator (no graph break)
        compiled = torch.compile(lambda a, b: BL_LOSSES[kind](a, b, reduction="sum"))
        impls["torch.compile(boxloss)"] = loss_step(lambda a, b, reduction: compiled(a, b), p, t)
    return impls


def bench_aligned(kinds, sizes, device, repeats, with_compile, memory: bool) -> list:
    rows = []
    for n in sizes:
        p = random_boxes(n, device, seed=1).requires_grad_()
        t = random_boxes(n, device, seed=2)
        floor = {"floor": lambda p=p: (p * 1.0).sum().backward()}
        for kind in kinds:
            impls = aligned_impls(kind, p, t, with_compile)
            times = time_interleaved({**impls, **floor}, device, repeats)
            row = {"op": f"{kind}_loss fwd+bwd", "n": n, "times": times}
            if memory:
                row["peak_extra_bytes"] = {name: peak_extra_memory(fn, device) for name, fn in impls.items()}
            rows.append(row)
            print(_row_text(row), file=sys.stderr)
        del p, t
    return rows


def bench_variants(sizes, device, repeats, memory: bool) -> list:
    rows = []
    for n in sizes:
        p = random_boxes(n, device, seed=1).requires_grad_()
        t = random_boxes(n, device, seed=2)
        for name, (fn, options) in VARIANTS.items():
            ours = loss_step(lambda a, b, reduction, fn=fn, o=options: fn(a, b, reduction=reduction, **o), p, t)

            def reference(ours=ours):
                with boxloss.backends.reference_path():
                    ours()

            impls = {"boxloss": ours, "torchvision": loss_step(tvops.generalized_box_iou_loss, p, t)}
            times = time_interleaved({**impls, "reference": reference}, device, repeats)
            row = {"op": f"{name} fwd+bwd (torchvision: giou)", "n": n, "times": times}
            if memory:
                row["peak_extra_bytes"] = {k: peak_extra_memory(f, device) for k, f in impls.items()}
            rows.append(row)
            print(_row_text(row), file=sys.stderr)
        del p, t
    return rows


def bench_pairwise(n: int, m: int, device, repeats, memory: bool) -> list:
    a, b = random_boxes(n, device, seed=3), random_boxes(m, device, seed=4)
    rows = []
    for name, (ours, theirs) in PAIRWISE.items():
        impls = {"boxloss": lambda f=ours: f(a, b), "torchvision": lambda f=theirs: f(a, b)}
        row = {"op": f"{name} pairwise", "n": f"{n}x{m}", "times": time_interleaved(impls, device, repeats),
               "output_bytes": n * m * 4}
        if memory:
            row["peak_extra_bytes"] = {k: peak_extra_memory(fn, device) for k, fn in impls.items()}
        rows.append(row)
        print(_row_text(row), file=sys.stderr)
    return rows


ROTATED_LOSSES = {
    "iou_loss": (boxloss.iou_loss, {"fmt": "cxcywhr"}), "giou_loss": (boxloss.giou_loss, {"fmt": "cxcywhr"}),
    "diou_loss": (boxloss.diou_loss, {"fmt": "cxcywhr"}), "probiou_loss": (boxloss.probiou_loss, {}),
    "gwd_loss": (boxloss.gwd_loss, {}), "kld_loss": (boxloss.kld_loss, {}), "kfiou_loss": (boxloss.kfiou_loss, {}),
}


def random_rotated(n: int, device, spread: float, size=(10.0, 100.0), seed=0):
    """cxcywhr boxes: centres uniform in a ``spread``-sized square, sides in ``size``, any angle."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * (size[1] - size[0]) + size[0]
    r = torch.rand(n, 1, generator=g) * 360 - 180
    return torch.cat([xy, wh, r], 1).to(device)


def _threads(fn, k: int):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(k)
        try:
            fn()
        finally:
            torch.set_num_threads(before)
    return run


def bench_rotated(n_pair: int, n_aligned: int, device, repeats, memory: bool) -> list:
    """Pairwise rotated IoU without gradient against torchvision's (no gradient, one CPU thread), on boxes that
    mostly overlap and on detection-like boxes spread over a 1000-px image; the aligned rotated losses with
    their gradient against boxloss' plain-PyTorch reference (the same formula, differentiated by autograd)."""
    rows = []
    for label, spread in (("dense, centres within 60 px", 60.0), ("spread over 1000 px", 1000.0)):
        a = random_rotated(n_pair, device, spread, seed=5)
        b = random_rotated(n_pair, device, spread, seed=6)
        ours = lambda a=a, b=b: boxloss.box_iou(a, b, fmt="cxcywhr")  # noqa: E731
        impls = {"boxloss": ours, "torchvision": lambda a=a, b=b: tvops.box_iou(a, b, fmt="cxcywhr")}
        if device.type == "cpu":
            impls["boxloss, 1 thread"] = _threads(ours, 1)
        frac = (tvops.box_iou(a[:500], b[:500], fmt="cxcywhr") > 0).float().mean().item()
        row = {"op": f"rotated box_iou pairwise, {label} ({frac:.0%} of pairs overlap)", "n": f"{n_pair}x{n_pair}",
               "times": time_interleaved(impls, device, max(3, repeats // 2)), "output_bytes": n_pair * n_pair * 4}
        if memory:
            row["peak_extra_bytes"] = {k: peak_extra_memory(impls[k], device) for k in ("boxloss", "torchvision")}
        rows.append(row)
        print(_row_text(row), file=sys.stderr)
    p = random_rotated(n_aligned, device, 1000.0, seed=7).requires_grad_()
    t = (p.detach() + random_rotated(n_aligned, device, 20.0, size=(-5.0, 5.0), seed=8) - 10).contiguous()
    for name, (fn, options) in ROTATED_LOSSES.items():
        ours = loss_step(lambda x, y, reduction, fn=fn, o=options: fn(x, y, reduction=reduction, **o), p, t)

        def reference(ours=ours):
            with boxloss.backends.reference_path():
                ours()

        impls = {"boxloss": ours, "reference": reference}
        row = {"op": f"rotated {name} fwd+bwd (peer: the plain-PyTorch reference)", "n": n_aligned,
               "times": time_interleaved(impls, device, repeats), "peer": "reference"}
        if memory:
            row["peak_extra_bytes"] = {k: peak_extra_memory(f, device) for k, f in impls.items()}
        rows.append(row)
        print(_row_text(row), file=sys.stderr)
    return rows


def plain_formula(kind: str):
    """What a user writes instead of boxloss: the loss in ten lines of PyTorch, one coordinate per ``(N, 1)``
    column (the form Inductor vectorises), summed. ``siou`` and ``wiou`` as detector code bases write them
    (for timing; on ordinary boxes their values agree with boxloss' to rounding)."""
    def loss(p, t):
        x1, y1, x2, y2 = p.unbind(-1)
        a1, b1, a2, b2 = t.unbind(-1)
        inter = (torch.min(x2, a2) - torch.max(x1, a1)).clamp_min(0) * (torch.min(y2, b2) - torch.max(y1, b1)).clamp_min(0)
        union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
        iou = inter / (union + 1e-7)
        cw, ch = torch.max(x2, a2) - torch.min(x1, a1), torch.max(y2, b2) - torch.min(y1, b1)
        if kind == "wiou":  # Wise-IoU v1: the enclosing size detached
            rho2 = ((x1 + x2 - a1 - a2) ** 2 + (y1 + y2 - b1 - b2) ** 2) / 4
            return (torch.exp(rho2 / (cw ** 2 + ch ** 2).detach().clamp_min(1e-7)) * (1 - iou)).sum()
        if kind == "siou":  # SIoU in the form detectors copy (angle, distance and shape costs)
            dx, dy = (a1 + a2 - x1 - x2) / 2, (b1 + b2 - y1 - y2) / 2
            sigma = torch.sqrt(dx ** 2 + dy ** 2) + 1e-7
            sin_a = torch.where(dx.abs() / sigma > math.sqrt(2) / 2, dy.abs() / sigma, dx.abs() / sigma)
            gamma = torch.cos(torch.arcsin(sin_a) * 2 - math.pi / 2) - 2
            dist = 2 - torch.exp(gamma * (dx / cw) ** 2) - torch.exp(gamma * (dy / ch) ** 2)
            w1, h1, w2, h2 = x2 - x1, y2 - y1, a2 - a1, b2 - b1
            ow, oh = (w1 - w2).abs() / torch.max(w1, w2), (h1 - h2).abs() / torch.max(h1, h2)
            shape = (1 - torch.exp(-ow)) ** 4 + (1 - torch.exp(-oh)) ** 4
            return (1 - iou + (dist + shape) / 2).sum()
        if kind == "giou":
            area_c = cw * ch
            return (1 - iou + (area_c - union) / (area_c + 1e-7)).sum()
        rho2 = ((x1 + x2 - a1 - a2) ** 2 + (y1 + y2 - b1 - b2) ** 2) / 4
        out = 1 - iou + rho2 / (cw ** 2 + ch ** 2 + 1e-7)
        if kind == "ciou":
            v = (4 / math.pi ** 2) * (torch.atan((a2 - a1) / (b2 - b1)) - torch.atan((x2 - x1) / (y2 - y1))) ** 2
            with torch.no_grad():
                alpha = v / (1 - iou + v + 1e-7)
            out = out + alpha * v
        return out.sum()
    return loss


def plain_pairwise(name: str):
    """The pairwise score a user writes instead (``box_iou`` or ``generalized_box_iou``): one coordinate per
    ``(N, 1)`` and ``(1, M)`` column, broadcast to the ``(N, M)`` scores (the form Inductor fuses into one loop)."""
    def score(a, b):
        ax1, ay1, ax2, ay2 = (c[:, None] for c in a.unbind(-1))
        bx1, by1, bx2, by2 = (c[None, :] for c in b.unbind(-1))
        inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp_min(0) * \
            (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp_min(0)
        union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        iou = inter / union
        if name == "box_iou":
            return iou
        area_c = (torch.max(ax2, bx2) - torch.min(ax1, bx1)) * (torch.max(ay2, by2) - torch.min(ay1, by1))
        return iou - (area_c - union) / area_c
    return score


def compiled_steps(kind: str, ours, p, t) -> dict:
    """fwd+bwd steps compiled for the static shape: the plain formula of ``kind``, and boxloss' ``ours`` inside a
    compiled function."""
    steps = {}
    for label, fn in (("compile(formula)", plain_formula(kind)),
                      ("compile(boxloss)", lambda a, b: ours(a, b, reduction="sum")),
                      ("compile(boxloss reference)", lambda a, b: ours(a, b, reduction="sum"))):
        compiled = torch.compile(fn, dynamic=False)
        # "boxloss reference": what boxloss would hand Inductor instead of its operator (its own formula, with
        # the zero-overlap and degenerate-box handling), traced and run under reference_path()
        context = boxloss.backends.reference_path if label.endswith("reference)") else contextlib.nullcontext

        def step(compiled=compiled, context=context):
            p.grad = None
            with context():
                compiled(p, t).backward()
        steps[label] = step
    return steps


class BusyProcesses:
    """``k`` other processes that keep a core each busy (a Python loop) while the timings run: ``k`` = the number
    of cores is a machine whose data-loader workers decode images on every core."""

    def __init__(self, k: int) -> None:
        self.k, self.procs = k, []

    def __enter__(self):
        import subprocess

        # a Python loop that ends when its parent does (a benchmark killed before __exit__ leaves no spinner)
        loop = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(10**6):\n        pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(self.k)]
        time.sleep(0.5 if self.k else 0)  # let them reach the loop
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def _thread_settings(spec: str) -> list:
    """"1,default,8" -> [1, None, 8] (None: PyTorch's default for this machine)."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        out.append(None if item == "default" else int(item))
    return out


def _backoffs() -> int:
    """How often the CPU kernels have backed off to one thread after waiting for a descheduled thread (0 where
    this boxloss has no such counter)."""
    state = getattr(boxloss.backends.cpu, "busy_state", None)
    return state()["backoffs"] if state else 0


def bench_threads(sizes, thread_settings, busy_levels, repeats, against_compile: bool,
                  min_sample: float = 0.0) -> list:
    """The busy-machine table: every case at every thread setting and load, interleaved with its peer (and with
    the plain formula under ``torch.compile`` when asked)."""
    device = torch.device("cpu")
    default = torch.get_num_threads()
    if against_compile:
        # every case compiles the same Python functions again for its kind and shape: without a higher limit,
        # Dynamo stops after 8 recompilations per function and runs the later cases eagerly
        torch._dynamo.config.recompile_limit = 1024
        torch._dynamo.config.accumulated_recompile_limit = 4096
    cases = []
    for n in sizes:
        p = random_boxes(n, device, seed=1).requires_grad_()
        t = random_boxes(n, device, seed=2)
        for kind in BL_LOSSES:
            impls = {"boxloss": loss_step(BL_LOSSES[kind], p, t), "torchvision": loss_step(TV_LOSSES[kind], p, t)}
            if against_compile:
                impls.update(compiled_steps(kind, BL_LOSSES[kind], p, t))
            cases.append((f"{kind}_loss fwd+bwd", n, impls, "torchvision"))
    n = 100_000
    p = random_boxes(n, device, seed=1).requires_grad_()
    t = random_boxes(n, device, seed=2)
    for name in ("siou", "wiou"):
        fn = VARIANTS[name][0]
        impls = {"boxloss": loss_step(fn, p, t), "torchvision": loss_step(tvops.generalized_box_iou_loss, p, t)}
        if against_compile:
            impls.update(compiled_steps(name, fn, p, t))
        cases.append((f"{name} fwd+bwd (torchvision: giou)", n, impls, "torchvision"))
    rp = random_rotated(n, device, 1000.0, seed=7).requires_grad_()
    rt = (rp.detach() + random_rotated(n, device, 20.0, size=(-5.0, 5.0), seed=8) - 10).contiguous()
    ours = loss_step(lambda x, y, reduction: boxloss.giou_loss(x, y, fmt="cxcywhr", reduction=reduction), rp, rt)

    def reference(ours=ours):
        with boxloss.backends.reference_path():
            ours()
    cases.append(("rotated giou_loss fwd+bwd (peer: the reference)", n, {"boxloss": ours, "reference": reference},
                  "reference"))
    for n_rows in (2_000, 20_000):
        a, b = random_boxes(n_rows, device, seed=3), random_boxes(1_000, device, seed=4)
        for name, (f_ours, f_tv) in PAIRWISE.items():
            impls = {"boxloss": lambda f=f_ours, a=a, b=b: f(a, b), "torchvision": lambda f=f_tv, a=a, b=b: f(a, b)}
            if against_compile:
                for label, fn in (("compile(formula)", plain_pairwise(name)), ("compile(torchvision)", f_tv)):
                    compiled = torch.compile(fn, dynamic=False)
                    impls[label] = lambda compiled=compiled, a=a, b=b: compiled(a, b)
            cases.append((f"{name} pairwise", f"{n_rows}x1000", impls, "torchvision"))
    a, b = random_rotated(2_000, device, 1000.0, seed=5), random_rotated(2_000, device, 1000.0, seed=6)
    cases.append(("rotated box_iou pairwise, spread", "2000x2000", {
        "boxloss": lambda: boxloss.box_iou(a, b, fmt="cxcywhr"),
        "torchvision": lambda: tvops.box_iou(a, b, fmt="cxcywhr")}, "torchvision"))
    rows = []
    try:
        for busy in busy_levels:
            with BusyProcesses(busy):
                for threads in thread_settings:
                    torch.set_num_threads(threads or default)
                    for op, n, impls, peer in cases:
                        backoffs = _backoffs()
                        row = {"op": op, "n": n, "busy": busy, "threads": threads or f"default ({default})",
                               "times": time_interleaved(impls, device, repeats, min_sample=min_sample),
                               "peer": peer, "backoffs": _backoffs() - backoffs}
                        rows.append(row)
                        print(f"busy {busy}, threads {row['threads']}: " + _row_text(row), file=sys.stderr)
    finally:
        torch.set_num_threads(default)
    return rows


def threads_table(rows) -> str:
    """One line per case and load: the speed-up over the peer at each thread setting, and how much slower the
    slowest thread setting is than one thread."""
    settings = list(dict.fromkeys(str(r["threads"]) for r in rows))
    head = " | ".join(f"×peer, {s} thr" for s in settings)
    lines = [f"| op | n | busy | boxloss ms at {', '.join(settings)} threads | {head} | worst / 1 thread |",
             "|---|---|---:|---|" + "---:|" * len(settings) + "---:|"]
    by_case = {}
    for r in rows:
        by_case.setdefault((r["op"], str(r["n"]), r["busy"]), {})[str(r["threads"])] = r
    for (op, n, busy), per in by_case.items():
        ms = ", ".join(f"{per[s]['times']['boxloss'][0] * 1e3:.3f}" for s in settings if s in per)
        ratios = " | ".join(_ratios(per[s]) if s in per else "–" for s in settings)
        one = per.get("1")
        worst = max(per[s]["times"]["boxloss"][0] for s in per)
        slow = f"{worst / one['times']['boxloss'][0]:.2f}" if one else "–"
        lines.append(f"| {op} | {n} | {busy} | {ms} | {ratios} | {slow} |")
    return "\n".join(lines)


def compare_table(before_rows, after_rows) -> str:
    """``--mode threads`` against an earlier run (``--compare BEFORE.json``): boxloss' times before → after at
    each thread setting, the speed-up over the peer after, and the slowest setting over one thread, before →
    after."""
    def index(rows):
        out = {}
        for r in rows:
            out.setdefault((r["op"], str(r["n"]), r["busy"]), {})[str(r["threads"])] = r
        return out

    before, after = index(before_rows), index(after_rows)
    settings = list(dict.fromkeys(str(r["threads"]) for r in after_rows))
    lines = [f"| case | n | busy | boxloss ms before → after, at {' / '.join(settings)} thr | × peer after | "
             "slowest / 1 thread, before → after |", "|---|---|---:|---|---|---:|"]

    def slowest(per):
        one = per.get("1")
        return max(per[s]["times"]["boxloss"][0] for s in per) / one["times"]["boxloss"][0] if one else float("nan")

    for key, per in after.items():
        old = before.get(key, {})
        ms = " / ".join(
            (f"{old[s]['times']['boxloss'][0] * 1e3:.3g} → " if s in old else "") +
            f"**{per[s]['times']['boxloss'][0] * 1e3:.3g}**" for s in settings if s in per)
        peer = " / ".join(f"{per[s]['times'][per[s]['peer']][0] / per[s]['times']['boxloss'][0]:.1f}×"
                          for s in settings if s in per)
        slow = (f"{slowest(old):.2f} → " if old else "") + f"{slowest(per):.2f}"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {ms} | {peer} | {slow} |")
    return "\n".join(lines)


def _ratios(row) -> str:
    """The peer's time over boxloss', then (in brackets) every other implementation's, e.g. the compiled ones."""
    t = row["times"]
    ours = t["boxloss"][0]
    text = f"{t[row['peer']][0] / ours:.2f}×"
    others = [f"{name} {v[0] / ours:.2f}×" for name, v in t.items() if name not in ("boxloss", row["peer"])]
    return text + (f" ({', '.join(others)})" if others else "")


def _row_text(row) -> str:
    t = row["times"]
    return f"{row['op']} n={row['n']}: " + ", ".join(f"{k} {v[0] * 1e3:.3f} ms" for k, v in t.items())


def table(rows) -> str:
    lines = ["| op | n | boxloss ms | peer ms (torchvision, or as named) | speed-up | other | peak extra MB boxloss / "
             "peer | memory ratio |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        t = r["times"]
        peer = r.get("peer", "torchvision")  # the column "torchvision" holds the row's peer
        b, tv = t["boxloss"][0], t[peer][0]
        other = ", ".join(f"{k} {v[0] * 1e3:.3f} ms ({v[0] / b:.2f}× boxloss)" for k, v in t.items()
                          if k not in ("boxloss", peer))
        mem = r.get("peak_extra_bytes")
        mem_txt = f"{mem['boxloss'] / 2**20:.1f} / {mem[peer] / 2**20:.1f}" if mem else "–"
        ratio = f"{mem['boxloss'] / max(mem[peer], 1):.2f}" if mem else "–"
        lines.append(f"| {r['op']} | {r['n']} | {b * 1e3:.3f} (±{t['boxloss'][1] * 1e3:.3f}) | "
                     f"{tv * 1e3:.3f} (±{t[peer][1] * 1e3:.3f}) | {tv / b:.2f}× | {other or '–'} | "
                     f"{mem_txt} | {ratio} |")
    return "\n".join(lines)


def plot_scaling(rows, path: str, device_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    by_impl = {}
    for r in rows:
        for impl, (median, _) in r["times"].items():
            by_impl.setdefault(impl, []).append((r["n"], median * 1e3))
    for impl, pts in by_impl.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=impl)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("boxes N")
    ax.set_ylabel("giou_loss forward + backward (ms, median)")
    ax.set_title(f"scaling on {device_name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reexec_with_fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after large frees and then serves big blocks from a resident heap, which
    would hide them from the resident-set peak; a fixed threshold keeps every block over 128 KiB mmapped, so
    the peak resident set follows the live tensors. Set before the process starts, hence the re-exec."""
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["all", "speed", "pairwise", "scaling", "variants", "rotated", "threads"],
                        default="all")
    parser.add_argument("--busy", default="0", help="--mode threads: comma-separated numbers of other busy "
                                                     "processes to time under (e.g. 0,1,2: idle, one, every core)")
    parser.add_argument("--threads", default="1,default,8",
                        help="--mode threads: comma-separated torch.set_num_threads settings ('default': PyTorch's)")
    parser.add_argument("--against", choices=["torchvision", "compile"], default="torchvision",
                        help="--mode threads: 'compile' also times the plain formula under torch.compile")
    parser.add_argument("--min-sample-ms", type=float, default=2.0,
                        help="--mode threads: each timing sample repeats the call until it lasts this long")
    parser.add_argument("--compare", help="--mode threads: an earlier run's JSON, printed before → after")
    parser.add_argument("--sizes", help="comma-separated N for the aligned losses (default: 1,000,000 on the CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="default 7 on CPU, 50 on CUDA")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the boxloss step (on CPU)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but CUDA is not available")
    cuda = device.type == "cuda"
    repeats = args.repeats or (50 if cuda else 7)
    with_compile = cuda or args.compile
    memory = not args.no_memory
    device_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    rows = {}
    if args.mode in ("all", "speed"):
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([10_000, 10_000_000] if cuda
                                                                             else [1_000_000])
        rows["aligned"] = bench_aligned(list(BL_LOSSES), sizes, device, repeats, with_compile, memory)
    if args.mode in ("all", "variants"):
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes and args.mode == "variants" else [1_000_000]
        rows["variants"] = bench_variants(sizes, device, repeats, memory)
    if args.mode in ("all", "pairwise"):
        n, m = (200_000, 1_000) if cuda else (20_000, 1_000)
        rows["pairwise"] = bench_pairwise(n, m, device, repeats, memory)
    if args.mode in ("all", "rotated"):
        n_pair, n_aligned = (20_000, 1_000_000) if cuda else (2_000, 100_000)
        rows["rotated"] = bench_rotated(n_pair, n_aligned, device, repeats, memory)
    if args.mode == "threads":
        if cuda:
            parser.error("--mode threads times the CPU kernels")
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [1_000, 10_000, 100_000, 1_000_000]
        rows["threads"] = bench_threads(sizes, _thread_settings(args.threads),
                                        [int(k) for k in args.busy.split(",")], repeats, args.against == "compile",
                                        args.min_sample_ms / 1000)
    if args.mode in ("all", "scaling"):
        sizes = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
        rows["scaling"] = bench_aligned(["giou"], sizes, device, max(3, repeats // 2), with_compile, False)
    os.makedirs(args.out, exist_ok=True)
    tag = device.type if args.mode == "all" else f"{device.type}_{args.mode}"
    if args.mode == "threads" and args.against == "compile":
        tag += "_compile"  # results/bench_cpu_threads_compile.json, beside the run against torchvision
    payload = {"device": device_name, "device_type": device.type, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "torchvision": torchvision.__version__, "boxloss": boxloss.__version__,
               "python": platform.python_version(), "repeats": repeats, "results": rows}
    with open(os.path.join(args.out, f"bench_{tag}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    if "scaling" in rows:
        plot_scaling(rows["scaling"], os.path.join(args.out, f"scaling_{tag}.png"), device_name)
    print(f"device: {device_name}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads, median of {repeats} interleaved repeats")
    for section, r in rows.items():
        print(f"\n### {section}\n")
        print(threads_table(r) if section == "threads" else table(r))
        if section == "threads" and args.compare:
            with open(args.compare) as f:
                print("\n" + compare_table(json.load(f)["results"]["threads"], r))
    return payload


if __name__ == "__main__":
    if "--no-memory" not in sys.argv and "cuda" not in sys.argv:
        _reexec_with_fixed_mmap_threshold()
    main()
