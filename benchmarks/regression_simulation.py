"""The DIoU paper's box-regression simulation, run with boxloss' own losses and autograd gradients.

Zheng et al., "Distance-IoU Loss" (AAAI 2020), section "Simulation Experiment": 7 targets of area 1 centred at
(10, 10) with aspect ratios 1:4 … 4:1; anchors centred at points drawn uniformly in the disc of radius 3 around
(10, 10), with 7 areas × 7 aspect ratios for every target; 200 steps of gradient descent on (x, y, w, h),
B ← B − η (2 − IoU) ∂L/∂B, with η = 0.1, then 0.01 from step 161 and 0.001 from step 181; the error after each
step is the sum over all cases of the ℓ1 distance between the regressed box and its target.

    python benchmarks/regression_simulation.py                # 5,000 points: 1,715,000 cases per loss
    python benchmarks/regression_simulation.py --quick        # 300 points, 200 iterations, a minute on 2 cores
    python benchmarks/regression_simulation.py --device cuda --dtype float64 --out runs/sim
    python benchmarks/regression_simulation.py --rotated      # rotated boxes (below)

Writes results.json, error_curves.png and final_error_map.png to --out and prints the error table.

``--rotated``: the same design with angles. Every case gets a target angle uniform in [0°, 180°) and an anchor
angle uniform within ±90° of it; gradient descent moves (cx, cy, w, h, θ) with θ in radians (the losses read
degrees); both angles are stored in [−90°, 90°). Compared: smooth-L1 on (cx, cy, w, h, θ) (β = 1/9, the
angle difference not wrapped, as a plain five-parameter regression has it), the rotated IoU, −ln IoU, GIoU and
DIoU losses, the four Gaussian losses, and, for the choice of GIoU's and DIoU's enclosing region (boxloss: the
rectangle aligned with the target), three alternatives: the smaller of the rectangles aligned with either box,
the axis-aligned box of the eight corners (used by several code bases; not rotation invariant) and the convex
hull (its area for GIoU, its diameter for DIoU). The
error is geometric — Σ (1 − IoU) over the cases, and the mean distance between matched corners (the smallest over
the four ways a rectangle can be labelled) — because (w, h, θ) and (h, w, θ + 90°) are the same box. Default
1,000 points (343,000 cases).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import torch

import boxloss

ASPECT_RATIOS = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)  # w / h
AREA_SCALES = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)
CENTRE = (10.0, 10.0)
RADIUS = 3.0
TABLE_ITERATIONS = (10, 20, 40, 80, 160, 200)

LOSSES = {
    "iou_textbook": lambda p, t, fmt: boxloss.iou_loss(p, t, reduction="sum", fmt=fmt, zero_overlap="none"),
    "iou": lambda p, t, fmt: boxloss.iou_loss(p, t, reduction="sum", fmt=fmt),
    "log_iou": lambda p, t, fmt: boxloss.log_iou_loss(p, t, reduction="sum", fmt=fmt),
    "giou": lambda p, t, fmt: boxloss.giou_loss(p, t, reduction="sum", fmt=fmt),
    "diou": lambda p, t, fmt: boxloss.diou_loss(p, t, reduction="sum", fmt=fmt),
    "ciou": lambda p, t, fmt: boxloss.ciou_loss(p, t, reduction="sum", fmt=fmt),
    # the variants, with their papers' default options; MPDIoU's "image" is the 20 × 20 square around
    # the cases, NWD's constant the targets' size (√area = 1), as the paper sets it to the mean object size
    "siou": lambda p, t, fmt: boxloss.siou_loss(p, t, reduction="sum", fmt=fmt),
    "eiou": lambda p, t, fmt: boxloss.eiou_loss(p, t, reduction="sum", fmt=fmt),
    "focal_eiou": lambda p, t, fmt: boxloss.focal_eiou_loss(p, t, reduction="sum", fmt=fmt),
    "wiou": lambda p, t, fmt: boxloss.wiou_loss(p, t, reduction="sum", fmt=fmt),
    "wiou_v3": lambda p, t, fmt: _WIOU_V3[fmt](p, t),
    "mpdiou": lambda p, t, fmt: boxloss.mpdiou_loss(p, t, reduction="sum", fmt=fmt, image_size=(20, 20)),
    "shape_iou": lambda p, t, fmt: boxloss.shape_iou_loss(p, t, reduction="sum", fmt=fmt),
    "nwd": lambda p, t, fmt: boxloss.nwd_loss(p, t, reduction="sum", fmt=fmt, constant=1.0),
    "alpha_iou": lambda p, t, fmt: boxloss.alpha_iou_loss(p, t, reduction="sum", fmt=fmt),
    "alpha_ciou": lambda p, t, fmt: boxloss.alpha_iou_loss(p, t, reduction="sum", fmt=fmt, variant="ciou"),
    "inner_ciou": lambda p, t, fmt: boxloss.inner_iou_loss(p, t, reduction="sum", fmt=fmt, variant="ciou"),
    "focaler_ciou": lambda p, t, fmt: boxloss.focaler_iou_loss(p, t, reduction="sum", fmt=fmt, variant="ciou"),
}
# WIoU v3 keeps a running mean of 1 − IoU across steps (a module per format, reset for every run)
_WIOU_V3 = {}
CLASSIC = ("iou_textbook", "iou", "log_iou", "giou", "diou", "ciou")
# the parameters gradient descent moves: (x, y, w, h) as the DIoU paper describes, or the four edges as Darknet
# (and so the authors' MATLAB simulation, which differentiates w.r.t. top, bottom, left, right) does
PARAMETRISATIONS = {"xywh": "cxcywh", "xyxy": "xyxy"}


def box_sides(area: float, ratio: float) -> tuple[float, float]:
    """(w, h) of a box with the given area and aspect ratio w / h."""
    return math.sqrt(area * ratio), math.sqrt(area / ratio)


def make_cases(points: int, seed: int, dtype=torch.float64, device="cpu"):
    """Anchors and targets, both ``(points · 343, 4)`` in (cx, cy, w, h), and the anchor centres ``(points, 2)``.

    Case order: point-major, then target (7), then anchor area (7), then anchor aspect ratio (7).
    """
    g = torch.Generator().manual_seed(seed)
    r = RADIUS * torch.sqrt(torch.rand(points, generator=g, dtype=torch.float64))
    theta = 2 * math.pi * torch.rand(points, generator=g, dtype=torch.float64)
    centres = torch.stack([CENTRE[0] + r * torch.cos(theta), CENTRE[1] + r * torch.sin(theta)], -1)

    targets = torch.tensor([[*CENTRE, *box_sides(1.0, a)] for a in ASPECT_RATIOS], dtype=torch.float64)
    # anchor sides for every (target, area scale, ratio); targets all have area 1
    sides = torch.tensor([[box_sides(s * 1.0, a) for s in AREA_SCALES for a in ASPECT_RATIOS]] * len(targets),
                         dtype=torch.float64)  # (7, 49, 2)
    per_point = sides.shape[0] * sides.shape[1]
    anchor_xy = centres[:, None, :].expand(points, per_point, 2)
    anchors = torch.cat([anchor_xy, sides.reshape(1, per_point, 2).expand(points, per_point, 2)], -1)
    target_boxes = targets[:, None, :].expand(len(targets), sides.shape[1], 4).reshape(1, per_point, 4)
    target_boxes = target_boxes.expand(points, per_point, 4)
    return (anchors.reshape(-1, 4).to(dtype=dtype, device=device),
            target_boxes.reshape(-1, 4).to(dtype=dtype, device=device), centres)


def learning_rate(iteration: int) -> float:
    """η for 1-based ``iteration``: 0.1 for 1–160, 0.01 for 161–180, 0.001 after."""
    return 0.1 if iteration <= 160 else 0.01 if iteration <= 180 else 0.001


def _cxcywh_to_xyxy(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _xyxy_to_cxcywh(b):
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


def regress(loss_fn, anchors, targets, iterations: int, progress=None, param: str = "xywh"):
    """Gradient descent from ``anchors`` (cx, cy, w, h) on the parameters ``param``.

    Returns the (x, y, w, h) ℓ1 error summed over cases after each iteration, and the final per-case error.
    """
    fmt = PARAMETRISATIONS[param]
    to_param = _cxcywh_to_xyxy if param == "xyxy" else (lambda b: b)
    to_xywh = _xyxy_to_cxcywh if param == "xyxy" else (lambda b: b)
    boxes, goal = to_param(anchors.clone()), to_param(targets)
    errors = []
    for it in range(1, iterations + 1):
        boxes.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(boxes, goal, fmt), boxes)
        with torch.no_grad():
            iou = boxloss.box_iou(boxes, goal, aligned=True, fmt=fmt)
            boxes = boxes - learning_rate(it) * (2 - iou).unsqueeze(-1).to(boxes.dtype) * grad
            errors.append((to_xywh(boxes) - targets).abs().sum().item())
        if progress is not None:
            progress.update(1)
    return errors, (to_xywh(boxes.detach()) - targets).abs().sum(-1)


def error_table(results: dict, iterations: int) -> str:
    cols = [i for i in TABLE_ITERATIONS if i <= iterations] or [iterations]
    lines = ["| loss | " + " | ".join(f"it {i}" for i in cols) + " | seconds |",
             "|---|" + "---:|" * (len(cols) + 1)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['error'][i - 1]:.4g}" for i in cols) + f" | {r['seconds']:.1f} |")
    return "\n".join(lines)


def plot_curves(results: dict, out_dir: str, ylabel: str, title: str) -> None:
    """error_curves.png: one line per loss, each with its own colour (20 colours, then dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.get_cmap("tab20").colors
    for i, (name, r) in enumerate(results.items()):
        ax.plot(range(1, len(r["error"]) + 1), r["error"], label=name, color=colours[(2 * i) % 20 + (i // 10) % 2],
                linestyle="-" if i < 20 else "--")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "error_curves.png"), dpi=120)
    plt.close(fig)


def plot(results: dict, maps: dict, centres, out_dir: str, ylabel: str = "total ℓ1 error over all cases",
         title: str = "DIoU-paper regression simulation (boxloss losses)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_curves(results, out_dir, ylabel, title)

    n = len(maps)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    from matplotlib.colors import LogNorm

    for ax, (name, m) in zip(axes.flat, maps.items()):
        # one logarithmic scale per loss: their final errors differ by orders of magnitude
        positive = m[m > 0]
        lo = float(positive.min()) if len(positive) else 1e-6
        norm = LogNorm(vmin=lo, vmax=max(float(m.max()), lo * 10))
        sc = ax.scatter(centres[:, 0], centres[:, 1], c=m.clamp_min(lo), s=4, cmap="viridis", norm=norm)
        ax.set_title(f"{name}: {float(m.sum()):.3g}")
        ax.set_aspect("equal")
        ax.set_xlim(CENTRE[0] - RADIUS, CENTRE[0] + RADIUS)
        ax.set_ylim(CENTRE[1] - RADIUS, CENTRE[1] + RADIUS)
        fig.colorbar(sc, ax=ax, shrink=0.8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("final error per anchor centre (sum over its 343 cases; log colour scale per loss)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "final_error_map.png"), dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# rotated mode
# ----------------------------------------------------------------------------------------------------------
def _smooth_l1_5(p, t):
    d = (p - t).abs()
    d = torch.cat([d[:, :4], d[:, 4:] * (math.pi / 180)], 1)  # the angle in radians
    beta = 1 / 9
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum()


def _corners(b):
    """(n, 4, 2) corners of cxcywhr boxes, counter-clockwise from (−w/2, −h/2)."""
    cx, cy, w, h, r = b.unbind(-1)
    rad = r * (math.pi / 180)
    c, s = torch.cos(rad), torch.sin(rad)
    out = []
    for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        out.append(torch.stack([cx + su * w / 2 * c + sv * h / 2 * s, cy - su * w / 2 * s + sv * h / 2 * c], -1))
    return torch.stack(out, -2)


def _hull(p, t):
    """Area and squared diameter of the convex hull of both boxes' eight corners, differentiable: a directed pair
    of corners (i, j) is a hull edge when every corner lies strictly left of it or on the segment between them
    (so only maximal collinear edges count), among repeated corners only the first one counts; the area is
    ½ Σ P_i × P_j over the hull edges."""
    pts = torch.cat([_corners(p), _corners(t)], -2)
    pts = pts - pts.mean(-2, keepdim=True).detach()
    d = pts[:, None, :, :] - pts[:, :, None, :]  # d[n, i, j] = P_j − P_i
    scale = d.detach().abs().amax((1, 2, 3)).clamp_min(1e-12)[:, None, None]
    tol = 64 * torch.finfo(pts.dtype).eps * scale
    length2 = (d * d).sum(-1)  # |P_j − P_i|²
    dup = length2 <= tol * tol
    index = torch.arange(8, device=p.device)
    first = ~(dup & (index[None, None, :] < index[None, :, None])).any(-1)  # no earlier repeat of P_i
    # cross[n, i, j, k] = (P_j − P_i) × (P_k − P_i); t[n, i, j, k] = position of P_k along P_i → P_j
    cross = d[:, :, :, None, 0] * d[:, :, None, :, 1] - d[:, :, :, None, 1] * d[:, :, None, :, 0]
    dot = (d[:, :, :, None, :] * d[:, :, None, :, :]).sum(-1)
    along = dot / length2.clamp_min(1e-30)[..., None]
    on_segment = (cross.abs() <= (tol * scale)[..., None]) & (along >= -1e-9) & (along <= 1 + 1e-9)
    left = cross > (tol * scale)[..., None]
    edge = (left | on_segment).all(-1) & first[:, :, None] & first[:, None, :] & ~dup
    wedge = pts[:, :, None, 0] * pts[:, None, :, 1] - pts[:, :, None, 1] * pts[:, None, :, 0]
    area = 0.5 * torch.where(edge, wedge, torch.zeros_like(wedge)).sum((1, 2))
    return area, length2.amax((1, 2))


def _enclosing_alternative(p, t, frame: str):
    """(width, height) of the enclosing rectangle aligned with the prediction ("pred"), the target ("target") or
    the image axes ("image"); "smaller": the smaller (by area) of the prediction's and the target's."""
    if frame == "smaller":
        (wp, hp), (wt, ht) = _enclosing_alternative(p, t, "pred"), _enclosing_alternative(p, t, "target")
        pick = wp * hp <= wt * ht
        return torch.where(pick, wp, wt), torch.where(pick, hp, ht)
    pts = torch.cat([_corners(p), _corners(t)], -2)
    if frame in ("target", "pred"):
        rad = (t if frame == "target" else p)[:, 4] * (math.pi / 180)
        u = torch.stack([torch.cos(rad), -torch.sin(rad)], -1)
        v = torch.stack([torch.sin(rad), torch.cos(rad)], -1)
    else:
        u = torch.tensor([1.0, 0.0], dtype=p.dtype).expand(len(p), 2)
        v = torch.tensor([0.0, 1.0], dtype=p.dtype).expand(len(p), 2)
    pu = (pts * u[:, None]).sum(-1)
    pv = (pts * v[:, None]).sum(-1)
    return pu.amax(-1) - pu.amin(-1), pv.amax(-1) - pv.amin(-1)


def _giou_alt(frame):
    def loss(p, t):
        iou = boxloss.box_iou(p, t, aligned=True, fmt="cxcywhr")
        if frame == "hull":
            area_c = _hull(p, t)[0].clamp_min(1e-7)
        else:
            cw, ch = _enclosing_alternative(p, t, frame)
            area_c = (cw * ch).clamp_min(1e-7)
        union = p[:, 2].clamp_min(0) * p[:, 3].clamp_min(0) + t[:, 2] * t[:, 3]
        union = union - iou * union / (1 + iou)  # |A ∪ B| from IoU: I = IoU·(A + B)/(1 + IoU)
        return (1 - iou + (area_c - union) / area_c).sum()
    return loss


def _diou_alt(frame):
    def loss(p, t):
        iou = boxloss.box_iou(p, t, aligned=True, fmt="cxcywhr")
        if frame == "hull":
            c2 = _hull(p, t)[1]
        else:
            cw, ch = _enclosing_alternative(p, t, frame)
            c2 = cw * cw + ch * ch
        rho2 = ((p[:, :2] - t[:, :2]) ** 2).sum(-1)
        return (1 - iou + rho2 / c2.clamp_min(1e-7)).sum()
    return loss


ROTATED_LOSSES = {
    "smooth_l1": _smooth_l1_5,
    "iou": lambda p, t: boxloss.iou_loss(p, t, reduction="sum", fmt="cxcywhr"),
    "log_iou": lambda p, t: boxloss.log_iou_loss(p, t, reduction="sum", fmt="cxcywhr"),
    "giou": lambda p, t: boxloss.giou_loss(p, t, reduction="sum", fmt="cxcywhr"),
    "diou": lambda p, t: boxloss.diou_loss(p, t, reduction="sum", fmt="cxcywhr"),
    # the alternatives to boxloss' enclosing rectangle (aligned with the target) for GIoU and DIoU
    "giou_smaller_frame": _giou_alt("smaller"),
    "giou_image_axes": _giou_alt("image"),
    "giou_convex_hull": _giou_alt("hull"),
    "diou_smaller_frame": _diou_alt("smaller"),
    "diou_image_axes": _diou_alt("image"),
    "diou_hull_diameter": _diou_alt("hull"),
    "probiou": lambda p, t: boxloss.probiou_loss(p, t, reduction="sum"),
    "gwd": lambda p, t: boxloss.gwd_loss(p, t, reduction="sum"),
    "kld": lambda p, t: boxloss.kld_loss(p, t, reduction="sum"),
    "kfiou": lambda p, t: boxloss.kfiou_loss(p, t, reduction="sum"),
}


def make_rotated_cases(points: int, seed: int, dtype=torch.float64, device="cpu"):
    """The axis-aligned cases of :func:`make_cases` with angles: target angles uniform in [0°, 180°), anchor
    angles within ±90° of their target's; both stored in [−90°, 90°) as a detector's box coder stores them (so
    a small turn across ±90° is a jump of nearly 180° in the parameter)."""
    anchors, targets, centres = make_cases(points, seed, torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    n = len(anchors)
    theta_t = torch.rand(n, 1, generator=g, dtype=torch.float64) * 180
    theta_a = theta_t + (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 180
    theta_t, theta_a = (torch.remainder(x + 90, 180) - 90 for x in (theta_t, theta_a))
    return (torch.cat([anchors, theta_a], 1).to(dtype=dtype, device=device),
            torch.cat([targets, theta_t], 1).to(dtype=dtype, device=device), centres)


def corner_error(p, t):
    """Mean distance between matched corners, the smallest over the four labellings of the rectangle."""
    cp, ct = _corners(p), _corners(t)
    best = None
    for k in range(4):
        d = (torch.roll(cp, k, dims=-2) - ct).norm(dim=-1).mean(-1)
        best = d if best is None else torch.minimum(best, d)
    return best


def regress_rotated(loss_fn, anchors, targets, iterations: int, progress=None):
    """Gradient descent on (cx, cy, w, h, θ in radians); returns Σ (1 − IoU) after each iteration, the final mean
    corner error, the final mean IoU and the per-case final 1 − IoU."""
    deg = 180 / math.pi
    params = torch.cat([anchors[:, :4], anchors[:, 4:] / deg], 1)
    errors = []
    for it in range(1, iterations + 1):
        params.requires_grad_(True)
        boxes = torch.cat([params[:, :4], params[:, 4:] * deg], 1)
        (grad,) = torch.autograd.grad(loss_fn(boxes, targets), params)
        with torch.no_grad():
            iou = boxloss.box_iou(boxes, targets, aligned=True, fmt="cxcywhr")
            params = params - learning_rate(it) * (2 - iou).unsqueeze(-1).to(params.dtype) * grad
            final = torch.cat([params[:, :4], params[:, 4:] * deg], 1)
            iou = boxloss.box_iou(final, targets, aligned=True, fmt="cxcywhr")
            errors.append((1 - iou).sum().item())
        if progress is not None:
            progress.update(1)
    return errors, corner_error(final, targets).mean().item(), iou.mean().item(), 1 - iou


def rotated_table(results: dict, iterations: int) -> str:
    cols = [i for i in TABLE_ITERATIONS if i <= iterations] or [iterations]
    lines = ["| loss | " + " | ".join(f"Σ(1−IoU) it {i}" for i in cols) + " | final mean IoU | final corner error "
             "| seconds |", "|---|" + "---:|" * (len(cols) + 3)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['error'][i - 1]:.4g}" for i in cols)
                     + f" | {r['mean_iou']:.4f} | {r['corner_error']:.4g} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main_rotated(args) -> dict:
    from tqdm import tqdm

    dtype = getattr(torch, args.dtype)
    anchors, targets, centres = make_rotated_cases(args.points, args.seed, dtype, args.device)
    per_point = anchors.shape[0] // args.points
    print(f"{anchors.shape[0]:,} rotated regression cases ({args.points} points × {per_point}), "
          f"{args.iterations} iterations on (cx, cy, w, h, θ), {args.device}, {args.dtype}", file=sys.stderr)
    results, maps = {}, {}
    os.makedirs(args.out, exist_ok=True)
    path = boxloss.backends.reference_path() if args.reference else contextlib.nullcontext()
    with path:
        for name in args.losses:
            start = time.perf_counter()
            with tqdm(total=args.iterations, desc=name, file=sys.stderr) as bar:
                errors, corner, mean_iou, final = regress_rotated(ROTATED_LOSSES[name], anchors, targets,
                                                                  args.iterations, bar)
            results[name] = {"error": errors, "final_error": errors[-1], "corner_error": corner,
                             "mean_iou": mean_iou, "seconds": time.perf_counter() - start}
            maps[name] = final.reshape(args.points, per_point).sum(-1).cpu().double()
            payload = _payload(args, anchors, results)  # partial results survive a failure in a later loss
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(payload, f, indent=1)
    plot(results, maps, centres, args.out, ylabel="Σ (1 − IoU) over all cases",
         title="rotated regression simulation (boxloss losses)")
    print(rotated_table(results, args.iterations))
    print(f"wrote {args.out}/results.json, error_curves.png, final_error_map.png", file=sys.stderr)
    return payload


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=None, help="anchor centres (default 5000; --rotated: 1000)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--losses", default=None, help=f"comma-separated, from {', '.join(LOSSES)}; with --rotated "
                                                       f"from {', '.join(ROTATED_LOSSES)} (default: all)")
    parser.add_argument("--rotated", action="store_true", help="rotated boxes (see the module docstring)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--param", choices=list(PARAMETRISATIONS), default="xywh",
                        help="parameters moved by gradient descent: (x, y, w, h) as the DIoU paper describes "
                             "(default), or the four edges as in the authors' MATLAB code")
    parser.add_argument("--reference", action="store_true",
                        help="run boxloss' plain-PyTorch reference path instead of its fast path")
    parser.add_argument("--out", default="runs/regression_simulation")
    parser.add_argument("--quick", action="store_true", help="300 points (103,000 cases per loss; --rotated: 50 "
                                                             "points, 17,150 cases)")
    args = parser.parse_args(argv)
    table = ROTATED_LOSSES if args.rotated else LOSSES
    if args.points is None:
        args.points = 1000 if args.rotated else 5000
    if args.quick:
        args.points = 50 if args.rotated else 300
    losses = [s.strip() for s in (args.losses or ",".join(table)).split(",") if s.strip()]
    unknown = [s for s in losses if s not in table]
    if unknown or not losses:
        parser.error(f"--losses: unknown {unknown}; choose from {', '.join(table)}")
    if args.rotated and args.param != "xywh":
        parser.error("--param applies to the axis-aligned simulation only")
    if args.points < 1 or args.iterations < 1:
        parser.error("--points and --iterations must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but CUDA is not available")
    args.losses = losses
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rotated:
        return main_rotated(args)
    from tqdm import tqdm

    dtype = getattr(torch, args.dtype)
    anchors, targets, centres = make_cases(args.points, args.seed, dtype, args.device)
    per_point = anchors.shape[0] // args.points
    print(f"{anchors.shape[0]:,} regression cases ({args.points} points × {per_point}), "
          f"{args.iterations} iterations on ({args.param}), {args.device}, {args.dtype}", file=sys.stderr)
    results, maps = {}, {}
    path = boxloss.backends.reference_path() if args.reference else contextlib.nullcontext()
    with path:
        _run_all(args, anchors, targets, results, maps, tqdm)
    payload = _payload(args, anchors, results)
    _write(args, payload, centres, maps)
    return payload


def _run_all(args, anchors, targets, results, maps, tqdm) -> None:
    per_point = anchors.shape[0] // args.points
    for name in args.losses:
        start = time.perf_counter()
        with tqdm(total=args.iterations, desc=name, file=sys.stderr) as bar:
            _WIOU_V3.clear()
            _WIOU_V3.update({f: boxloss.WIoULoss(version=3, reduction="sum", fmt=f, steps_to_plateau=args.iterations)
                             for f in PARAMETRISATIONS.values()})
            errors, final = regress(LOSSES[name], anchors, targets, args.iterations, bar, args.param)
        seconds = time.perf_counter() - start
        results[name] = {"error": errors, "final_error": errors[-1], "seconds": seconds}
        maps[name] = final.reshape(args.points, per_point).sum(-1).cpu().double()


def _payload(args, anchors, results) -> dict:
    config = {k: v for k, v in vars(args).items()}
    config.update(cases=anchors.shape[0], torch=torch.__version__, python=platform.python_version(),
                  device_name=(torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
                               or platform.machine()))
    return {"config": config, "losses": results}


def _write(args, payload: dict, centres, maps) -> None:
    os.makedirs(args.out, exist_ok=True)
    plot(payload["losses"], maps, centres, args.out)
    tmp = os.path.join(args.out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "results.json"))
    print(error_table(payload["losses"], args.iterations))
    print(f"wrote {args.out}/results.json, error_curves.png, final_error_map.png", file=sys.stderr)


if __name__ == "__main__":
    main()
