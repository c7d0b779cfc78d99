"""Train a small fully convolutional network on synthetic masks with cross-entropy, CE + soft IoU, and Lovász.

The built-in data: 64×64 images with a textured background and up to four shapes (discs, rectangles,
triangles) of three classes plus background, with colour noise, so that class boundaries are not trivial.
Every loss sees the same network initialisation, data order and schedule; the table reports the mean IoU
(over the 4 classes, computed on the held-out set from the argmax prediction).

    python examples/segmentation.py --quick       # about 2 minutes on 2 CPU cores
    python examples/segmentation.py --out runs/seg --epochs 20

Writes results.json and predictions.png to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from boxloss.segmentation import lovasz_softmax_loss, soft_iou_loss

NUM_CLASSES = 4  # background, disc, rectangle, triangle

LOSSES = {
    "ce": lambda logits, y: F.cross_entropy(logits, y),
    "ce+soft_iou": lambda logits, y: F.cross_entropy(logits, y) + soft_iou_loss(logits, y, mode="multiclass"),
    "ce+log_iou": lambda logits, y: F.cross_entropy(logits, y) + soft_iou_loss(logits, y, mode="multiclass",
                                                                                log=True),
    "lovasz": lambda logits, y: lovasz_softmax_loss(logits, y),
}


def make_dataset(n: int, size: int, seed: int):
    """``n`` images ``(n, 3, size, size)`` in [0, 1] and label maps ``(n, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images = torch.empty(n, 3, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    palette = torch.tensor([[0.9, 0.3, 0.2], [0.2, 0.7, 0.3], [0.25, 0.35, 0.9]])
    for i in range(n):
        freq = torch.rand(2, generator=g) * 0.4 + 0.1
        texture = 0.5 + 0.15 * torch.sin(xx * freq[0]) * torch.cos(yy * freq[1])
        img = texture.expand(3, size, size) * (torch.rand(3, 1, 1, generator=g) * 0.6 + 0.4)
        lab = torch.zeros(size, size, dtype=torch.long)
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            cls = int(torch.randint(1, NUM_CLASSES, (1,), generator=g))
            cx, cy = (torch.rand(2, generator=g) * size * 0.8 + size * 0.1).tolist()
            r = float(torch.rand(1, generator=g) * size * 0.15 + size * 0.08)
            if cls == 1:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif cls == 2:
                aspect = float(torch.rand(1, generator=g) + 0.5)
                mask = ((xx - cx).abs() <= r * aspect) & ((yy - cy).abs() <= r / aspect)
            else:
                mask = (yy - cy <= r) & (yy - cy >= -r) & ((xx - cx).abs() <= (yy - cy + r) / 2)
            colour = palette[cls - 1] * (torch.rand(3, generator=g) * 0.5 + 0.75)
            img = torch.where(mask, colour.view(3, 1, 1).clamp(0, 1), img)
            lab = torch.where(mask, torch.tensor(cls), lab)
        images[i] = (img + torch.randn(3, size, size, generator=g) * 0.08).clamp(0, 1)
        labels[i] = lab
    return images, labels


class SmallFCN(nn.Module):
    """Encoder (two stride-2 stages) and decoder (two upsampling stages) with a skip connection."""

    def __init__(self, classes: int = NUM_CLASSES, width: int = 24) -> None:
        super().__init__()

        def block(i, o, stride=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = block(3, width)
        self.down1 = nn.Sequential(block(width, width * 2, 2), block(width * 2, width * 2))
        self.down2 = nn.Sequential(block(width * 2, width * 4, 2), block(width * 4, width * 4))
        self.up1 = block(width * 4 + width * 2, width * 2)
        self.up2 = block(width * 2 + width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        s0 = self.stem(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        u1 = self.up1(torch.cat([F.interpolate(s2, size=s1.shape[-2:], mode="bilinear", align_corners=False), s1], 1))
        u2 = self.up2(torch.cat([F.interpolate(u1, size=s0.shape[-2:], mode="bilinear", align_corners=False), s0], 1))
        return self.head(u2)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, classes: int = NUM_CLASSES) -> tuple[float, list]:
    per_class = []
    for c in range(classes):
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        per_class.append(inter / union if union else float("nan"))
    valid = [v for v in per_class if v == v]
    return sum(valid) / len(valid), per_class


def train_one(loss_name, train, test, args, progress):
    torch.manual_seed(args.seed)
    model = SmallFCN().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(train[0]) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(train[0]), generator=g)  # same order for every loss
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x, y = train[0][idx].to(args.device), train[1][idx].to(args.device)
            loss = LOSSES[loss_name](model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            progress.set_postfix(loss=f"{loss.item():.3f}")
            progress.update(1)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(test[0][i:i + 64].to(args.device)).argmax(1).cpu()
                           for i in range(0, len(test[0]), 64)])
    miou, per_class = mean_iou(preds, test[1])
    return {"mIoU": miou, "per_class_IoU": per_class, "train_seconds": seconds, "final_loss": losses[-1],
            "loss_curve": losses}, preds


def plot_predictions(test, preds: dict, path: str, count: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 + len(preds)
    fig, axes = plt.subplots(count, cols, figsize=(2.2 * cols, 2.2 * count), squeeze=False)
    for r in range(count):
        axes[r, 0].imshow(test[0][r].permute(1, 2, 0).numpy())
        axes[r, 1].imshow(test[1][r].numpy(), vmin=0, vmax=NUM_CLASSES - 1, cmap="tab10", interpolation="nearest")
        for c, p in enumerate(preds.values()):
            axes[r, 2 + c].imshow(p[r].numpy(), vmin=0, vmax=NUM_CLASSES - 1, cmap="tab10", interpolation="nearest")
        for c, title in enumerate(["image", "target", *preds]):
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated from {', '.join(LOSSES)}")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-images", type=int, default=768)
    parser.add_argument("--test-images", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="runs/segmentation")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller images and epochs (about 2 minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train_images, args.test_images, args.size = 5, 256, 64, 48
    names = [s.strip() for s in args.losses.split(",") if s.strip()]
    unknown = [s for s in names if s not in LOSSES]
    if unknown or not names:
        parser.error(f"--losses: unknown {unknown}; choose from {', '.join(LOSSES)}")
    if min(args.epochs, args.train_images, args.test_images, args.batch_size) < 1 or args.size < 16:
        parser.error("--epochs, --train-images, --test-images and --batch-size must be positive, --size ≥ 16")
    from tqdm import tqdm

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train = make_dataset(args.train_images, args.size, args.seed)
    test = make_dataset(args.test_images, args.size, args.seed + 1)
    steps = args.epochs * ((args.train_images + args.batch_size - 1) // args.batch_size)
    results, preds = {}, {}
    for name in names:
        with tqdm(total=steps, desc=name, file=sys.stderr) as bar:
            results[name], preds[name] = train_one(name, train, test, args, bar)

    os.makedirs(args.out, exist_ok=True)
    plot_predictions(test, preds, os.path.join(args.out, "predictions.png"))
    payload = {"config": {k: v for k, v in vars(args).items()}, "losses": results}
    tmp = os.path.join(args.out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "results.json"))
    print("| loss | mIoU | " + " | ".join(f"IoU class {c}" for c in range(NUM_CLASSES)) + " | train s |")
    print("|---|---:|" + "---:|" * NUM_CLASSES + "---:|")
    for name, r in results.items():
        print(f"| {name} | {r['mIoU']:.3f} | " + " | ".join(f"{v:.3f}" for v in r["per_class_IoU"])
              + f" | {r['train_seconds']:.0f} |")
    print(f"wrote {args.out}/results.json and predictions.png", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
