"""A small single-stage detector in plain PyTorch whose box loss switches from smooth-L1 to boxloss by one flag.

The detector: a 4-layer convolutional backbone (stride 8), one prediction per cell and anchor (3 anchor
shapes per cell): objectness, class scores and box deltas (dx, dy, dw, dh). Anchors are matched to ground
truth with ``boxloss.box_iou`` (IoU ≥ 0.5, plus each box's best anchor). Box regression:

* ``--box-loss smooth_l1``: smooth-L1 on the deltas encoded by ``boxloss.detection.encode_boxes``;
* ``--box-loss giou`` (or iou, log_iou, diou, ciou): ``boxloss.detection.decoded_box_loss`` on the decoded
  boxes, normalised by the number of positive anchors.

It trains on built-in synthetic images (rectangles and discs of two classes on a noisy background) and
reports the losses and the mean IoU, on held-out images, between each ground-truth box and the box predicted
at its best anchor.

    python examples/custom_detector.py --quick                  # both losses, under 2 minutes on 2 CPU cores
    python examples/custom_detector.py --box-loss ciou --epochs 20
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import boxloss
from boxloss.detection import LOSS_NAMES, decode_boxes, decoded_box_loss, encode_boxes

STRIDE = 8
ANCHOR_SHAPES = ((16.0, 16.0), (24.0, 12.0), (12.0, 24.0))  # (w, h) per cell
NUM_CLASSES = 2


def make_dataset(n: int, size: int, seed: int):
    """Images (n, 3, size, size) and per-image (boxes xyxy, labels in {0, 1})."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            w, h = (torch.rand(2, generator=g) * size * 0.35 + size * 0.12).tolist()
            x1 = float(torch.rand(1, generator=g)) * (size - w)
            y1 = float(torch.rand(1, generator=g)) * (size - h)
            cls = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
            if cls == 0:
                mask = (xx >= x1) & (xx < x1 + w) & (yy >= y1) & (yy < y1 + h)
            else:
                mask = ((xx - x1 - w / 2) / (w / 2)) ** 2 + ((yy - y1 - h / 2) / (h / 2)) ** 2 <= 1
            colour = torch.rand(3, generator=g) * 0.6 + 0.4
            images[i] = torch.where(mask, colour.view(3, 1, 1), images[i])
            boxes.append([x1, y1, x1 + w, y1 + h])
            labels.append(cls)
        targets.append((torch.tensor(boxes), torch.tensor(labels)))
    return images, targets


def make_anchors(size: int) -> torch.Tensor:
    """(cells · anchors, 4) xyxy, cell-major, in the order the head's outputs are flattened."""
    cells = size // STRIDE
    c = (torch.arange(cells, dtype=torch.float32) + 0.5) * STRIDE
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], -1)[:, None, :]
    half = torch.tensor(ANCHOR_SHAPES)[None] / 2
    return torch.cat([centres - half, centres + half], -1).reshape(-1, 4)


