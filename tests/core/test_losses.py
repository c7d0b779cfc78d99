"""boxloss.losses and boxloss.modules: every loss through one checklist, plus loss-specific references."""

import functools
import math

import pytest
import torch
import torchvision.ops as tvops
from conftest import DEVICES, assert_close, disjoint_pairs, overlapping_pairs, random_boxes, requires_cuda

import boxloss
from boxloss import (
    CIoULoss,
    DIoULoss,
    GIoULoss,
    IoULoss,
    LogIoULoss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    log_iou_loss,
)


def _reference_gap_term(p, t):
    """Nearest-point distance over the target's diagonal (the enclosing diagonal for a point target), one pair
    at a time in Python floats."""
    gx = max(0.0, max(p[0], t[0]) - min(p[2], t[2]))
    gy = max(0.0, max(p[1], t[1]) - min(p[3], t[3]))
    t_diag = math.hypot(max(0.0, t[2] - t[0]), max(0.0, t[3] - t[1]))
    if t_diag > 1e-7:
        return math.hypot(gx, gy) / t_diag
    cw = max(p[2], t[2]) - min(p[0], t[0])
    ch = max(p[3], t[3]) - min(p[1], t[1])
    return math.hypot(gx, gy) / max(math.hypot(cw, ch), math.hypot(gx, gy), 1e-7)


def _smooth_ln(iou, tau=0.7):
    """−ln IoU above τ, the tangent −ln τ + (τ − IoU)/τ below (Smooth-ln, Repulsion Loss)."""
    return torch.where(iou >= tau, -torch.log(iou.clamp_min(tau)), -math.log(tau) + (tau - iou) / tau)


def _reference_iou_loss(pred, target):
    iou = tvops.box_iou(pred, target).diagonal()
    gap = torch.tensor([_reference_gap_term(p.tolist(), t.tolist()) for p, t in zip(pred, target)], dtype=iou.dtype)
    return 1 - iou + gap


def _reference_log_iou_loss(pred, target):
    iou = tvops.box_iou(pred, target).diagonal()
    gap = torch.tensor([_reference_gap_term(p.tolist(), t.tolist()) for p, t in zip(pred, target)], dtype=iou.dtype)
    return _smooth_ln(iou) + gap


LOSSES = {
    # name: (function, module class, float64 reference giving per-box losses)
    "iou": (iou_loss, IoULoss, _reference_iou_loss),
    "log_iou": (log_iou_loss, LogIoULoss, _reference_log_iou_loss),
    "giou": (giou_loss, GIoULoss, tvops.generalized_box_iou_loss),
    "diou": (diou_loss, DIoULoss, tvops.distance_box_iou_loss),
    "ciou": (ciou_loss, CIoULoss, tvops.complete_box_iou_loss),
}
NAMES = list(LOSSES)


