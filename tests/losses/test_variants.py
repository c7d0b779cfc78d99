"""Every registered loss variant through one checklist: the generated C kernel and the generated PyTorch closed
form against the formula evaluated by autograd (values and gradients, float64 and float32), gradcheck on
overlapping and disjoint pairs, NaN in → NaN out, no NaN/Inf on a 1M-box fuzz per dtype, reductions, weights,
avg_factor and formats, the operators under torch.compile / torch.func / jit.trace, and the modules.

Each variant's own file (tests/losses/test_<name>.py) holds its hand-worked values, its independent float64
implementation from the paper and its descent test.
"""

import math

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs

import boxloss
from boxloss import expr, kinds
from boxloss._utils import _reduce
from boxloss.backends import generated, ops
from boxloss.kinds import VARIANTS as ALL_VARIANTS
from boxloss.losses.bases import BASES

# the axis-aligned variants (the rotated kinds, 5 columns, have their own checklist in tests/core/test_rotated.py)
VARIANTS = {name: v for name, v in ALL_VARIANTS.items() if v.columns == 4}

# (public function, keyword options) per registered kernel, with non-default parameters where there are some
CALLS = {
    # the classic losses: one formula each, like the variants (their independent reference: boxloss.reference)
    "iou": (boxloss.iou_loss, {"zero_overlap": "none"}),
    "iou_distance": (boxloss.iou_loss, {}),
    "log_iou": (boxloss.log_iou_loss, {"zero_overlap": "none"}),
    "log_iou_distance": (boxloss.log_iou_loss, {}),
    "giou": (boxloss.giou_loss, {}),
    "diou": (boxloss.diou_loss, {}),
    "ciou": (boxloss.ciou_loss, {}),
    "siou": (boxloss.siou_loss, {"theta": 3.0}),
    "eiou": (boxloss.eiou_loss, {}),
    "focal_eiou": (boxloss.focal_eiou_loss, {"gamma": 0.5}),
    "wiou": (boxloss.wiou_loss, {}),
    "mpdiou": (boxloss.mpdiou_loss, {"image_size": (40.0, 30.0)}),
    "shape_iou": (boxloss.shape_iou_loss, {"scale": 0.5}),
    "nwd": (boxloss.nwd_loss, {"constant": 4.0}),
    **{f"alpha_iou_{v}": (boxloss.alpha_iou_loss, {"alpha": 3.0, "variant": v}) for v in ("iou", "giou", "diou",
                                                                                        "ciou")},
    **{f"inner_iou_{b}": (boxloss.inner_iou_loss, {"ratio": 0.8, "variant": b}) for b in BASES},
    **{f"focaler_iou_{b}": (boxloss.focaler_iou_loss, {"d": 0.1, "u": 0.9, "variant": b}) for b in BASES},
}
NAMES = sorted(CALLS)


def test_every_registered_kernel_is_tested_and_reachable():
    assert set(CALLS) == set(VARIANTS)


def _mixed_pairs(n=600, seed=0, dtype=torch.float64):
    """Overlapping, disjoint, identical, degenerate (zero width/height, points) and inverted pairs."""
    a, b = overlapping_pairs(n, seed=seed)
    c, d = disjoint_pairs(n, seed=seed + 1)
    e, _ = overlapping_pairs(50, seed=seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    deg = e.clone()
    deg[:25, 2] = deg[:25, 0]                  # zero width
    deg[25:, 3] = deg[25:, 1]                  # zero height
    inv = e[:, [2, 3, 0, 1]]                   # inverted
    pts = e.clone()
    pts[:, 2:] = pts[:, :2]                    # points
    p = torch.cat([a, c, e, deg, inv, pts, e])
    t = torch.cat([b, d, e, e, e, e + torch.rand(50, 4, generator=g, dtype=torch.float64) * 0.01])
    t = torch.cat([t, pts])
    return p.to(dtype), t.to(dtype)


def _reference_and_grads(name, params, p, t, eps=1e-7):
    kind = kinds.kind_of(name, *params)
    pr = p.detach().clone().requires_grad_()
    tr = t.detach().clone().requires_grad_()
    loss = generated.reference(kind, pr, tr, eps)
    gp, gt = torch.autograd.grad(loss.sum(), (pr, tr), allow_unused=True)
    return loss.detach(), gp if gp is not None else torch.zeros_like(p), gt if gt is not None else torch.zeros_like(t)


def _params_of(name):
    fn, options = CALLS[name]
    defaults = {"theta": 4.0}
    values = []
    for key in VARIANTS[name].params:
        if key in ("width", "height"):
            values.append(options["image_size"][0 if key == "width" else 1])
        else:
            values.append(options.get(key, defaults.get(key)))
    return tuple(values)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_formula_and_its_autograd(backend, name, dtype):
    p, t = _mixed_pairs(dtype=dtype)
    params = _params_of(name)
    kind = kinds.kind_of(name, *params)
    loss, gp, gt = ops.aligned_loss_op(p, t, None, None, kind, 1e-7, False, 1.0, True, True)
    # (the reference in the same dtype: at the kinks, e.g. equal widths, both must take the same side)
    ref, rgp, rgt = _reference_and_grads(name, params, p, t)
    tol = {} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-4}
    assert_close(loss, ref, dtype, **tol)
    assert_close(gp, rgp, dtype, **tol)
    assert_close(gt, rgt, dtype, **tol)


