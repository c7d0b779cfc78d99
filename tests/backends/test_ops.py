"""boxloss' operators as PyTorch sees them: registered ops (opcheck), captured by torch.compile with no graph break,
recorded by jit.trace and torch.export, transformed by torch.func (grad, vmap, jacrev, jacfwd, hessian), exact
second derivatives, forward-mode AD, the weighted reduction in the kernel pass, and NaN/Inf propagation — on both
CPU implementations (compiled C kernel and PyTorch closed form)."""

import math

import pytest
import torch
from conftest import overlapping_pairs, random_boxes
from test_edges import _all_pairs

import boxloss
from boxloss import backends
from boxloss.backends import ops
from boxloss.detection import decoded_box_loss

NAN, INF = float("nan"), float("inf")

# every public entry that reaches an operator: (name, fn(pred, target) -> tensor)
ENTRIES = {
    "iou_loss": lambda p, t: boxloss.iou_loss(p, t),
    "iou_loss_none": lambda p, t: boxloss.iou_loss(p, t, reduction="none", zero_overlap="none"),
    "log_iou_loss": lambda p, t: boxloss.log_iou_loss(p, t, reduction="sum"),
    "log_iou_loss_none": lambda p, t: boxloss.log_iou_loss(p, t, reduction="none", zero_overlap="none"),
    "giou_loss": lambda p, t: boxloss.giou_loss(p, t),
    "diou_loss_weighted": lambda p, t: boxloss.diou_loss(p, t, weight=torch.linspace(0.5, 2, p.shape[0],
                                                                                      dtype=p.dtype),
                                                          avg_factor=torch.tensor(3.0, dtype=p.dtype)),
    "ciou_loss": lambda p, t: boxloss.ciou_loss(p, t, reduction="none"),
    "box_iou_aligned": lambda p, t: boxloss.box_iou(p, t, aligned=True),
    "box_iou": lambda p, t: boxloss.box_iou(p, t),
    "generalized_box_iou": lambda p, t: boxloss.generalized_box_iou(p, t),
    "distance_box_iou": lambda p, t: boxloss.distance_box_iou(p, t),
    "complete_box_iou": lambda p, t: boxloss.complete_box_iou(p, t),
}
PAIRWISE_NAMES = {"box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"}


def reference(fn, *args, **kwargs):
    with backends.reference_path():
        return fn(*args, **kwargs)


def _pair(n=12, seed=0, dtype=torch.float64):
    p, t = overlapping_pairs(n, seed=seed, dtype=dtype)
    return p, t


def _ops_in_graph(gm) -> set:
    return {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}


# ----------------------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", [False, True])
@pytest.mark.parametrize("need", [(False, False), (True, False), (True, True)])
def test_aligned_op_passes_opcheck(backend, reduce, need):
    p, t = _pair(8)
    p.requires_grad_(need[0])
    t.requires_grad_(need[1])
    w = torch.rand(8, dtype=torch.float64) if reduce else None
    div = torch.tensor(2.5, dtype=torch.float64) if reduce else None
    torch.library.opcheck(torch.ops.boxloss.aligned_loss.default,
                          (p, t, w, div, "ciou", 1e-7, reduce, 0.5, need[0], need[1]))


def test_pairwise_op_passes_opcheck(backend):
    a, b = random_boxes(10, seed=1).reshape(2, 5, 4), random_boxes(6, seed=2).reshape(2, 3, 4)
    torch.library.opcheck(torch.ops.boxloss.pairwise_score.default, (a, b, "giou", 1e-7))
    torch.library.opcheck(torch.ops.boxloss.pairwise_score.default, (a.requires_grad_(), b, "diou", 1e-7))