def _mixed_pairs(n=40, seed=0):
    """Half overlapping, half disjoint pairs."""
    a, b = random_boxes(n // 2, seed=seed), random_boxes(n // 2, seed=seed + 100, scale=3)
    c, d = disjoint_pairs(n - n // 2, seed=seed + 200)
    return torch.cat([a, c]), torch.cat([b, d])


@pytest.mark.parametrize("name", NAMES)
class TestLossChecklist:
    """The checklist every box loss passes."""

    def test_values_match_float64_reference(self, name):
        fn, _, ref = LOSSES[name]
        pred, target = _mixed_pairs()
        assert_close(fn(pred, target, reduction="none"), ref(pred, target), atol=1e-8)

    @pytest.mark.parametrize("device", DEVICES)
    def test_identical_boxes_cost_zero(self, name, device):
        fn = LOSSES[name][0]
        boxes = random_boxes(30, seed=1, device=device)
        torch.testing.assert_close(fn(boxes, boxes, reduction="none"), torch.zeros(30, dtype=torch.float64,
                                                                                  device=device))

    def test_reductions(self, name):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=2)
        per_box = fn(pred, target, reduction="none")
        assert per_box.shape == (40,)
        torch.testing.assert_close(fn(pred, target, reduction="sum"), per_box.sum())
        torch.testing.assert_close(fn(pred, target), per_box.mean())

    def test_reduction_none_keeps_leading_shape(self, name):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=3)
        out = fn(pred.reshape(2, 5, 4, 4), target.reshape(2, 5, 4, 4), reduction="none")
        assert out.shape == (2, 5, 4)
        torch.testing.assert_close(out.flatten(), fn(pred, target, reduction="none"))

    def test_weight_and_avg_factor(self, name):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=4)
        per_box = fn(pred, target, reduction="none")
        w = torch.rand(40, dtype=torch.float64)
        torch.testing.assert_close(fn(pred, target, reduction="none", weight=w), per_box * w)
        torch.testing.assert_close(fn(pred, target, reduction="sum", weight=w), (per_box * w).sum())
        torch.testing.assert_close(fn(pred, target, weight=w), (per_box * w).sum() / 40)
        torch.testing.assert_close(fn(pred, target, weight=w, avg_factor=7.0), (per_box * w).sum() / 7)
        torch.testing.assert_close(fn(pred, target, weight=w, avg_factor=torch.tensor(7.0)), (per_box * w).sum() / 7)
        # a weight broadcast over a batch dimension
        w2 = torch.rand(4, 1, dtype=torch.float64)
        out = fn(pred.reshape(4, 10, 4), target.reshape(4, 10, 4), reduction="none", weight=w2)
        torch.testing.assert_close(out, per_box.reshape(4, 10) * w2)

    def test_avg_factor_zero_gives_finite_zero_for_no_positives(self, name):
        fn = LOSSES[name][0]
        empty = torch.zeros(0, 4, requires_grad=True)
        out = fn(empty, empty.detach(), avg_factor=torch.tensor(0.0))
        assert out.item() == 0.0
        out.backward()
        assert empty.grad.shape == (0, 4)

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_empty_input(self, name, reduction):
        fn = LOSSES[name][0]
        pred = torch.zeros(0, 4, requires_grad=True)
        target = torch.zeros(0, 4, requires_grad=True)
        out = fn(pred, target, reduction=reduction)
        if reduction == "none":
            assert out.shape == (0,)
            out = out.sum()
        else:
            assert out.shape == () and out.item() == 0.0 and not torch.isnan(out)
        out.backward()
        assert pred.grad.shape == (0, 4) and target.grad.shape == (0, 4)

    @pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
    def test_formats(self, name, fmt):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=5)
        expected = fn(pred, target, reduction="none")
        got = fn(tvops.box_convert(pred, "xyxy", fmt), tvops.box_convert(target, "xyxy", fmt), reduction="none",
                 fmt=fmt)
        torch.testing.assert_close(got, expected)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_inputs_computed_in_float32_with_gradients_in_input_dtype(self, name, dtype):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=6)
        p = pred.to(dtype).requires_grad_()
        t = target.to(dtype)
        out = fn(p, t, reduction="none")
        assert out.dtype == torch.float32
        assert_close(out, fn(p.detach().double(), t.double(), reduction="none"), torch.float32)
        out.sum().backward()
        assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()

    def test_integer_inputs_give_float32(self, name):
        fn = LOSSES[name][0]
        pred = torch.tensor([[0, 0, 4, 4], [0, 0, 2, 2]])
        target = torch.tensor([[1, 1, 5, 5], [3, 0, 5, 2]])
        out = fn(pred, target, reduction="none")
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(pred.float(), target.float(), reduction="none"))

    def test_module_equals_function(self, name):
        fn, module_cls, _ = LOSSES[name]
        pred, target = _mixed_pairs(seed=7)
        w = torch.rand(40, dtype=torch.float64)
        module = module_cls(reduction="sum", fmt="xyxy", eps=1e-6)
        torch.testing.assert_close(module(pred, target, w), fn(pred, target, reduction="sum", weight=w, eps=1e-6))
        module = module_cls()
        torch.testing.assert_close(module(pred, target, avg_factor=3), fn(pred, target, avg_factor=3))
        assert "reduction='mean'" in repr(module)

    def test_module_rejects_bad_options_at_construction(self, name):
        module_cls = LOSSES[name][1]
        with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum'; got 'avg'"):
            module_cls(reduction="avg")
        with pytest.raises(ValueError, match="fmt must be one of"):
            module_cls(fmt="yxyx")
        with pytest.raises(TypeError):
            module_cls("mean")  # keyword-only options

    def test_compiled_equals_eager(self, name):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=8)
        compiled = torch.compile(lambda p, t: fn(p, t, reduction="none"), backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(pred, target), fn(pred, target, reduction="none"))

    def test_rejects_bad_inputs(self, name):
        fn = LOSSES[name][0]
        p, t = torch.zeros(3, 4), torch.zeros(3, 4)
        with pytest.raises(ValueError, match=r"pred must have shape \(\.\.\., 4\)"):
            fn(torch.zeros(3, 5), t)
        with pytest.raises(ValueError, match=r"pred and target must have the same shape.*\(3, 4\).*\(2, 4\)"):
            fn(p, torch.zeros(2, 4))
        with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum'; got 'avg'"):
            fn(p, t, reduction="avg")
        with pytest.raises(ValueError, match="fmt must be one of"):
            fn(p, t, fmt="ltrb")
        with pytest.raises(ValueError, match=r"weight must be broadcastable to the loss shape.*\(3,\); got shape \(3, 4\)"):
            fn(p, t, weight=torch.ones(3, 4))
        with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
            fn(p, t, weight=[1.0, 1.0, 1.0])
        with pytest.raises(ValueError, match="avg_factor only applies with reduction='mean'"):
            fn(p, t, reduction="sum", avg_factor=2.0)
        with pytest.raises(TypeError, match="target must be a torch.Tensor"):
            fn(p, None)
        with pytest.raises(TypeError, match="avg_factor must be a number"):
            fn(p, t, avg_factor="2")

    @requires_cuda
    def test_cuda_matches_cpu(self, name):
        fn = LOSSES[name][0]
        pred, target = _mixed_pairs(seed=9)
        p32, t32 = pred.float(), target.float()
        assert_close(fn(p32.cuda(), t32.cuda(), reduction="none").cpu(), fn(p32, t32, reduction="none"),
                     torch.float32)