def _has_detach(name):
    graph, out, *_ = expr.trace(VARIANTS[name].formula, len(VARIANTS[name].params))
    live = expr._live(out)
    return any(e.op == "detach" and live[e.index] for e in graph.nodes)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_on_overlapping_and_disjoint_pairs(backend, name):
    fn, options = CALLS[name]
    a, b = disjoint_pairs(6, seed=4)
    b = b + torch.tensor([0.013, 0.017, 0.013, 0.017], dtype=b.dtype)  # no shared edge: no kink at the point
    for pairs in (overlapping_pairs(6, seed=3), (a, b)):
        p, t = (x.clone().requires_grad_() for x in pairs)
        if _has_detach(name):
            # a detached factor (WIoU's enclosing size, CIoU's α, Focal-EIoU's IoU^γ) is held constant in the
            # gradient by definition, so finite differences (which see it move) do not apply: the gradient must
            # equal autograd's of the formula, and the second derivative the reference's Hessian
            # (test_second_derivatives_equal_the_reference)
            loss = fn(p, t, reduction="sum", **options)
            got = torch.autograd.grad(loss, (p, t))
            with boxloss.backends.reference_path():
                want = torch.autograd.grad(fn(p, t, reduction="sum", **options), (p, t))
            for g, w in zip(got, want):
                assert_close(g, w)
            continue
        assert torch.autograd.gradcheck(lambda a, b: fn(a, b, reduction="none", **options), (p, t))
        assert torch.autograd.gradgradcheck(lambda a, b: fn(a, b, reduction="sum", **options), (p, t))