# ----------------------------------------------------------------------------------------------------------
# torch.compile, jit.trace, export
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_captures_the_operators_with_equal_values_and_gradients(backend, compile_backend):
    def step(p, t):
        return (boxloss.giou_loss(p, t) + boxloss.iou_loss(p, t, reduction="sum")
                + boxloss.ciou_loss(p, t, weight=torch.ones(p.shape[0], dtype=p.dtype), avg_factor=4.0)
                + boxloss.box_iou(p, t).mean() + boxloss.distance_box_iou(p, t, aligned=True).sum())

    p, t = _pair(40, dtype=torch.float32)
    captured = []

    def capture(gm, example_inputs):
        captured.append(_ops_in_graph(gm))
        return gm

    torch._dynamo.reset()
    torch.compile(step, backend=capture, fullgraph=True)(p, t)
    assert {"boxloss.aligned_loss.default", "boxloss.pairwise_score.default"} <= captured[0]
    assert not any("maximum" in op or "clamp" in op for op in captured[0])  # not the reference formula

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=compile_backend, fullgraph=True)
    p1, p2 = p.clone().requires_grad_(), p.clone().requires_grad_()
    out = compiled(p1, t)
    out.backward()
    ref = reference(step, p2, t)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-6)


def test_jit_trace_records_the_operators_and_replays_new_inputs(backend):
    p, t = _pair(10)
    traced = torch.jit.trace(lambda a, b: boxloss.giou_loss(a, b, reduction="none")
                             + boxloss.box_iou(a, b).sum(1), (p, t))
    graph = str(traced.graph)
    assert "boxloss::aligned_loss" in graph and "boxloss::pairwise_score" in graph
    p2, t2 = _pair(10, seed=5)
    p2.requires_grad_()
    out = traced(p2, t2)
    expected = reference(lambda a, b: boxloss.giou_loss(a, b, reduction="none") + boxloss.box_iou(a, b).sum(1),
                         p2, t2)
    torch.testing.assert_close(out, expected)
    (g,) = torch.autograd.grad(out.sum(), p2)  # traced without requires_grad: the gradient is still exact
    (g_ref,) = torch.autograd.grad(expected.sum(), p2)
    torch.testing.assert_close(g, g_ref)


def test_export_records_the_operators(backend):
    class Criterion(torch.nn.Module):
        def forward(self, p, t):
            return boxloss.diou_loss(p, t) + boxloss.generalized_box_iou(p, t).sum()

    p, t = _pair(10)
    exported = torch.export.export(Criterion(), (p, t))
    names = _ops_in_graph(exported.graph_module)
    assert "boxloss.aligned_loss.default" in names and "boxloss.pairwise_score.default" in names
    p2, t2 = _pair(10, seed=3)
    torch.testing.assert_close(exported.module()(p2, t2), reference(Criterion(), p2, t2))


# ----------------------------------------------------------------------------------------------------------
# torch.func, higher derivatives, forward mode
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ENTRIES))
def test_torch_func_transforms_equal_the_reference(backend, name):
    fn = ENTRIES[name]
    p, t = _pair(6)

    def scalar(a, b):
        return fn(a, b).sum()

    def both(transform, f, *args, **kw):
        got = transform(f, **kw)(*args)
        with backends.reference_path():
            expected = transform(f, **kw)(*args)
        torch.testing.assert_close(got, expected)

    both(torch.func.grad, scalar, p, t, argnums=(0, 1))
    both(torch.func.jacrev, fn, p, t)
    both(torch.func.jacfwd, fn, p, t)
    both(torch.func.hessian, scalar, p, t)
    stack = torch.stack([p, p + 0.5, p * 1.1])
    both(torch.func.vmap, fn, stack, t, in_dims=(0, None))
    both(torch.func.vmap, torch.func.grad(scalar), stack, t, in_dims=(0, None))


def test_vmap_folds_the_batch_into_one_operator_call(backend, monkeypatch):
    calls = []
    real = ops.aligned_loss_op

    class Spy:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(ops, "aligned_loss_op", real)  # restored after
    p, t = _pair(6)
    stack = torch.stack([p, p + 0.5, p * 1.1])
    rule = ops.make_aligned_vmap(Spy())
    (loss, _, _), _ = rule(type("Info", (), {"batch_size": 3})(), (0, None, None, None), stack, t, None, None,
                           "giou", 1e-7, False, 1.0, False, False)
    assert calls == [torch.Size([18, 4])] and loss.shape == (3, 6)


