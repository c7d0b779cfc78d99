"""boxloss.backends: every fast path against the plain-PyTorch reference, in values and gradients."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import disjoint_pairs, overlapping_pairs, random_boxes, requires_cuda
from test_edges import _all_pairs

import boxloss
from boxloss import backends, kinds

LOSSES = {
    "iou": lambda p, t: boxloss.iou_loss(p, t, reduction="none", zero_overlap="none"),
    "iou_distance": lambda p, t: boxloss.iou_loss(p, t, reduction="none"),
    "log_iou": lambda p, t: boxloss.log_iou_loss(p, t, reduction="none", zero_overlap="none"),
    "log_iou_distance": lambda p, t: boxloss.log_iou_loss(p, t, reduction="none"),
    "giou": lambda p, t: boxloss.giou_loss(p, t, reduction="none"),
    "diou": lambda p, t: boxloss.diou_loss(p, t, reduction="none"),
    "ciou": lambda p, t: boxloss.ciou_loss(p, t, reduction="none"),
}
PAIRWISE = {"iou": boxloss.box_iou, "giou": boxloss.generalized_box_iou, "diou": boxloss.distance_box_iou,
            "ciou": boxloss.complete_box_iou}
def _cases(dtype):
    a, b = overlapping_pairs(300, seed=1)
    c, d = disjoint_pairs(300, seed=2)
    e, f = _all_pairs()  # degenerate, inverted, huge, identical
    g = random_boxes(50, seed=3)
    pred = torch.cat([a, c, e.double(), g]).to(dtype)
    target = torch.cat([b, d, f.double(), g]).to(dtype)
    return pred, target


def _value_and_grads(fn, pred, target):
    p = pred.clone().requires_grad_()
    t = target.clone().requires_grad_()
    value = fn(p, t)
    w = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)  # a non-uniform upstream
    gp, gt = torch.autograd.grad((value * w).sum(), (p, t))
    return value.detach(), gp, gt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_aligned_losses_match_the_reference(backend, kind, dtype):
    pred, target = _cases(dtype)
    fast = _value_and_grads(LOSSES[kind], pred, target)
    with backends.reference_path():
        ref = _value_and_grads(LOSSES[kind], pred, target)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, expected in zip(fast, ref):
        torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("kind", ["iou_distance", "log_iou_distance", "giou", "diou"])
def test_fast_path_passes_gradcheck(backend, kind):
    for pred, target in (overlapping_pairs(4, seed=4), disjoint_pairs(4, seed=5)):
        pred.requires_grad_()
        target.requires_grad_()
        assert torch.autograd.gradcheck(LOSSES[kind], (pred, target))


@pytest.mark.parametrize("kind", list(PAIRWISE))
def test_pairwise_matches_the_reference(backend, kind):
    fn = PAIRWISE[kind]
    a = torch.cat([random_boxes(70, seed=6), _all_pairs()[0].double()])
    b = torch.cat([random_boxes(40, seed=7), _all_pairs()[1].double()[:30]])
    for dtype in (torch.float32, torch.float64):
        with backends.reference_path():
            expected = fn(a.to(dtype), b.to(dtype))
        torch.testing.assert_close(fn(a.to(dtype), b.to(dtype)), expected, rtol=1e-6, atol=1e-6)
    # batched with a broadcast batch dimension, and empty sides
    a3, b3 = a[:60].reshape(3, 20, 4), b[:10].reshape(1, 10, 4)
    with backends.reference_path():
        expected = fn(a3, b3)
    torch.testing.assert_close(fn(a3, b3), expected)
    assert fn(a[:0], b).shape == (0, len(b)) and fn(a, b[:0]).shape == (len(a), 0)


def test_aligned_box_functions_use_the_fast_path_and_match(backend):
    a, b = overlapping_pairs(100, seed=8)
    for fn in PAIRWISE.values():
        with backends.reference_path():
            expected = fn(a, b, aligned=True)
        torch.testing.assert_close(fn(a, b, aligned=True), expected, rtol=1e-12, atol=1e-12)
        # broadcasting of leading dimensions still works
        assert fn(a.reshape(4, 25, 4), b[:25], aligned=True).shape == (4, 25)


def test_non_contiguous_inputs():
    pred, target = _cases(torch.float32)
    wide_p = torch.cat([pred, pred], 1)[:, 4:]      # a strided view
    t_view = target.t().contiguous().t()            # transposed memory layout
    expected = LOSSES["giou"](pred, target)
    torch.testing.assert_close(LOSSES["giou"](wide_p, t_view), expected)


def test_fast_path_saves_only_one_gradient_per_input():
    pred, target = random_boxes(10_000, seed=9, dtype=torch.float32), random_boxes(10_000, seed=10,
                                                                                  dtype=torch.float32)
    pred.requires_grad_()
    inputs = {pred.untyped_storage().data_ptr(), target.untyped_storage().data_ptr()}
    saved = []

    def pack(x):
        if x.untyped_storage().data_ptr() not in inputs:  # the inputs are referenced, not copied
            saved.append(x.numel() * x.element_size())
        return x

    for fast in (True, False):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            if fast:
                boxloss.ciou_loss(pred, target, reduction="none")
            else:
                with backends.reference_path():
                    boxloss.ciou_loss(pred, target, reduction="none")
        total = sum(saved)
        if fast:
            assert total <= 10_000 * 4 * 4, total  # the (n, 4) local gradient of pred, nothing else
        else:
            assert total > 5 * 10_000 * 4 * 4, total  # the reference keeps a graph of intermediates (8x here)


def test_switches():
    assert backends.fast_path_enabled()
    backends.set_fast_path(False)
    try:
        assert not backends.fast_path_enabled()
    finally:
        backends.set_fast_path(True)
    with backends.reference_path():
        assert not backends.fast_path_enabled()
    assert backends.fast_path_enabled()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        backends.set_fast_path("no")
    code = "import boxloss.backends as f; print(f.fast_path_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "BOXLOSS_FAST": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@requires_cuda
@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_fast_path_matches_the_reference(kind, dtype):
    pred, target = _cases(torch.float32)
    pred, target = pred.clamp(-6e4, 6e4).to(dtype).cuda(), target.clamp(-6e4, 6e4).to(dtype).cuda()
    fast = _value_and_grads(LOSSES[kind], pred, target)
    with backends.reference_path():
        ref = _value_and_grads(LOSSES[kind], pred, target)
    for got, expected in zip(fast, ref):
        torch.testing.assert_close(got.float(), expected.float(), rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_losses_do_not_synchronise():
    pred, target = overlapping_pairs(10_000, seed=12, dtype=torch.float32)
    pred, target = pred.cuda().requires_grad_(), target.cuda()
    w = torch.rand(10_000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for fn in LOSSES.values():
            fn(pred, target).sum().backward()
        boxloss.giou_loss(pred, target, weight=w, avg_factor=torch.tensor(3.0, device="cuda")).backward()
        boxloss.box_iou(pred.detach(), target)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@requires_cuda
@pytest.mark.parametrize("kind", list(PAIRWISE))
def test_cuda_pairwise_matches_the_reference(kind):
    a, b = random_boxes(300, seed=13, dtype=torch.float32).cuda(), random_boxes(200, seed=14,
                                                                                dtype=torch.float32).cuda()
    with backends.reference_path():
        expected = PAIRWISE[kind](a, b)
    torch.testing.assert_close(PAIRWISE[kind](a, b), expected, rtol=1e-5, atol=1e-5)


def test_triton_kernels_match_the_reference_under_the_interpreter():
    """The Triton kernels' logic, run on the CPU by Triton's interpreter (libdevice's atan2 replaced by the
    kernels' polynomial): every aligned loss with both gradients (the variants' and the rotated losses' kernels
    generated from their formulas), and every pairwise score."""
    pytest.importorskip("triton")
    script = os.path.join(os.path.dirname(__file__), "triton_interpreter_check.py")
    result = subprocess.run([sys.executable, script], env={**os.environ, "TRITON_INTERPRET": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # the classic kinds (5 checks each), the 4 pairwise scores, the 3 rotated pairwise scores, the 17 rotated
    # losses, the 23 axis-aligned variants (float32 and float16 boxes), the weighted mean, the operator checks
    assert result.stdout.count(" ok") == 7 * 5 + 2 + 4 + 3 + 17 + 23 * 2 + 1 + 2, result.stdout




# ----------------------------------------------------------------------------------------------------------
# floating-point semantics of the compiled kernels: those of the reference (no contraction, no fast-math)
# ----------------------------------------------------------------------------------------------------------
_PROBE = "double bl_probe(double x, double y, double z) { return x * y - z; }\n"


def _probe(flags, tmp_path, name):
    import ctypes

    from boxloss.backends import cpu

    compiler = cpu._compiler()
    if compiler is None:
        pytest.skip("no C compiler here")
    saved = cpu.FLAG_SETS
    try:
        cpu.FLAG_SETS = (flags,)
        path, _ = cpu._compile(compiler, str(tmp_path), lambda f: name, _PROBE)
    finally:
        cpu.FLAG_SETS = saved
    fn = ctypes.CDLL(path).bl_probe
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_double] * 3
    x = 1 + 2.0 ** -30
    return fn(x, x, x * x)  # x·x − fl(x·x): 0 when rounded as written, 2^-60 when fused into an FMA


def test_kernels_are_built_without_floating_point_contraction(tmp_path):
    from boxloss.backends import cpu

    for flags in cpu.FLAG_SETS:
        assert "-ffp-contract=off" in flags and not any("fast-math" in f or f == "-Ofast" for f in flags), flags
        assert _probe(flags, tmp_path, f"strict{len(flags)}.so") == 0.0, flags
    # the probe detects contraction where the compiler fuses by default (GCC with -march=native on an FMA CPU)
    loose = [f for f in cpu.FLAG_SETS[0] if f != "-ffp-contract=off"]
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        has_fma = " fma " in f.read()
    if has_fma:
        try:
            fused = _probe(loose, tmp_path, "loose.so")
        except RuntimeError:
            fused = None  # this compiler does not take -march=native: nothing to compare
        if fused is not None:
            assert fused in (0.0, 2.0 ** -60)


def test_cpu_threads_follow_the_grain_and_never_exceed_torch():
    from boxloss.backends import cpu

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cpu.threads_for(1_000, cpu.GRAIN["aligned"]) == 1  # no parallel region for a small batch
        assert cpu.threads_for(10 * cpu.GRAIN["aligned"], cpu.GRAIN["aligned"]) == min(2, cpu.USABLE_CPUS)
        torch.set_num_threads(1)
        assert cpu.threads_for(10**9, 1) == 1  # never over torch's
        torch.set_num_threads(cpu.USABLE_CPUS + 6)  # an over-subscribed container: no more threads than CPUs
        assert cpu.threads_for(10**9, 1) == cpu.USABLE_CPUS
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("call", ["aligned", "variant", "rotated", "pairwise", "rotated pairwise"])
def test_cpu_kernels_report_their_wait_and_back_off_to_one_thread(monkeypatch, call):
    # each kernel records how long the calling thread waited at the end of a parallel call; a long wait (a thread
    # descheduled by a busy machine) makes the next calls run on one thread for BUSY_BACKOFF_S. A wait of any
    # length counts here (thresholds below zero), so the first parallel call must start the back-off
    from boxloss.backends import cpu

    if cpu.load() is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(cpu, "_busy", {"until": 0.0, "backoffs": 0})
    for key in cpu.GRAIN:
        monkeypatch.setitem(cpu.GRAIN, key, 8)  # several threads for these small inputs
    monkeypatch.setattr(cpu, "USABLE_CPUS", 64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cpu.threads_for(1000, 8) == 2 and not cpu.busy_state()["backing_off"]
        p, t = random_boxes(1000, seed=1), random_boxes(1000, seed=2)
        rp = torch.cat([p[:, :2], (p[:, 2:] - p[:, :2]), torch.rand(1000, 1) * 90], 1)
        run = {"aligned": lambda: boxloss.giou_loss(p, t), "variant": lambda: boxloss.siou_loss(p, t),
               "rotated": lambda: boxloss.giou_loss(rp, rp.flip(0), fmt="cxcywhr"),
               "pairwise": lambda: boxloss.box_iou(p, t),
               "rotated pairwise": lambda: boxloss.box_iou(rp[:200], rp[200:400], fmt="cxcywhr")}[call]
        run()  # builds and loads the kernels; a real wait may or may not be long enough
        monkeypatch.setattr(cpu, "_busy", {"until": 0.0, "backoffs": 0})
        monkeypatch.setattr(cpu, "BUSY_WAIT_S", -1.0)
        monkeypatch.setattr(cpu, "BUSY_WAIT_FRACTION", -1.0)
        run()
        assert cpu.busy_state() == {"backing_off": True, "backoffs": 1}
        assert cpu.threads_for(1000, 8) == 1  # backing off: the calling thread alone
        run()  # on one thread: nothing to watch, no new back-off
        assert cpu.busy_state()["backoffs"] == 1
        cpu._busy["until"] = 0.0  # the back-off over: several threads again
        assert cpu.threads_for(1000, 8) == 2
    finally:
        torch.set_num_threads(before)


def test_cpu_kernel_reports_the_wait_of_its_last_parallel_call():
    import ctypes

    from boxloss.backends import cpu

    lib = cpu.load()
    if lib is None:
        pytest.skip("no C compiler")
    p, t = random_boxes(4096, seed=1), random_boxes(4096, seed=2)
    wait = (ctypes.c_double * 2)()
    cpu.run(lib, "ciou", p, t, 1e-7, True, False)  # whatever thread count: the call is timed
    lib.boxloss_last_wait(wait)
    if cpu.status().get("openmp"):
        assert 0 <= wait[0] <= wait[1] and 0 < wait[1] < 10.0


@pytest.mark.parametrize("loss", ["giou_loss", "ciou_loss", "siou_loss", "wiou_loss"])
def test_cpu_reduced_loss_and_gradients_do_not_depend_on_the_thread_count(monkeypatch, loss):
    # the weighted sum is added up per chunk of boxes, then over chunks in order: bit for bit the same total at
    # any thread count (and schedule), unlike a per-thread reduction
    from boxloss.backends import cpu

    monkeypatch.setitem(cpu.GRAIN, "aligned", 64)  # several threads even for this small batch
    monkeypatch.setitem(cpu.GRAIN, "aligned_calls", 64)
    monkeypatch.setattr(cpu, "USABLE_CPUS", 64)  # up to 4 threads even on a smaller machine
    p, t = random_boxes(5000, seed=3), random_boxes(5000, seed=4)
    w = torch.rand(5000, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            q = p.clone().requires_grad_()
            value = getattr(boxloss, loss)(q, t, weight=w, reduction="sum")
            value.backward()
            results.append((value.detach(), q.grad))
    finally:
        torch.set_num_threads(before)
    for value, grad in results[1:]:
        assert torch.equal(value, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("g_form", ["scalar", "per-box", "expanded", "strided"])
def test_cpu_backward_product_is_torch_mul_bit_for_bit(monkeypatch, dtype, g_form):
    # the first-order backward multiplies the saved local gradients by the incoming one in C (no parallel region
    # below its grain); it must be exactly torch's product, NaN and inf included, for every layout of g
    from boxloss.backends import cpu

    lib = cpu.load()
    assert lib is not None, cpu.status()
    gen = torch.Generator().manual_seed(7)
    n = 3001
    a = torch.randn(n, 4, generator=gen, dtype=dtype) * 1e3
    b = torch.randn(n, 5, generator=gen, dtype=dtype)[:, :4].contiguous()
    a[5, 1], a[6, 2], b[7, 0] = float("nan"), float("inf"), float("-inf")
    g = {"scalar": torch.tensor(0.3, dtype=dtype),
         "per-box": torch.randn(n, generator=gen, dtype=dtype),
         "expanded": torch.tensor(1.7, dtype=dtype).expand(n),
         "strided": torch.randn(2 * n, generator=gen, dtype=dtype)[::2]}[g_form]
    gx = g if g.dim() == 0 else g.unsqueeze(-1)
    monkeypatch.setattr(cpu, "USABLE_CPUS", 64)
    for threads in (1, 3):  # one thread, and chunks shared between threads
        monkeypatch.setitem(cpu.GRAIN, "scale", 1 if threads > 1 else 10**9)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out_a, out_b = cpu.run_scale(lib, g, a, b)
            only_b = cpu.run_scale(lib, g, None, b)[1]
        finally:
            torch.set_num_threads(before)
        assert torch.equal(out_a.nan_to_num(7.0), (gx * a).nan_to_num(7.0))
        assert torch.isnan(out_a).equal(torch.isnan(gx * a))
        assert torch.equal(out_b, gx * b) and torch.equal(only_b, gx * b)


def test_cpu_backward_with_a_per_box_gradient_matches_the_reference():
    # reduction="none" and a weighted sum outside boxloss: the incoming gradient is one value per box
    p, t = random_boxes(4000, seed=11), random_boxes(4000, seed=12)
    w = torch.rand(4000, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    q = p.clone().requires_grad_()
    (boxloss.giou_loss(q, t, reduction="none") * w.float()).sum().backward()
    r = p.double().requires_grad_()
    with boxloss.backends.reference_path():
        (boxloss.giou_loss(r, t.double(), reduction="none") * w).sum().backward()
    torch.testing.assert_close(q.grad.double(), r.grad, rtol=1e-4, atol=1e-5)


def _edge_pairs(n=2000, seed=0):
    """Random pairs with every edge case the kernel has a branch-free select for: identical, nearly identical,
    zero-size, inverted, point targets, far apart, NaN, ±inf, all-zero, huge and tiny boxes."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    p = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50], 1)
    xy = torch.rand(n, 2, generator=g) * 100
    t = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50], 1)
    t[:200] = p[:200]
    t[200:400] = p[200:400] + torch.randn(200, 4, generator=g) * 0.01
    p[400:500, 2:] = p[400:500, :2]
    p[500:600] = p[500:600, [2, 3, 0, 1]]
    t[600:700, 2:] = t[600:700, :2]
    t[700:750] += 500
    p[750, 0], p[751, 3], t[752, 1], t[753] = float("nan"), float("inf"), float("-inf"), float("nan")
    p[760:770], t[760:770] = 0, 0
    p[770:780] *= 1e6
    t[770:780] *= 1e6
    p[780:790] *= 1e-6
    t[780:790] *= 1e-6
    return p, t


