"""How large is the IoU-family box term against torchvision's stock box term at the start of training?

For each torchvision detector (random initialisation, synthetic images with several boxes each), the stock
box loss (smooth-L1 / L1 on encoded deltas; GIoU for FCOS) and each boxloss loss with ``loss_weight=1`` are
computed on the same batches with the same sampling, and the ratio stock / boxloss is printed per head: the
multiplier that makes the two terms equal at initialisation. boxloss.detection.DEFAULT_LOSS_WEIGHTS is
rounded from the GIoU/DIoU column of this table.

    python benchmarks/loss_weight_calibration.py --batches 4
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from torchvision.models import detection as D

from boxloss.detection import LOSS_NAMES, replace_box_loss

MODELS = {
    "fasterrcnn": (D.fasterrcnn_mobilenet_v3_large_fpn, {"rpn": "loss_rpn_box_reg", "roi_heads": "loss_box_reg"}),
    "retinanet": (D.retinanet_resnet50_fpn, {"retinanet": "bbox_regression"}),
    "fcos": (D.fcos_resnet50_fpn, {"fcos": "bbox_regression"}),
}


def synthetic_batch(generator, n=2, size=160, boxes=4, classes=3):
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, size, size, generator=generator))
        xy = torch.rand(boxes, 2, generator=generator) * size * 0.7
        wh = torch.rand(boxes, 2, generator=generator) * size * 0.3 + size * 0.08
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(1, classes, (boxes,), generator=generator)})
    return images, targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the ratios here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    ratios = {}
    for name, (builder, heads) in MODELS.items():
        stock = builder(weights=None, weights_backbone=None, num_classes=3, min_size=160, max_size=160).train()
        sums = {(head, loss): [0.0, 0.0] for head in heads for loss in LOSS_NAMES}
        for loss in LOSS_NAMES:
            model = replace_box_loss(copy.deepcopy(stock), loss, loss_weight=1.0)
            g = torch.Generator().manual_seed(args.seed)
            for b in range(args.batches):
                images, targets = synthetic_batch(g)
                with torch.no_grad():
                    torch.manual_seed(b)
                    ref = stock(images, targets)
                    torch.manual_seed(b)
                    ours = model(images, targets)
                for head, key in heads.items():
                    sums[(head, loss)][0] += ref[key].item()
                    sums[(head, loss)][1] += ours[key].item()
        for (head, loss), (ref, ours) in sums.items():
            ratios.setdefault(head, {})[loss] = ref / ours if ours > 0 else float("nan")
        print(f"done {name}", file=sys.stderr)
    print("| head | " + " | ".join(LOSS_NAMES) + " |")
    print("|---|" + "---:|" * len(LOSS_NAMES))
    for head, row in ratios.items():
        print(f"| {head} | " + " | ".join(f"{row[name]:.2f}" for name in LOSS_NAMES) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(ratios, f, indent=1)
    return ratios


if __name__ == "__main__":
    main()
