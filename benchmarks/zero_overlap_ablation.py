"""How boxloss chose its zero-overlap term and the Smooth-ln threshold of −ln IoU: the candidates, measured.

Two measurements, each loss run with plain gradient descent exactly as in ``regression_simulation.py``:

1. The DIoU paper's simulation (``--points``: 300 for a quick run, 5000 for the full 1.7M cases): the total ℓ1
   error after 200 iterations, for 1 − IoU plus each candidate zero-overlap term, GIoU as the yardstick, and
   Smooth-ln −ln IoU (tangent below τ) for several τ.
2. Far-away starts (``--far``): 2,000 predictions 2, 10 and 50 target diagonals away from their targets,
   300 iterations: does the error go down, and how far?

Candidates for the term added to 1 − IoU on disjoint pairs (d: distance between the boxes' nearest points):
``enclosing`` d / diagonal of the enclosing box (boxloss 0.1), ``target`` d / diagonal of the target (boxloss'
choice), ``both`` d / √(diag(pred)² + diag(target)²), ``enclosing_sq`` d² / enclosing diagonal² (DIoU-like).

    python benchmarks/zero_overlap_ablation.py --points 300 --far     # a few minutes on 2 CPU cores
    python benchmarks/zero_overlap_ablation.py --points 5000          # the full simulation, ~10 minutes

Prints markdown tables and writes ablation.json to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import regression_simulation as sim  # noqa: E402

import boxloss  # noqa: E402

TERMS = ("enclosing", "target", "both", "enclosing_sq")
TAUS = (0.1, 0.3, 0.5, 0.6, 0.7, 0.8)


def _xyxy(b, fmt):
    if fmt == "xyxy":
        return b
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _hypot(x, y):
    """hypot with a zero (not NaN) gradient at 0."""
    s = x * x + y * y
    return torch.where(s > 0, torch.sqrt(torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(s))


def gap_term(p, t, term):
    gx = (torch.maximum(p[:, 0], t[:, 0]) - torch.minimum(p[:, 2], t[:, 2])).clamp_min(0)
    gy = (torch.maximum(p[:, 1], t[:, 1]) - torch.minimum(p[:, 3], t[:, 3])).clamp_min(0)
    d = _hypot(gx, gy)
    cw = torch.maximum(p[:, 2], t[:, 2]) - torch.minimum(p[:, 0], t[:, 0])
    ch = torch.maximum(p[:, 3], t[:, 3]) - torch.minimum(p[:, 1], t[:, 1])
    tw, th = (t[:, 2] - t[:, 0]).clamp_min(0), (t[:, 3] - t[:, 1]).clamp_min(0)
    pw, ph = (p[:, 2] - p[:, 0]).clamp_min(0), (p[:, 3] - p[:, 1]).clamp_min(0)
    if term == "enclosing":
        return d / _hypot(cw, ch).clamp_min(1e-7)
    if term == "target":
        return d / _hypot(tw, th).clamp_min(1e-7)
    if term == "both":
        return d / _hypot(_hypot(pw, ph), _hypot(tw, th)).clamp_min(1e-7)
    return d * d / (cw * cw + ch * ch).clamp_min(1e-7)


def make_loss(term=None, tau=None):
    def loss(p, t, fmt):
        p, t = _xyxy(p, fmt), _xyxy(t, fmt)
        iou = boxloss.box_iou(p, t, aligned=True)
        if tau is None:
            value = 1 - iou
        else:
            value = torch.where(iou >= tau, -torch.where(iou >= tau, iou, 1.0).log(), -math.log(tau) + (tau - iou) / tau)
        return (value + gap_term(p, t, term)).sum()

    return loss


def candidates():
    out = {"giou": lambda p, t, fmt: boxloss.giou_loss(p, t, reduction="sum", fmt=fmt)}
    out.update({f"iou+{term}": make_loss(term) for term in TERMS})
    out.update({f"log_iou(τ={tau})+target": make_loss("target", tau) for tau in TAUS})
    return out


def far_cases(distance: float, n: int = 2000, seed: int = 0):
    """(anchors, targets) in (cx, cy, w, h): targets at the origin, predictions ``distance`` diagonals away."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.rand(n, 2, generator=g) * 3 + 0.5
    targets = torch.cat([torch.zeros(n, 2), sizes], 1)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    centre = torch.stack([angle.cos(), angle.sin()], 1) * (distance * sizes.norm(dim=1))[:, None]
    anchors = torch.cat([centre, sizes * (torch.rand(n, 2, generator=g) + 0.5)], 1)
    return anchors, targets


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=300, help="anchor centres of the simulation (5000: full)")
    parser.add_argument("--far", action="store_true", help="also the far-away starts")
    parser.add_argument("--out", default="runs/zero_overlap_ablation")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    results = {"points": args.points, "simulation": {}, "far": {}}
    anchors, targets, _ = sim.make_cases(args.points, 0, torch.float32)
    for name, fn in tqdm(candidates().items(), desc="simulation", file=sys.stderr):
        errors, _ = sim.regress(fn, anchors, targets, 200)
        results["simulation"][name] = {"it40": errors[39], "it160": errors[159], "final": errors[-1]}
    if args.far:
        far_losses = {k: v for k, v in candidates().items() if k == "giou" or k.startswith("iou+")}
        for distance in (2, 10, 50):
            a, t = far_cases(distance)
            start = (a - t).abs().sum().item()
            for name, fn in tqdm(far_losses.items(), desc=f"far {distance}", file=sys.stderr):
                errors, _ = sim.regress(fn, a, t, 300)
                results["far"].setdefault(name, {})[str(distance)] = {"start": start, "final": errors[-1]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(results, f, indent=1)
    giou = results["simulation"]["giou"]["final"]
    print(f"### simulation, {args.points} points ({args.points * 343:,} cases), final error after 200 iterations\n")
    print("| loss | it 40 | it 160 | it 200 | ÷ GIoU |\n|---|---:|---:|---:|---:|")
    for name, r in results["simulation"].items():
        print(f"| {name} | {r['it40']:.4g} | {r['it160']:.4g} | {r['final']:.4g} | {r['final'] / giou:.2f} |")
    if results["far"]:
        print("\n### far-away starts: ℓ1 error after 300 iterations ÷ at the start (below 1: the boxes came closer)\n")
        print("| loss | 2 diagonals | 10 diagonals | 50 diagonals |\n|---|---:|---:|---:|")
        for name, r in results["far"].items():
            print(f"| {name} | " + " | ".join(f"{r[d]['final'] / r[d]['start']:.3f}" for d in ("2", "10", "50")) + " |")
    return results


if __name__ == "__main__":
    main()