@pytest.fixture(scope="module")
def vector_and_scalar_builds(tmp_path_factory):
    """classic.c compiled as the package compiles it, and with vectorisation off (the referee)."""
    import ctypes

    from boxloss.backends import cpu

    compiler = cpu._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    tmp_path = tmp_path_factory.mktemp("builds")
    source = tmp_path / "classic.c"  # the text the package compiles: the shared runtime inlined
    source.write_text(cpu._read_core_source())
    flags = [f for f in cpu.FLAG_SETS[0] if f != "-fopenmp"]
    libs = []
    for name, extra in (("vector", cpu.FLAG_SETS[0]), ("scalar", flags + ["-fno-tree-vectorize",
                                                                            "-fno-tree-slp-vectorize"])):
        out = tmp_path / f"{name}.so"
        result = subprocess.run([compiler, *extra, "-shared", "-fPIC", "-o", str(out), str(source), "-lm"],
                                capture_output=True, text=True)
        if result.returncode and name == "vector":  # e.g. no -march=native here: the next flag set
            result = subprocess.run([compiler, *cpu.FLAG_SETS[1], "-shared", "-fPIC", "-o", str(out), str(source),
                                     "-lm"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        libs.append(cpu._declare(ctypes.CDLL(str(out))))
    return libs


def _same_bits(a, b):
    return bool(((a == b) | (a.isnan() & b.isnan())).all()) and \
        bool((torch.signbit(a) == torch.signbit(b))[~a.isnan()].all())


def test_vectorised_cpu_kernel_equals_its_scalar_build_bit_for_bit(vector_and_scalar_builds):
    # the SIMD loops must compute what the scalar code computes: the same kernel source compiled with
    # vectorisation off is the referee, on every kind, dtype and output combination, edge cases included
    import ctypes
    import math

    from boxloss.backends import cpu
    from boxloss.backends.closed_form import KIND_CODES

    libs = vector_and_scalar_builds
    p, t = _edge_pairs()
    n = len(p)
    w = torch.rand(n, generator=torch.Generator().manual_seed(9))

    for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
        P, T, W = p.to(dtype).contiguous(), t.to(dtype).contiguous(), w.to(dtype)
        for kind in (KIND_CODES[k] for k in cpu.HAND_WRITTEN_ALIGNED):  # classic.c's aligned kinds
            for weighted in (False, True):
                for outputs in ("L", "L GP", "GP GT total"):
                    got = []
                    for lib in libs:
                        L, GP, GT = (torch.full(s, 7.0, dtype=dtype) for s in ((n,), (n, 4), (n, 4)))
                        total = ctypes.c_double(0.0)
                        reduce = "total" in outputs
                        getattr(lib, "boxloss_aligned_" + suffix)(
                            kind, P.data_ptr(), T.data_ptr(), W.data_ptr() if weighted else None,
                            L.data_ptr() if "L" in outputs else None, GP.data_ptr() if "GP" in outputs else None,
                            GT.data_ptr() if "GT" in outputs else None, n, 1e-7, 0.25 if reduce else 1.0,
                            ctypes.byref(total) if reduce else None, 2)
                        got.append((L, GP, GT, total.value))
                    (l0, gp0, gt0, s0), (l1, gp1, gt1, s1) = got
                    assert _same_bits(l0, l1) and _same_bits(gp0, gp1) and _same_bits(gt0, gt1), \
                        (suffix, kind, weighted, outputs)
                    assert s0 == s1 or (math.isnan(s0) and math.isnan(s1)), (suffix, kind, weighted, outputs)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_vectorised_pairwise_kernel_equals_its_scalar_build_bit_for_bit(vector_and_scalar_builds, kind):
    from boxloss.backends import cpu

    p, t = _edge_pairs(seed=2)
    p, t = torch.cat([p[:150], p[740:800], p[-390:]]), torch.cat([t[:150], t[740:800], t[-390:]])  # edge rows too
    for dtype in (torch.float32, torch.float64):
        a, b = p.to(dtype).reshape(2, 300, 4).contiguous(), t[:500].to(dtype).reshape(2, 250, 4).contiguous()
        vector, scalar = (cpu.run_pairwise(lib, kind, a, b, 1e-7) for lib in vector_and_scalar_builds)
        assert _same_bits(vector, scalar), (kind, dtype)


def _rotated_edge_pairs(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)

    def boxes():
        return torch.cat([torch.rand(n, 2, generator=g) * 100, torch.rand(n, 2, generator=g) * 40 + 1,
                          torch.rand(n, 1, generator=g) * 360 - 180], 1)
    p, t = boxes(), boxes()
    t[:100] = p[:100]
    t[100:200] = p[100:200] + torch.randn(100, 5, generator=g) * 1e-3
    t[200:300, :4], t[200:300, 4] = p[200:300][:, [0, 1, 3, 2]], p[200:300, 4] + 90  # the same box, turned
    p[300:350, 2:4] = 0
    t[350:400] = p[350:400] + torch.tensor([0.0, 0, 0, 0, 1e-4])
    p[400, 0], t[401, 4], p[402, 2] = float("nan"), float("inf"), float("-inf")
    p[410:420] *= 1e4
    t[410:420] *= 1e4
    return p, t


@pytest.mark.parametrize("group", ["axis", "rotated"])
def test_generated_column_kernels_equal_the_row_form_bit_for_bit(tmp_path, group):
    # the variants' kernels are generated in columns, cut into vectorised stages at their library calls; the row
    # form (one box at a time, in order, as before) is the referee: the same bits for every variant, both dtypes,
    # values, both gradients and the weighted sum, edge cases included
    import ctypes

    from boxloss import expr
    from boxloss.backends import cpu, generated

    compiler = cpu._compiler()
    columns_lib = cpu.load_variants(group)
    if compiler is None or columns_lib is None:
        pytest.skip("no C compiler")
    reg = kinds.VARIANTS
    names = generated._members(group)
    rotated = group == "rotated"
    rows_source = expr.generate_library([(generated.symbol(n), reg[n].formula, len(reg[n].params)) for n in names],
                                        runtime=generated.c_runtime(), columns=5 if rotated else 4,
                                        nan_minmax=not rotated, rows_only=True)
    assert "_s0_f32" in generated.c_source(group) and "_s0_f32" not in rows_source
    (tmp_path / "rows.c").write_text(rows_source)
    result = subprocess.run([compiler, *cpu.FLAG_SETS[1], "-shared", "-fPIC", "-o", str(tmp_path / "rows.so"),
                             str(tmp_path / "rows.c"), "-lm"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows_lib = ctypes.CDLL(str(tmp_path / "rows.so"))
    for name in names:  # the aligned kernels only (no pairwise scores in this build)
        for sfx in ("_f32", "_f64"):
            fn = getattr(rows_lib, generated.symbol(name) + sfx)
            fn.restype, fn.argtypes = None, cpu.VARIANT_ARGTYPES
    values = {"theta": 4.0, "gamma": 0.5, "width": 640.0, "height": 480.0, "scale": 0.5, "constant": 12.8,
              "alpha": 3.0, "ratio": 0.8, "d": 0.1, "u": 0.9, "tau": 1.0, "beta": 2.0}
    p, t = _rotated_edge_pairs() if rotated else _edge_pairs()
    w = torch.rand(len(p), generator=torch.Generator().manual_seed(9))
    for name in names:
        params = [values[k] for k in reg[name].params]
        for dtype in (torch.float32, torch.float64):
            P, T, W = p.to(dtype).contiguous(), t.to(dtype).contiguous(), w.to(dtype)
            for need, weight, scale in ((False, None, None), (True, None, None), (True, W, 0.5)):
                got = [cpu.run_variant(lib, name, params, P, T, 1e-7, need, need, weight, scale)
                       for lib in (columns_lib, rows_lib)]
                for a, b in zip(*got):
                    assert _same_bits(a, b), (name, dtype, need, weight is not None)
