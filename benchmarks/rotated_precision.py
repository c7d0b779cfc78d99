"""Precision of the rotated IoU where training converges: float32 against float64 on nearly identical boxes.

A rotated detector's predictions end up within a fraction of a degree of their targets, so this is where a
loss must be right: 1 − IoU of a box turned by 1e-4°…1° is 1e-6…1e-2, and the angle gradient's sign is what
training follows. For each band of angle errors, targets 40–200 px anywhere in ±500 px at any angle and
predictions turned by |Δθ| in the band (log-uniform, either sign), a third also moved and resized by up to
5e-4 px, all in float32; the same float32 boxes computed in float64 are the reference. Reported per band:
the largest |Δ(1 − IoU)| of boxloss and of torchvision's rotated ``box_iou`` (values only: it has no
gradient), and the fraction of boxloss' angle gradients whose sign differs from float64's. Then the accuracy
on ordinary boxes against shapely (exact polygons) where shapely is installed. Only the public API is used.

    python benchmarks/rotated_precision.py            # 20,000 pairs per band
    python benchmarks/rotated_precision.py --quick    # 2,000

Writes rotated_precision.json to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform

import torch
import torchvision
from torchvision.ops import box_iou as tv_box_iou

import boxloss

BANDS = ((1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0))


def converged_pairs(n: int, seed: int, lo: float, hi: float):
    g = torch.Generator().manual_seed(seed)
    t = torch.cat([(torch.rand(n, 2, generator=g) * 2 - 1) * 500, 40 + torch.rand(n, 2, generator=g) * 160,
                   (torch.rand(n, 1, generator=g) * 2 - 1) * 180], 1)
    err = 10 ** (math.log10(lo) + torch.rand(n, generator=g, dtype=torch.float64) * math.log10(hi / lo))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    p = t.clone()
    p[:, 4] = (t[:, 4].double() + sign * err).float()
    moved = torch.rand(n, 1, generator=g) < 1 / 3
    p[:, :4] += (torch.rand(n, 4, generator=g) - 0.5) * 1e-3 * moved
    return p, t


def torchvision_aligned_iou(p, t, block: int = 100):
    """torchvision's rotated ``box_iou`` of each pair (it is pairwise only): the diagonals of 100 × 100 blocks."""
    out = [tv_box_iou(p[i:i + block], t[i:i + block], fmt="cxcywhr").diagonal() for i in range(0, len(p), block)]
    return torch.cat(out)


def loss_and_angle_gradient(p, t, dtype):
    x = p.to(dtype).detach().clone().requires_grad_()
    loss = boxloss.iou_loss(x, t.to(dtype), fmt="cxcywhr", reduction="none")
    loss.sum().backward()
    return loss.detach().double(), x.grad[:, 4].double()


def band(n: int, lo: float, hi: float, seed: int) -> dict:
    p, t = converged_pairs(n, seed, lo, hi)
    l32, g32 = loss_and_angle_gradient(p, t, torch.float32)
    l64, g64 = loss_and_angle_gradient(p, t, torch.float64)
    tv = 1 - torchvision_aligned_iou(p, t).double()
    return {"angle_error_deg": [lo, hi], "pairs": n,
            "boxloss_max_abs_error": float((l32 - l64).abs().max()),
            "torchvision_max_abs_error": float((tv - l64).abs().max()),
            "boxloss_wrong_sign_fraction": float(((g32 * g64) < 0).double().mean()),
            "median_one_minus_iou": float(l64.median())}


def ordinary(n: int) -> dict:
    try:
        from shapely.geometry import Polygon
    except ImportError:
        return {"skipped": "shapely is not installed"}

    def polygon(box):
        cx, cy, w, h, r = (float(x) for x in box)
        c, s = math.cos(math.radians(r)), math.sin(math.radians(r))
        return Polygon([(cx + su * w / 2 * c + sv * h / 2 * s, cy - su * w / 2 * s + sv * h / 2 * c)
                        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))])

    g = torch.Generator().manual_seed(3)
    a = torch.cat([torch.rand(n, 2, generator=g) * 20, torch.rand(n, 2, generator=g) * 7 + 1,
                   torch.rand(n, 1, generator=g) * 360 - 180], 1)
    b = torch.cat([torch.rand(n, 2, generator=g) * 20, torch.rand(n, 2, generator=g) * 7 + 1,
                   torch.rand(n, 1, generator=g) * 360 - 180], 1)
    want = []
    for x, y in zip(a.double(), b.double()):
        pa, pb = polygon(x), polygon(y)
        inter = pa.intersection(pb).area
        want.append(inter / (pa.area + pb.area - inter))
    want = torch.tensor(want, dtype=torch.float64)
    ours = boxloss.box_iou(a, b, aligned=True, fmt="cxcywhr").double()
    theirs = torchvision_aligned_iou(a, b).double()
    return {"pairs": n, "boxloss_float32_max_abs_error": float((ours - want).abs().max()),
            "torchvision_float32_max_abs_error": float((theirs - want).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 pairs per band instead of 20,000")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    n = 2000 if args.quick else 20000
    rows = [band(n, lo, hi, seed=60 + i) for i, (lo, hi) in enumerate(BANDS)]
    print("| angle error | boxloss max |Δ(1−IoU)| | torchvision max |Δ(1−IoU)| | boxloss wrong-sign dθ | "
          "median 1 − IoU |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["angle_error_deg"]
        print(f"| {lo:g}°–{hi:g}° | {r['boxloss_max_abs_error']:.1e} | {r['torchvision_max_abs_error']:.1e} | "
              f"{r['boxloss_wrong_sign_fraction']:.3%} | {r['median_one_minus_iou']:.1e} |")
    plain = ordinary(400)
    print("ordinary boxes against shapely:", plain)
    result = {"device": platform.machine(), "torch": torch.__version__, "torchvision": torchvision.__version__,
              "bands": rows, "ordinary_boxes": plain}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rotated_precision.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