@pytest.mark.parametrize("name", NAMES)
def test_identical_boxes_cost_zero(backend, name):
    fn, options = CALLS[name]
    p, _ = overlapping_pairs(20, seed=5)
    p.requires_grad_()
    loss = fn(p, p.detach(), reduction="none", **options)
    assert_close(loss, torch.zeros(20, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_nan_in_nan_out(backend, name, dtype):
    fn, options = CALLS[name]
    p, t = overlapping_pairs(8, seed=6, dtype=dtype)
    p[2, 1] = math.nan
    t[5, 3] = math.nan
    p.requires_grad_()
    loss = fn(p, t, reduction="none", **options)
    loss.sum().backward()
    nan = torch.zeros(8, dtype=torch.bool)
    nan[[2, 5]] = True
    assert torch.equal(loss.isnan(), nan)
    assert p.grad[nan].isnan().all() and p.grad[~nan].isfinite().all()


def _fuzz_boxes(n, seed, dtype):
    """Coordinates up to 1e5 in magnitude, a fifth of them degenerate (zero or tiny sides, points, inverted)."""
    g = torch.Generator().manual_seed(seed)
    scale = 10 ** (torch.rand(n, 1, generator=g) * 5)              # 1 … 1e5
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * scale
    wh = torch.rand(n, 2, generator=g) * scale
    kind = torch.randint(0, 10, (n, 1), generator=g)
    wh = torch.where(kind == 0, torch.zeros_like(wh), wh)           # points
    wh = torch.where(kind == 1, wh * 1e-6, wh)                      # tiny
    wh = torch.where(kind == 2, -wh, wh)                            # inverted
    boxes = torch.cat([xy, xy + wh], -1)
    big = torch.finfo(dtype).max / 4 if dtype != torch.float32 else 1e30
    return boxes.clamp(-big, big).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fuzz_a_million_boxes_per_dtype_gives_no_nan_or_inf(dtype):
    n = 1_000_000
    p = _fuzz_boxes(n, 11, dtype).requires_grad_()
    t = _fuzz_boxes(n, 12, dtype)
    # half of the targets are the predictions moved a little (overlapping pairs), half unrelated
    t[: n // 2] = (p.detach()[: n // 2].float() * 1.01 + 0.5).to(dtype)
    for name in NAMES:
        fn, options = CALLS[name]
        p.grad = None
        loss = fn(p, t, reduction="none", **options)
        assert loss.isfinite().all(), name
        loss.sum().backward()
        assert p.grad.isfinite().all(), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction, avg_factor, weighted", [
    ("mean", None, False), ("mean", None, True), ("sum", None, True), ("mean", 7.5, True),
    ("mean", torch.tensor(3.0), False), ("none", None, True)])
def test_reductions_weights_and_avg_factor(backend, name, reduction, avg_factor, weighted):
    fn, options = CALLS[name]
    p, t = _mixed_pairs(80, seed=8)
    weight = torch.rand(p.shape[0], dtype=torch.float64) if weighted else None
    per_box = fn(p, t, reduction="none", **options)
    got = fn(p, t, reduction=reduction, weight=weight, avg_factor=avg_factor, **options)
    assert_close(got, _reduce(per_box, reduction, weight, avg_factor, 1e-7))


@pytest.mark.parametrize("name", NAMES)
def test_formats_and_leading_dimensions(name):
    from torchvision.ops import box_convert

    fn, options = CALLS[name]
    p, t = overlapping_pairs(24, seed=9)
    want = fn(p, t, reduction="none", **options)
    for fmt in ("xywh", "cxcywh"):
        got = fn(box_convert(p, "xyxy", fmt), box_convert(t, "xyxy", fmt), reduction="none", fmt=fmt, **options)
        assert_close(got, want)
    got = fn(p.reshape(2, 3, 4, 4), t.reshape(2, 3, 4, 4), reduction="none", **options)
    assert got.shape == (2, 3, 4)
    assert_close(got.reshape(-1), want)


@pytest.mark.parametrize("name", NAMES)
def test_second_derivatives_equal_the_reference(name):
    fn, options = CALLS[name]
    p, t = overlapping_pairs(5, seed=10)
    f = lambda a: fn(a, t, reduction="sum", **options)  # noqa: E731
    got = torch.func.grad(f)(p)
    hess = torch.func.hessian(f)(p)
    with boxloss.backends.reference_path():
        assert_close(got, torch.func.grad(f)(p))
        assert_close(hess, torch.func.hessian(f)(p))
    assert_close(torch.func.vmap(lambda a: fn(a, t, reduction="none", **options))(p[None].expand(3, -1, -1))[1],
                 fn(p, t, reduction="none", **options))


def test_compile_and_trace_record_the_operator():
    p, t = overlapping_pairs(16, seed=12, dtype=torch.float32)
    p.requires_grad_()

    def f(a, b):
        return boxloss.siou_loss(a, b) + boxloss.mpdiou_loss(a, b, image_size=(20, 10))

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(p, t)
    (g,) = torch.autograd.grad(got, p)
    want = f(p, t)
    (wg,) = torch.autograd.grad(want, p)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, wg)
    traced = torch.jit.trace(lambda a, b: boxloss.eiou_loss(a, b, reduction="none"), (p.detach(), t))
    assert "boxloss::aligned_loss" in str(traced.graph)
    p2 = (p.detach() + 0.1).requires_grad_()
    out = traced(p2, t)
    (g,) = torch.autograd.grad(out.sum(), p2)  # traced without requires_grad: the gradient is still exact
    with boxloss.backends.reference_path():
        want = boxloss.eiou_loss(p2, t, reduction="none")
        (wg,) = torch.autograd.grad(want.sum(), p2)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(g, wg)


@pytest.mark.parametrize("name", ["siou", "wiou", "alpha_iou_giou"])
def test_the_variant_kind_passes_opcheck(backend, name):
    p, t = overlapping_pairs(12, seed=13, dtype=torch.float32)
    kind = kinds.kind_of(name, *_params_of(name))
    torch.library.opcheck(torch.ops.boxloss.aligned_loss.default,
                          (p.requires_grad_(), t, None, None, kind, 1e-7, False, 1.0, True, False))


def test_the_c_source_is_generated_from_the_formulas():
    source = generated.c_source()
    for name in VARIANTS:  # (the rotated kinds: generated.c_source("rotated"), tests/core/test_rotated.py)
        assert f"void {generated.symbol(name)}_f32(" in source and f"void {generated.symbol(name)}_f64(" in source
    # a formula that branches in Python on a traced value is refused with a clear message
    with pytest.raises(TypeError, match="m.where"):
        expr.trace(lambda p, t, m: p[0] if p[0] > t[0] else t[0], 0)