@pytest.mark.parametrize("name", ["iou", "log_iou", "giou", "diou"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlapping", "disjoint"])
def test_gradcheck_float64(name, overlap):
    fn = LOSSES[name][0]
    if overlap:
        pred, target = overlapping_pairs(5, seed=10)
    else:
        pred, target = disjoint_pairs(5, seed=12)
    pred.requires_grad_()
    target.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: fn(p, t, reduction="none"), (pred, target))


def _ciou_reference(p, t):
    """CIoU loss written from the paper's equations, α detached: the gradient boxloss must reproduce."""
    px1, py1, px2, py2 = p.unbind(-1)
    tx1, ty1, tx2, ty2 = t.unbind(-1)
    iw = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0)
    ih = (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou = inter / union
    c2 = (torch.max(px2, tx2) - torch.min(px1, tx1)) ** 2 + (torch.max(py2, ty2) - torch.min(py1, ty1)) ** 2
    rho2 = ((px1 + px2 - tx1 - tx2) / 2) ** 2 + ((py1 + py2 - ty1 - ty2) / 2) ** 2
    v = 4 / math.pi**2 * (torch.atan((tx2 - tx1) / (ty2 - ty1)) - torch.atan((px2 - px1) / (py2 - py1))) ** 2
    alpha = (v / (1 - iou + v)).detach()
    return 1 - iou + rho2 / c2 + alpha * v


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapping", "disjoint"])
def test_ciou_gradient_matches_autograd_through_the_formula(overlap):
    if overlap:
        pred, target = overlapping_pairs(20, seed=13)
    else:
        pred, target = disjoint_pairs(20, seed=15)
    p1, t1 = pred.clone().requires_grad_(), target.clone().requires_grad_()
    p2, t2 = pred.clone().requires_grad_(), target.clone().requires_grad_()
    ciou_loss(p1, t1, reduction="sum").backward()
    _ciou_reference(p2, t2).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-6, atol=1e-9)


def test_ciou_alpha_is_constant_in_backward():
    # with α differentiated the gradient would differ; make sure it is the detached one
    pred = torch.tensor([[0.0, 0, 2, 1]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.5, 0, 2, 3]], dtype=torch.float64)
    ciou_loss(pred, target).backward()
    p2 = pred.detach().clone().requires_grad_()
    full = _ciou_reference(p2, target)
    full.backward()
    torch.testing.assert_close(pred.grad, p2.grad)
    gc_ok = True
    try:
        torch.autograd.gradcheck(lambda p: ciou_loss(p, target), (pred.detach().clone().requires_grad_(),),
                                 raise_exception=True)
    except RuntimeError:
        gc_ok = False
    assert not gc_ok, "CIoU's gradient unexpectedly equals the full derivative: α is not held constant"