@pytest.mark.parametrize("name", list(ENTRIES))
def test_second_derivatives_equal_the_reference(backend, name):
    """hvp, hessian and a gradient penalty through the fast path equal the reference path's (they were silent
    zeros before: the local gradient is a constant of the closed form)."""
    fn = ENTRIES[name]
    p, t = _pair(5)
    v = torch.rand_like(p)

    def scalar(a):
        return fn(a, t).sum()

    _, hvp = torch.autograd.functional.hvp(scalar, p, v)
    _, hvp_ref = reference(torch.autograd.functional.hvp, scalar, p, v)
    torch.testing.assert_close(hvp, hvp_ref)
    assert hvp.abs().sum() > 0
    torch.testing.assert_close(torch.autograd.functional.hessian(scalar, p),
                               reference(torch.autograd.functional.hessian, scalar, p))

    def penalty(a):
        a = a.clone().requires_grad_()
        (g,) = torch.autograd.grad(scalar(a), a, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), a)
        return gg

    torch.testing.assert_close(penalty(p), reference(penalty, p))
    if name not in ("ciou_loss", "complete_box_iou"):
        # (CIoU's gradient holds α constant, so it is not the gradient of any function and no numerical second
        # derivative can match it; its second derivatives are checked against the reference above)
        q = p.clone().requires_grad_()
        assert torch.autograd.gradgradcheck(lambda a: fn(a, t), (q,))


@pytest.mark.parametrize("name", ["iou_loss_none", "giou_loss", "ciou_loss", "box_iou_aligned", "box_iou"])
def test_forward_mode_ad_equals_the_reference(backend, name):
    import torch.autograd.forward_ad as fwAD

    fn = ENTRIES[name]
    p, t = _pair(6)
    tangent = torch.rand_like(p)

    def jvp():
        with fwAD.dual_level():
            return fwAD.unpack_dual(fn(fwAD.make_dual(p, tangent), t)).tangent

    torch.testing.assert_close(jvp(), reference(jvp))


# ----------------------------------------------------------------------------------------------------------
# the weighted reduction in the kernel pass
# ----------------------------------------------------------------------------------------------------------
REDUCTIONS = [("sum", None)] + [("mean", a) for a in (None, 7.0, "tensor", 0.0)]  # avg_factor: mean only


@pytest.mark.parametrize("kind", ["iou", "giou", "ciou"])
@pytest.mark.parametrize("reduction,avg_factor", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_reduction_equals_reduce_after(backend, kind, reduction, avg_factor, weighted):
    fn = getattr(boxloss, f"{kind}_loss")
    p, t = _pair(30, seed=4)
    p.requires_grad_()
    t.requires_grad_()
    kw = {"reduction": reduction}
    if weighted:
        kw["weight"] = torch.rand(30, dtype=torch.float64)
    if avg_factor == "tensor":
        kw["avg_factor"] = torch.tensor(5.0, dtype=torch.float64)
    elif avg_factor is not None:
        kw["avg_factor"] = avg_factor
    got = fn(p, t, **kw)
    grads = torch.autograd.grad(got, (p, t))
    expected = reference(fn, p, t, **kw)
    expected_grads = torch.autograd.grad(expected, (p, t))
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_fused_reduction_with_a_weight_that_needs_gradients():
    p, t = _pair(10)
    w = torch.rand(10, dtype=torch.float64, requires_grad=True)
    (gw,) = torch.autograd.grad(boxloss.giou_loss(p, t, weight=w), w)
    w2 = w.detach().requires_grad_()
    (gw_ref,) = torch.autograd.grad(reference(boxloss.giou_loss, p, t, weight=w2), w2)
    torch.testing.assert_close(gw, gw_ref)


def test_empty_input_gives_a_graph_attached_zero(backend):
    p = torch.zeros(0, 4, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = boxloss.giou_loss(p, p.detach(), reduction=reduction)
        assert loss.item() == 0 and loss.requires_grad
        loss.backward()
    assert p.grad.shape == (0, 4)


# ----------------------------------------------------------------------------------------------------------
# NaN in, NaN out; Inf as the reference
# ----------------------------------------------------------------------------------------------------------
LOSS_FNS = ["iou_loss", "log_iou_loss", "giou_loss", "diou_loss", "ciou_loss"]
BOX_FNS = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]


def _poisoned(dtype):
    e, f = _all_pairs()
    pred, target = e.to(dtype).clone(), f.to(dtype).clone()
    for row, col, value in ((3, 0, NAN), (11, 3, NAN), (22, 2, INF), (35, 1, -INF), (47, 2, INF), (58, 0, 1e38)):
        pred[row, col] = value
    target[5, 1] = NAN
    target[60, 2] = INF
    return pred, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LOSS_FNS)
