"""Run by tests/backends/test_dispatch.py in a subprocess with TRITON_INTERPRET=1: the Triton kernels and their operators on
CPU tensors, through Triton's interpreter, against the plain-PyTorch reference. Prints one line per check and
exits non-zero on a mismatch."""

import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "core")]  # conftest's helpers, test_edges
from conftest import disjoint_pairs, overlapping_pairs, random_boxes  # noqa: E402
from test_edges import _all_pairs  # noqa: E402

from boxloss import kinds  # noqa: E402
from boxloss.backends import ops, triton_kernels  # noqa: E402
from boxloss.backends.closed_form import KINDS  # noqa: E402

NAN = float("nan")


def check(name, ok, err=""):
    print(f"{name}: {err} {'ok' if ok else 'MISMATCH'}")
    return not ok


def main() -> int:
    a, b = overlapping_pairs(200, seed=1)
    c, d = disjoint_pairs(200, seed=2)
    e, f = _all_pairs()
    pred = torch.cat([a, c, e.double()]).float()
    target = torch.cat([b, d, f.double()]).float()
    pred[3, 0] = NAN      # NaN in, NaN out
    target[7, 2] = NAN
    n = len(pred)
    w = torch.rand(n, generator=torch.Generator().manual_seed(0))
    failures = 0
    for kind in KINDS:
        def per_box(p, t, kind=kind):
            return ops.reference_aligned(kind, p, t, None, None, 1e-7, False, 1.0)

        ref = torch.func.vmap(torch.func.grad_and_value(per_box, argnums=(0, 1)))(pred.double(), target.double())
        (ref_gp, ref_gt), ref_loss = ref
        loss, gp, gt = triton_kernels.launch_aligned(kind, pred, target, None, None, 1e-7, False, 1.0, True, True,
                                                     use_libdevice=False)
        finite = ref_loss.isfinite()  # rows with a NaN coordinate: checked below (the reference's NaN pattern
        # in the gradients of such rows is an accident of autograd through torch.where; the kernels give all NaN)
        for name, x, y in (("loss", loss, ref_loss), ("grad_p", gp[finite], ref_gp[finite]),
                           ("grad_t", gt[finite], ref_gt[finite])):
            ok = torch.allclose(x.double(), y, rtol=2e-5, atol=2e-5, equal_nan=True)
            failures += check(f"aligned {kind} {name}", ok, f"max abs err {(x.double() - y).abs().nan_to_num().max():.2e}")
        nan_rows = torch.tensor([3, 7])
        failures += check(f"aligned {kind} NaN rows", bool(loss[nan_rows].isnan().all() and gp[nan_rows].isnan().all()
                                                           and gt[nan_rows].isnan().all()))
        # the weighted mean in the kernel pass (finite rows only), with a divisor tensor
        keep = torch.ones(n, dtype=torch.bool)
        keep[nan_rows] = False
        total, tgp, _ = triton_kernels.launch_aligned(kind, pred[keep], target[keep], w[keep], torch.tensor(7.0),
                                                      1e-7, True, 0.5, True, False, use_libdevice=False)
        expected = (ref_loss[keep] * w[keep].double()).sum() * 0.5 / 7
        expected_gp = ref_gp[keep] * (w[keep].double() * 0.5 / 7)[:, None]
        ok = torch.allclose(total.double(), expected, rtol=1e-5) and torch.allclose(tgp.double(), expected_gp,
                                                                                   rtol=2e-5, atol=2e-6)
        failures += check(f"aligned {kind} weighted mean", ok)
    # float16 and bfloat16 read natively: equal to float32 on the rounded boxes
    for dtype in (torch.float16, torch.bfloat16):
        p16, t16 = pred.clamp(-6e4, 6e4).to(dtype), target.clamp(-6e4, 6e4).to(dtype)
        got = triton_kernels.launch_aligned("ciou", p16, t16, None, None, 1e-7, False, 1.0, True, False,
                                            use_libdevice=False)
        want = triton_kernels.launch_aligned("ciou", p16.float(), t16.float(), None, None, 1e-7, False, 1.0, True,
                                             False, use_libdevice=False)
        ok = all(torch.allclose(x, y, equal_nan=True) for x, y in zip(got[:2], want[:2]))
        failures += check(f"native {dtype}", ok)
    boxes1 = torch.cat([random_boxes(50, seed=3), e.double()]).float().reshape(1, -1, 4)
    boxes2 = torch.cat([random_boxes(37, seed=4), f.double()[:20]]).float().reshape(1, -1, 4)
    boxes1[0, 2, 1] = NAN
    for kind in ("iou", "giou", "diou", "ciou"):
        got = triton_kernels.launch_pairwise(kind, boxes1, boxes2, 1e-7, use_libdevice=False, blocks=(16, 32))
        expected = ops.reference_pairwise(kind, boxes1, boxes2, 1e-7)
        ok = torch.allclose(got, expected, rtol=2e-6, atol=2e-6, equal_nan=True) and bool(got[0, 2].isnan().all())
        failures += check(f"pairwise {kind}", ok, f"max abs err {(got - expected).abs().nan_to_num().max():.2e}")
    # the rotated scores: the kernels generated from boxloss/rotated.py (into the kernel cache)
    from test_rotated import mixed_pairs  # noqa: E402

    rp, rt = mixed_pairs(torch.float32)
    rp, rt = rp[::7].reshape(1, -1, 5).clone(), rt[::5].reshape(1, -1, 5)
    rp[0, 3, 4] = NAN
    for kind in ("rotated_iou", "rotated_giou", "rotated_diou"):
        got = triton_kernels.launch_pairwise(kind, rp, rt, 1e-7)
        expected = ops.reference_pairwise(kind, rp, rt, 1e-7)
        ok = torch.allclose(got, expected, rtol=1e-5, atol=2e-6, equal_nan=True) and bool(got[0, 3].isnan().all())
        failures += check(f"pairwise {kind}", ok, f"max abs err {(got - expected).abs().nan_to_num().max():.2e}")
    # the aligned rotated losses: the kernels generated from their formulas, against the compiled CPU kernel of
    # the same formulas (itself tested against the formula's autograd); gradients on the generic pairs
    from test_rotated import CALLS, _kind  # noqa: E402

    ap, at = mixed_pairs(torch.float32)
    ap, at = ap[::3].contiguous(), at[::3].contiguous()
    generic = torch.arange(len(ap)) < 100  # rows 0..299 of mixed_pairs are generic pairs
    for name in sorted(CALLS):
        kind = _kind(name)
        got = triton_kernels.launch_generated_aligned(kind, ap, at, None, None, 1e-7, False, 1.0, True, True)
        want = ops.aligned_loss_op(ap, at, None, None, kind, 1e-7, False, 1.0, True, True)
        ok = (torch.allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
              and torch.allclose(got[1][generic], want[1][generic], rtol=1e-3, atol=1e-3)
              and torch.allclose(got[2][generic], want[2][generic], rtol=1e-3, atol=1e-3)
              and bool(got[1].isfinite().all()))
        failures += check(f"aligned {name}", ok, f"max abs err {(got[0] - want[0]).abs().max():.2e}")
    # the axis-aligned variants: their generated kernels (NaN-propagating maximum and minimum) against the
    # compiled CPU kernels of the same formulas, on overlapping, disjoint and degenerate pairs with a NaN row, from
    # float32 and (read natively) float16 boxes
    from boxloss.kinds import VARIANTS

    params = {"theta": 4.0, "gamma": 0.5, "width": 640.0, "height": 480.0, "scale": 0.5, "constant": 12.8,
              "alpha": 3.0, "ratio": 0.8, "d": 0.0, "u": 0.95}
    xp, xt = overlapping_pairs(48, seed=11, dtype=torch.float32)
    dp, dt = disjoint_pairs(24, seed=12, dtype=torch.float32)
    xp, xt = torch.cat([xp, dp]), torch.cat([xt, dt])
    xp[0, 2] = float("nan")
    # (the classic losses run their hand-written kernels, checked above: no generated Triton kernel of theirs)
    for name in sorted(n for n, v in VARIANTS.items()
                       if v.columns == 4 and n not in triton_kernels.HAND_WRITTEN_ALIGNED):
        kind = kinds.kind_of(name, *[params[k] for k in VARIANTS[name].params])
        for dtype in (torch.float32, torch.float16):
            bp, bt = xp.to(dtype), xt.to(dtype)
            got = triton_kernels.launch_generated_aligned(kind, bp, bt, None, None, 1e-7, False, 1.0, True, True)
            want = ops.aligned_loss_op(bp.float(), bt.float(), None, None, kind, 1e-7, False, 1.0, True, True)
            ok = (torch.allclose(got[0], want[0], rtol=1e-4, atol=1e-5, equal_nan=True)
                  and torch.allclose(got[1], want[1], rtol=1e-3, atol=1e-4, equal_nan=True)
                  and torch.allclose(got[2], want[2], rtol=1e-3, atol=1e-4, equal_nan=True)
                  and bool(got[0][0].isnan()) and bool(got[0][1:].isfinite().all()))
            failures += check(f"aligned {name} {dtype}", ok,
                              f"max abs err {(got[0] - want[0]).abs().nan_to_num().max():.2e}")
    w = torch.rand(len(ap), generator=torch.Generator().manual_seed(1))
    kind = _kind("rotated_giou")
    got = triton_kernels.launch_generated_aligned(kind, ap, at, w, torch.tensor(7.0), 1e-7, True, 0.5, True, False)
    want = ops.aligned_loss_op(ap, at, w, torch.tensor(7.0), kind, 1e-7, True, 0.5, True, False)
    ok = torch.allclose(got[0], want[0], rtol=1e-5) and torch.allclose(got[1][generic], want[1][generic], rtol=1e-3,
                                                                       atol=1e-5)
    failures += check("aligned rotated_giou weighted mean", ok)
    # the registered operators: autograd (closed form and create_graph), vmap
    p, t = overlapping_pairs(16, seed=5, dtype=torch.float32)
    p.requires_grad_()
    op = torch.ops.boxloss.aligned_loss_triton
    out = op(p, t, None, None, "giou", 1e-7, True, 1 / 16, True, False)[0]
    (g,) = torch.autograd.grad(out, p, create_graph=True)
    (g_ref,) = torch.autograd.grad(ops.reference_aligned("giou", p, t, None, None, 1e-7, True, 1 / 16), p,
                                   create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), p)
    (h_ref,) = torch.autograd.grad(g_ref.sum(), p)
    failures += check("triton op: gradient and second derivative", torch.allclose(g, g_ref, atol=1e-6)
                      and torch.allclose(h, h_ref, atol=1e-5))
    batched = torch.func.vmap(lambda x: op(x, t, None, None, "diou", 1e-7, False, 1.0, False, False)[0])(
        torch.stack([p.detach(), p.detach() + 1]))
    expected = torch.stack([ops.reference_aligned("diou", x, t, None, None, 1e-7, False, 1.0)
                            for x in (p.detach(), p.detach() + 1)])
    failures += check("triton op: vmap", torch.allclose(batched, expected, atol=1e-6))
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