def test_log_iou_loss_is_minus_log_above_the_threshold_and_its_tangent_below():
    pred, target = overlapping_pairs(300, seed=16)
    iou = tvops.box_iou(pred, target).diagonal()
    assert (iou > 0).all() and (iou >= 0.7).any() and (iou < 0.7).any()
    loss = log_iou_loss(pred, target, reduction="none")
    above = iou >= 0.7
    torch.testing.assert_close(loss[above], -torch.log(iou[above]))  # UnitBox's −ln IoU
    torch.testing.assert_close(loss[~above], -math.log(0.7) + (0.7 - iou[~above]) / 0.7)  # its tangent at 0.7
    # the textbook loss everywhere with zero_overlap="none"
    torch.testing.assert_close(log_iou_loss(pred, target, reduction="none", zero_overlap="none"), -torch.log(iou))
    # value and slope continuous at the threshold: d loss / d IoU = −1/0.7 on both sides
    x = torch.tensor([0.7 - 1e-6, 0.7, 0.7 + 1e-6], dtype=torch.float64, requires_grad=True)
    from boxloss.boxes import _smooth_neg_log

    y = _smooth_neg_log(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert (y.diff().abs() < 2e-6).all() and torch.allclose(g, torch.full_like(g, -1 / 0.7), atol=1e-5)


def test_public_surface_is_declared_once():
    assert sorted(boxloss.__all__) == sorted(
        ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "iou_loss", "log_iou_loss",
         "giou_loss", "diou_loss", "ciou_loss", "IoULoss", "LogIoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "FastPathWarning",
         "siou_loss", "eiou_loss", "focal_eiou_loss", "wiou_loss", "mpdiou_loss", "shape_iou_loss", "nwd_loss",
         "alpha_iou_loss", "inner_iou_loss", "focaler_iou_loss", "SIoULoss", "EIoULoss", "FocalEIoULoss", "WIoULoss",
         "MPDIoULoss", "ShapeIoULoss", "NWDLoss", "AlphaIoULoss", "InnerIoULoss", "FocalerIoULoss",
         "probiou_loss", "gwd_loss", "kld_loss", "kfiou_loss", "ProbIoULoss", "GWDLoss", "KLDLoss", "KFIoULoss"])
    for name in boxloss.__all__:
        assert getattr(boxloss, name).__doc__, f"{name} has no docstring"
        if not name[0].isupper():
            doc = getattr(boxloss, name).__doc__
            assert "Reference" in doc and "Example" in doc and "{args}" not in doc and "{shapes}" not in doc


def test_avg_factor_negative_is_refused_and_numpy_scalars_are_accepted():
    import numpy as np

    p, t = overlapping_pairs(6, seed=20)
    expected = giou_loss(p, t, avg_factor=3.0)
    for good in (np.float32(3.0), np.float64(3.0), np.int64(3)):
        torch.testing.assert_close(giou_loss(p, t, avg_factor=good), expected)
    for bad in (-1, -0.5, float("nan"), np.float32(-2.0)):
        with pytest.raises(ValueError, match="avg_factor must be >= 0"):
            giou_loss(p, t, avg_factor=bad)


def test_eps_below_the_smallest_normal_is_refused():
    p, t = overlapping_pairs(4, seed=21)
    with pytest.raises(ValueError, match="smallest normal number of the compute dtype torch.float32"):
        iou_loss(p.float(), t.float(), eps=1e-40)
    with pytest.raises(ValueError, match="smallest normal"):
        boxloss.box_iou(p.half(), t.half(), eps=1e-39)  # half inputs compute in float32
    assert torch.isfinite(iou_loss(p, t, eps=1e-40))  # fine in float64
    with pytest.raises(ValueError, match="eps must be a positive number"):
        giou_loss(p, t, eps=0.0)