@pytest.mark.parametrize("call, message", [
    (lambda p: boxloss.siou_loss(p, p, theta=0), "theta must be a finite number in"),
    (lambda p: boxloss.focal_eiou_loss(p, p, gamma=-1), "gamma"),
    (lambda p: boxloss.mpdiou_loss(p, p, image_size=(0, 3)), r"image_size\[0\] \(width\)"),
    (lambda p: boxloss.mpdiou_loss(p, p, image_size=5), "image_size must be"),
    (lambda p: boxloss.nwd_loss(p, p, constant=math.inf), "constant"),
    (lambda p: boxloss.alpha_iou_loss(p, p, variant="siou"), "variant must be one of"),
    (lambda p: boxloss.inner_iou_loss(p, p, ratio=0), "ratio"),
    (lambda p: boxloss.focaler_iou_loss(p, p, d=0.5, u=0.5), "u must exceed d by at least 0.001"),
    (lambda p: boxloss.focaler_iou_loss(p, p, variant="wiou"), "variant must be one of"),
    (lambda p: boxloss.shape_iou_loss(p, p, scale=-1), "scale"),
])
def test_bad_options_give_errors_naming_the_argument(call, message):
    p = torch.rand(3, 4)
    with pytest.raises((ValueError, TypeError), match=message):
        call(p)


def test_modules_check_options_at_construction_and_forward_like_the_functions():
    p, t = overlapping_pairs(10, seed=14)
    for module, fn, options in [
        (boxloss.SIoULoss(theta=2.0), boxloss.siou_loss, {"theta": 2.0}),
        (boxloss.EIoULoss(), boxloss.eiou_loss, {}),
        (boxloss.FocalEIoULoss(gamma=1.0), boxloss.focal_eiou_loss, {"gamma": 1.0}),
        (boxloss.MPDIoULoss(image_size=(50, 40)), boxloss.mpdiou_loss, {"image_size": (50, 40)}),
        (boxloss.ShapeIoULoss(scale=1.0), boxloss.shape_iou_loss, {"scale": 1.0}),
        (boxloss.NWDLoss(constant=3.0), boxloss.nwd_loss, {"constant": 3.0}),
        (boxloss.AlphaIoULoss(alpha=2.0, variant="diou"), boxloss.alpha_iou_loss, {"alpha": 2.0, "variant": "diou"}),
        (boxloss.InnerIoULoss(ratio=1.2, variant="giou"), boxloss.inner_iou_loss, {"ratio": 1.2, "variant": "giou"}),
        (boxloss.FocalerIoULoss(d=0.2, u=0.8), boxloss.focaler_iou_loss, {"d": 0.2, "u": 0.8}),
        (boxloss.WIoULoss(version=1), boxloss.wiou_loss, {}),
    ]:
        assert_close(module(p, t), fn(p, t, **options))
        assert type(module).__name__ in repr(module)
    with pytest.raises(ValueError, match="theta"):
        boxloss.SIoULoss(theta=-1.0)
    with pytest.raises(TypeError, match="unexpected options"):
        boxloss.SIoULoss(alpha=2.0)
    with pytest.raises(TypeError):
        boxloss.MPDIoULoss()  # the image size is required


def test_mpdiou_per_box_image_sizes_equal_one_size_per_call():
    p, t = overlapping_pairs(10, seed=15)
    sizes = torch.tensor([[40.0, 30.0]] * 5 + [[80.0, 60.0]] * 5, dtype=torch.float64)
    got = boxloss.mpdiou_loss(p, t, image_size=sizes, reduction="none")
    want = torch.cat([boxloss.mpdiou_loss(p[:5], t[:5], image_size=(40, 30), reduction="none"),
                      boxloss.mpdiou_loss(p[5:], t[5:], image_size=(80, 60), reduction="none")])
    assert_close(got, want)
    with pytest.raises(ValueError, match="does not broadcast"):
        boxloss.mpdiou_loss(p, t, image_size=torch.ones(3, 2))


def test_closed_form_runs_when_no_compiled_kernel(monkeypatch):
    p, t = _mixed_pairs(100, seed=16)
    monkeypatch.setattr(ops, "USE_COMPILED_CPU", False)
    monkeypatch.setattr(ops, "CPU_CHUNK", 33)
    slow = boxloss.siou_loss(p, t, reduction="none")
    monkeypatch.setattr(ops, "USE_COMPILED_CPU", True)
    assert_close(slow, boxloss.siou_loss(p, t, reduction="none"))


