"""Run by tests/test_fast.py in a subprocess with TRITON_INTERPRET=1: the Triton kernels on CPU tensors, through
Triton's interpreter, against the plain-PyTorch reference. Prints one line per check and exits non-zero on a
mismatch."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import disjoint_pairs, overlapping_pairs, random_boxes  # noqa: E402
from test_edges import _all_pairs  # noqa: E402

import boxloss  # noqa: E402
from boxloss import _fast  # noqa: E402
from boxloss._fast import triton_kernels  # noqa: E402
from boxloss._fast.fused import KINDS  # noqa: E402


def main() -> int:
    a, b = overlapping_pairs(200, seed=1)
    c, d = disjoint_pairs(200, seed=2)
    e, f = _all_pairs()
    pred = torch.cat([a, c, e.double()]).float()
    target = torch.cat([b, d, f.double()]).float()
    failures = 0
    for kind in KINDS:
        loss, gp, gt = triton_kernels.aligned_loss_and_grad(kind, pred.contiguous(), target.contiguous(), 1e-7, True, True)
        ref_loss, ref_gp, ref_gt = _fast.fused_loss_and_grad(kind, pred, target, 1e-7, True)
        for name, x, y in (("loss", loss, ref_loss), ("grad_p", gp, ref_gp), ("grad_t", gt, ref_gt)):
            err = (x - y).abs().max().item()
            ok = torch.allclose(x, y, rtol=2e-6, atol=2e-6)
            failures += not ok
            print(f"aligned {kind} {name}: max abs err {err:.2e} {'ok' if ok else 'MISMATCH'}")
    boxes1 = torch.cat([random_boxes(50, seed=3), e.double()]).float().reshape(1, -1, 4)
    boxes2 = torch.cat([random_boxes(37, seed=4), f.double()[:20]]).float().reshape(1, -1, 4)
    for kind, fn in (("iou", boxloss.box_iou), ("giou", boxloss.generalized_box_iou), ("diou", boxloss.distance_box_iou),
                     ("ciou", boxloss.complete_box_iou)):
        got = triton_kernels.pairwise(kind, boxes1.contiguous(), boxes2.contiguous(), 1e-7, block_n=16, block_m=32)
        with _fast.reference_path():
            expected = fn(boxes1, boxes2)
        err = (got - expected).abs().max().item()
        ok = torch.allclose(got, expected, rtol=2e-6, atol=2e-6)
        failures += not ok
        print(f"pairwise {kind}: max abs err {err:.2e} {'ok' if ok else 'MISMATCH'}")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