class TinyDetector(nn.Module):
    def __init__(self, width: int = 48) -> None:
        super().__init__()
        layers, c = [], 3
        for o, s in ((width, 2), (width, 2), (width * 2, 2), (width * 2, 1)):
            layers += [nn.Conv2d(c, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
            c = o
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, len(ANCHOR_SHAPES) * (1 + NUM_CLASSES + 4), 1)

    def forward(self, x):
        out = self.head(self.backbone(x))  # (N, A·(1+C+4), H, W)
        n = out.shape[0]
        out = out.permute(0, 2, 3, 1).reshape(n, -1, 1 + NUM_CLASSES + 4)  # (N, cells·A, 1+C+4)
        return out[..., 0], out[..., 1:1 + NUM_CLASSES], out[..., 1 + NUM_CLASSES:]


def assign(anchors: torch.Tensor, boxes: torch.Tensor):
    """Positive anchors (IoU ≥ 0.5, plus each box's best anchor), their box index, and ignored ones (0.4–0.5)."""
    iou = boxloss.box_iou(anchors, boxes)  # (A, G)
    best_iou, best_box = iou.max(1)
    positive = best_iou >= 0.5
    positive[iou.argmax(0)] = True
    best_box[iou.argmax(0)] = torch.arange(len(boxes))
    ignore = (best_iou >= 0.4) & ~positive
    return positive, best_box, ignore


def detection_loss(outputs, targets, anchors, box_loss: str):
    obj, cls, deltas = outputs
    n = obj.shape[0]
    positive = torch.zeros(n, len(anchors), dtype=torch.bool)
    ignore = torch.zeros_like(positive)
    matched = torch.zeros(n, len(anchors), 4)
    labels = torch.zeros(n, len(anchors), dtype=torch.long)
    for i, (boxes, lab) in enumerate(targets):
        pos, idx, ign = assign(anchors, boxes)
        positive[i], ignore[i], matched[i], labels[i] = pos, ign, boxes[idx], lab[idx]
    num_pos = positive.sum().clamp_min(1)
    keep = ~ignore
    loss_obj = F.binary_cross_entropy_with_logits(obj[keep], positive[keep].float(), reduction="sum") / num_pos
    loss_cls = F.cross_entropy(cls[positive], labels[positive], reduction="sum") / num_pos
    all_anchors = anchors.expand(n, -1, -1)
    if box_loss == "smooth_l1":
        target_deltas = encode_boxes(matched[positive], all_anchors[positive])
        loss_box = F.smooth_l1_loss(deltas[positive], target_deltas, beta=1 / 9, reduction="sum") / num_pos
    else:
        # the one line that changes: the loss on decoded boxes, normalised by the number of positives
        loss_box = decoded_box_loss(deltas, all_anchors, matched, positive, loss=box_loss)
    return loss_obj, loss_cls, loss_box


@torch.no_grad()
def evaluate(model, images, targets, anchors) -> float:
    """Mean IoU between every ground-truth box and the box predicted at its best anchor."""
    model.eval()
    _, _, deltas = model(images)
    ious = []
    for i, (boxes, _) in enumerate(targets):
        best = boxloss.box_iou(anchors, boxes).argmax(0)
        pred = decode_boxes(deltas[i, best], anchors[best])
        ious.append(boxloss.box_iou(pred, boxes, aligned=True))
    model.train()
    return torch.cat(ious).mean().item()


def train(box_loss: str, args, data) -> dict:
    from tqdm import tqdm

    (train_images, train_targets), (test_images, test_targets) = data
    anchors = make_anchors(args.size)
    torch.manual_seed(args.seed)
    model = TinyDetector()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(train_images) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    history = []
    with tqdm(total=steps, desc=box_loss, file=sys.stderr) as bar:
        for _ in range(args.epochs):
            order = torch.randperm(len(train_images), generator=g)  # the same order for every loss
            for k in range(0, len(order), args.batch_size):
                idx = order[k:k + args.batch_size]
                outputs = model(train_images[idx])
                parts = detection_loss(outputs, [train_targets[j] for j in idx], anchors, box_loss)
                loss = sum(parts)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                history.append([p.item() for p in parts])
                bar.set_postfix(obj=f"{parts[0].item():.3f}", cls=f"{parts[1].item():.3f}", box=f"{parts[2].item():.3f}")
                bar.update(1)
    last = torch.tensor(history[-10:]).mean(0).tolist()
    return {"loss_obj": last[0], "loss_cls": last[1], "loss_box": last[2], "seconds": time.perf_counter() - start,
            "mean_iou": evaluate(model, test_images, test_targets, anchors)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box-loss", default=None,
                        help=f"smooth_l1 or one of {', '.join(LOSS_NAMES)} (default: smooth_l1 and giou, compared)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs (under 2 minutes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train_images, args.test_images = 16, 512, 128
    choices = ("smooth_l1",) + LOSS_NAMES
    losses = [args.box_loss] if args.box_loss else ["smooth_l1", "giou"]
    if any(name not in choices for name in losses):
        parser.error(f"--box-loss must be one of {', '.join(choices)}; got {args.box_loss!r}")
    if args.size % STRIDE or args.size < 32:
        parser.error(f"--size must be a multiple of {STRIDE}, at least 32")
    data = (make_dataset(args.train_images, args.size, args.seed), make_dataset(args.test_images, args.size,
                                                                                 args.seed + 1))
    results = {name: train(name, args, data) for name in losses}
    print(f"{'box loss':<10} {'obj':>7} {'cls':>7} {'box':>7} {'mean IoU':>9} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<10} {r['loss_obj']:>7.3f} {r['loss_cls']:>7.3f} {r['loss_box']:>7.3f} {r['mean_iou']:>9.3f} "
              f"{r['seconds']:>8.1f}")
    return results


if __name__ == "__main__":
    main()