# ----------------------------------------------------------------------------------------------------------
# parameters: refused where they cannot be computed, computed finitely elsewhere, fast path = reference
# ----------------------------------------------------------------------------------------------------------
def _fast_and_reference(fn, p, t):
    out = {}
    for path in ("fast", "reference"):
        x = p.clone().requires_grad_()
        if path == "reference":
            with boxloss.backends.reference_path():
                loss = fn(x, t)
        else:
            loss = fn(x, t)
        loss.sum().backward()
        out[path] = (loss.detach(), x.grad)
    return out


def _big_pairs():
    """1000-px float32 boxes, half of them overlapping."""
    p, t = overlapping_pairs(50, seed=50)
    a, b = disjoint_pairs(50, seed=51)
    return (torch.cat([p, a]) * 100).float(), (torch.cat([t, b]) * 100).float()


@pytest.mark.parametrize("call", [
    lambda p, t: boxloss.shape_iou_loss(p, t, scale=20.0, reduction="none"),     # before: NaN values
    lambda p, t: boxloss.shape_iou_loss(p, t, scale=1e3, reduction="none"),
    lambda p, t: boxloss.inner_iou_loss(p, t, ratio=1e3, reduction="none"),
    lambda p, t: boxloss.inner_iou_loss(p, t, ratio=1e-3, reduction="none"),
    lambda p, t: boxloss.nwd_loss(p, t, constant=1e-6, reduction="none"),
    lambda p, t: boxloss.siou_loss(p, t, theta=1e3, reduction="none"),
    lambda p, t: boxloss.focaler_iou_loss(p, t, d=0.3, u=0.301, reduction="none"),
    lambda p, t: boxloss.mpdiou_loss(p, t, image_size=(1e-6, 1e-6), reduction="none"),
    lambda p, t: boxloss.mpdiou_loss(p, t, image_size=(1e18, 1e18), reduction="none"),
])
def test_extreme_valid_parameters_give_finite_values_and_gradients_on_both_paths(call):
    p, t = _big_pairs()
    out = _fast_and_reference(call, p, t)
    for loss, grad in out.values():
        assert loss.isfinite().all() and grad.isfinite().all()
    assert_close(out["fast"][0], out["reference"][0], torch.float32, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda p: boxloss.inner_iou_loss(p, p, ratio=1e300), r"ratio must be a finite number in \[0.001, 1000\]"),
    (lambda p: boxloss.inner_iou_loss(p, p, ratio=1e-4), r"ratio must be a finite number in \[0.001, 1000\]"),
    (lambda p: boxloss.nwd_loss(p, p, constant=1e-300), r"constant must be a finite number in \[1e-06, inf\]"),
    (lambda p: boxloss.siou_loss(p, p, theta=1e300), r"theta must be a finite number in \(0, 1000\]"),
    (lambda p: boxloss.focaler_iou_loss(p, p, d=0.3, u=0.3 + 1e-9), "u must exceed d by at least 0.001"),
    (lambda p: boxloss.mpdiou_loss(p, p, image_size=(1e-30, 1e-30)), r"image_size\[0\] \(width\) must be"),
    (lambda p: boxloss.mpdiou_loss(p, p, image_size=torch.zeros(3, 2)), r"image_size must hold sides in"),
    (lambda p: boxloss.mpdiou_loss(p, p, image_size=-torch.ones(3, 2)), r"image_size must hold sides in"),
    (lambda p: boxloss.mpdiou_loss(p, p, image_size=torch.ones(3, 2, device="meta")),
     "image_size must be on the boxes' device cpu"),
])
def test_parameters_that_cannot_be_computed_are_refused_naming_them(call, message):
    p = overlapping_pairs(3, seed=53)[0].float()
    with pytest.raises(ValueError, match=message):
        call(p)


def test_kfiou_tiny_beta_is_plain_l1_and_finite():
    box = torch.tensor([[0.0, 0.0, 4.0, 2.0, 10.0], [1.0, 1.0, 3.0, 3.0, 20.0]])
    for beta in (1e-300, 1e-30):  # before: NaN gradients (0.5 d² / β with β rounded to 0)
        x = box.clone().requires_grad_()
        loss = boxloss.kfiou_loss(x, box + 0.5, beta=beta)
        loss.backward()
        assert loss.isfinite() and x.grad.isfinite().all()


def test_mpdiou_with_per_box_sizes_compiles_in_one_graph():
    # before: "Unsupported context manager ... RLock" (functools.cached_property on Python 3.11)
    p, t = overlapping_pairs(6, seed=54)
    size = torch.rand(6, 2, dtype=torch.float64) * 100 + 50
    compiled = torch.compile(lambda p, t, s: boxloss.mpdiou_loss(p, t, image_size=s), fullgraph=True)
    assert_close(compiled(p, t, size), boxloss.mpdiou_loss(p, t, image_size=size))