# ----------------------------------------------------------------------------------------------------------
# traced graphs, devices and dtypes of the tensor arguments
# ----------------------------------------------------------------------------------------------------------
def _every_loss():
    """(name, call) for every public loss function, axis-aligned and rotated."""
    axis = [(n, getattr(boxloss, f"{n}_loss")) for n in ("iou", "log_iou", "giou", "diou", "ciou", "siou", "eiou",
                                                         "focal_eiou", "wiou", "shape_iou", "nwd", "alpha_iou",
                                                         "inner_iou", "focaler_iou")]
    axis.append(("mpdiou", lambda p, t, **kw: boxloss.mpdiou_loss(p, t, image_size=(64, 48), **kw)))
    rotated = [(n, getattr(boxloss, f"{n}_loss")) for n in ("probiou", "gwd", "kld", "kfiou")]
    rotated += [(f"rotated_{n}", functools.partial(getattr(boxloss, f"{n}_loss"), fmt="cxcywhr"))
                for n in ("iou", "giou", "diou")]
    return axis, rotated


def _rotated(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g) * 10, torch.rand(n, 2, generator=g) * 4 + 1,
                      torch.rand(n, 1, generator=g) * 180], 1)


@pytest.mark.parametrize("weighted", [False, True])
def test_traced_mean_reads_the_number_of_boxes_at_run_time(weighted):
    # before: torch.jit.trace baked 1/N in; traced on 4 boxes and called on 2 it returned half the value
    import warnings

    axis, rotated = _every_loss()
    for name, fn in axis + rotated:
        make = (lambda n, s: _rotated(n, s)) if (name in ("probiou", "gwd", "kld", "kfiou")
                                                 or name.startswith("rotated")) else \
            (lambda n, s: random_boxes(n, seed=s, dtype=torch.float32))
        p4, t4, p2, t2 = make(4, 1), make(4, 2), make(2, 3), make(2, 4)
        if weighted:
            call = lambda p, t, fn=fn: fn(p, t, weight=torch.ones_like(p[..., 0]))  # noqa: E731
        else:
            call = lambda p, t, fn=fn: fn(p, t)  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(call, (p4, t4), check_trace=False)
        assert_close(traced(p2, t2), call(p2, t2), torch.float32)
        assert_close(traced(p4, t4), call(p4, t4), torch.float32)


def test_weight_and_avg_factor_must_be_on_the_boxes_device():
    # before: a meta weight gave -2.7e8, a meta avg_factor -7.8e21 (the C kernel read them as CPU memory)
    axis, rotated = _every_loss()
    for name, fn in axis + rotated:
        p = _rotated(3, 5) if name in ("probiou", "gwd", "kld", "kfiou") or name.startswith("rotated") else \
            random_boxes(3, seed=5, dtype=torch.float32)
        with pytest.raises(ValueError, match="weight must be on the boxes' device cpu; got a tensor on meta"):
            fn(p, p, weight=torch.ones(3, device="meta"))
        with pytest.raises(ValueError, match="avg_factor must be on the boxes' device cpu; got a tensor on meta"):
            fn(p, p, avg_factor=torch.tensor(2.0, device="meta"))
        with pytest.raises(TypeError, match="weight must be a real tensor"):  # before: accepted with a warning
            fn(p, p, weight=torch.ones(3, dtype=torch.complex64))
        with pytest.raises(TypeError, match="avg_factor must be a real tensor"):
            fn(p, p, avg_factor=torch.tensor(2.0 + 0j))
    m = boxloss.WIoULoss(version=3)
    p = random_boxes(3, seed=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="weight must be on the boxes' device"):
        m(p, p, weight=torch.ones(3, device="meta"))


def test_float32_losses_are_finite_for_coordinates_up_to_1e18():
    # the documented range (README, Numerics): areas of 1e36 and their derivatives stay within float32's 3.4e38;
    # at 1e19 the areas themselves overflow
    g = torch.Generator().manual_seed(80)
    n = 2000
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * 1e18
    wh = torch.rand(n, 2, generator=g) * 1e18
    a = torch.cat([xy, xy + wh], 1)
    b = a + (torch.rand(n, 4, generator=g) - 0.5) * 5e17
    b[: n // 4] = a[: n // 4]                           # identical
    b[n // 4: n // 2] = a[n // 4: n // 2] + 2.5e18      # apart
    axis, _ = _every_loss()
    for name, fn in axis:
        for path in ("fast", "reference"):
            x = a.clone().requires_grad_()
            if path == "reference":
                with boxloss.backends.reference_path():
                    loss = fn(x, b, reduction="none")
            else:
                loss = fn(x, b, reduction="none")
            loss.sum().backward()
            assert loss.isfinite().all() and x.grad.isfinite().all(), (name, path)
