"""Regress a few boxes onto their targets with every boxloss loss and print the losses falling.

Starts from predictions that miss their targets entirely (IoU 0), so it also shows the zero-overlap
handling: the textbook 1 − IoU (``iou_textbook``) never moves, every boxloss loss brings the boxes home.

    python examples/quickstart.py            # 300 steps
    python examples/quickstart.py --quick    # 100 steps
"""

import argparse

import torch

import boxloss

LOSSES = {
    "iou_textbook": lambda p, t: boxloss.iou_loss(p, t, zero_overlap="none"),
    "iou": boxloss.iou_loss,
    "log_iou": boxloss.log_iou_loss,
    "giou": boxloss.giou_loss,
    "diou": boxloss.diou_loss,
    "ciou": boxloss.ciou_loss,
}


def make_boxes(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 100
    size = torch.rand(n, 2, generator=g) * 20 + 10
    target = torch.cat([centre - size / 2, centre + size / 2], -1)
    # predictions: other sizes, shifted 1.5 to 3 box sizes away, so no prediction overlaps its target
    angle = torch.rand(n, generator=g) * 2 * torch.pi
    shift = (torch.rand(n, 1, generator=g) * 1.5 + 1.5) * size.max(-1, keepdim=True).values
    p_centre = centre + shift * torch.stack([angle.cos(), angle.sin()], -1)
    p_size = size * (torch.rand(n, 2, generator=g) + 0.5)
    pred = torch.cat([p_centre - p_size / 2, p_centre + p_size / 2], -1)
    return pred, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--boxes", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.5, help="Adam learning rate on the box coordinates (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 steps")
    args = parser.parse_args()
    steps = 100 if args.quick else args.steps
    if steps < 1 or args.boxes < 1:
        parser.error("--steps and --boxes must be positive")

    pred0, target = make_boxes(args.boxes, args.seed)
    checkpoints = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps})
    print(f"{args.boxes} boxes, none overlapping its target; Adam(lr={args.lr}) on the coordinates, {steps} steps")
    print(f"{'loss':<14}" + "".join(f"{'step ' + str(s):>12}" for s in checkpoints) + f"{'final mean IoU':>16}")
    for name, fn in LOSSES.items():
        pred = pred0.clone().requires_grad_()
        # Adam's step size is scale-free, so one learning rate suits losses of very different magnitudes
        opt = torch.optim.Adam([pred], lr=args.lr)
        values = {}
        for step in range(steps + 1):
            loss = fn(pred, target)
            if step in checkpoints:
                values[step] = loss.item()
            if step == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        iou = boxloss.box_iou(pred.detach(), target, aligned=True).mean().item()
        print(f"{name:<14}" + "".join(f"{values[s]:>12.4f}" for s in checkpoints) + f"{iou:>16.3f}")


if __name__ == "__main__":
    main()