def test_nan_and_inf_propagate_through_the_losses_as_through_the_reference(backend, name, dtype):
    fn = getattr(boxloss, name)
    pred, target = _poisoned(dtype)
    got = fn(pred, target, reduction="none")
    expected = reference(fn, pred, target, reduction="none")
    torch.testing.assert_close(got, expected, equal_nan=True)  # NaN, Inf and values in the same places
    assert got[[3, 11, 5]].isnan().all()
    for reduction in ("mean", "sum"):
        assert fn(pred, target, reduction=reduction).isnan()  # one NaN box poisons the batch, never −1e9
    p = pred.clone().requires_grad_()
    fn(p, target, reduction="sum").backward()
    assert p.grad[3].isnan().all() and p.grad[11].isnan().all()  # NaN reaches the parameters
    # gradients of boxes with finite coordinates equal the reference's (with an Inf coordinate the pattern of
    # NaN in the gradient is an accident of how each implementation orders Inf arithmetic)
    finite = expected.isfinite() & pred.isfinite().all(1) & target.isfinite().all(1)
    q = pred.clone().requires_grad_()
    reference(lambda: fn(q, target, reduction="none")[finite].sum().backward())
    p2 = pred.clone().requires_grad_()
    fn(p2, target, reduction="none")[finite].sum().backward()
    torch.testing.assert_close(p2.grad[finite], q.grad[finite], equal_nan=True)


@pytest.mark.parametrize("name", BOX_FNS)
def test_nan_and_inf_propagate_through_the_box_functions(backend, name):
    fn = getattr(boxloss, name)
    pred, target = _poisoned(torch.float32)
    got = fn(pred, target[:40])
    torch.testing.assert_close(got, reference(fn, pred, target[:40]), equal_nan=True)
    assert got[3].isnan().all() and got[:, 5].isnan().all()
    aligned = fn(pred, target, aligned=True)
    torch.testing.assert_close(aligned, reference(fn, pred, target, aligned=True), equal_nan=True)
    nan_box = torch.tensor([[NAN, 0.0, 1.0, 1.0]])
    assert fn(nan_box, torch.tensor([[0.0, 0.0, 1.0, 1.0]])).isnan().all()  # not 1e9


def test_nan_delta_reaches_decoded_box_loss(backend):
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 25.0]])
    targets = torch.tensor([[1.0, 1.0, 11.0, 9.0], [6.0, 4.0, 21.0, 24.0]])
    deltas = torch.zeros(2, 4)
    deltas[1, 2] = NAN
    positive = torch.tensor([True, True])
    for loss in ("iou", "giou", "diou", "ciou", "log_iou"):
        assert decoded_box_loss(deltas, anchors, targets, positive, loss=loss).isnan(), loss


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_match_the_reference_with_saturated_gradients(backend, dtype):
    p, t = _pair(50, seed=6, dtype=torch.float32)
    p, t = (p * 100).to(dtype), (t * 100).to(dtype)
    for name in LOSS_FNS:
        fn = getattr(boxloss, name)
        a = p.clone().requires_grad_()
        b = p.clone().requires_grad_()
        got = fn(a, t, reduction="none")
        expected = reference(fn, b, t, reduction="none")
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected)
        got.sum().backward()
        expected.sum().backward()  # the graph was built on the reference path
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad, b.grad)
    # a gradient beyond float16's range is clamped, not Inf
    tiny = torch.tensor([[0.0, 0.0, 1e-3, 1e-3]], dtype=torch.float16, requires_grad=True)
    far = torch.tensor([[0.5e-3, 0.0, 1.5e-3, 1e-3]], dtype=torch.float16)
    boxloss.log_iou_loss(tiny, far, reduction="sum").backward()
    assert torch.isfinite(tiny.grad).all()


def test_fast_path_values_unchanged_for_big_batches(backend):
    """A batch large enough for several chunks and threads equals the reference."""
    p, t = _pair(70_000, seed=8, dtype=torch.float32)
    torch.testing.assert_close(boxloss.ciou_loss(p, t, reduction="none"),
                               reference(boxloss.ciou_loss, p, t, reduction="none"), rtol=1e-5, atol=1e-6)
    assert math.isfinite(boxloss.giou_loss(p, t).item())
