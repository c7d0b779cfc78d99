"""Does an IoU-family box loss help my detector, and by how much? Train torchvision's Faster R-CNN once per box
loss — the smooth-L1 baseline and boxloss' losses through ``boxloss.detection.replace_box_loss`` — and
evaluate each with pycocotools' COCOeval on a held-out split. With ``--framework ultralytics`` the detector is
a YOLO built from its YAML (random init; ``--model yolo11n.yaml`` by default), trained by Ultralytics' own
trainer on the same splits written as a YOLO-format data set, once with Ultralytics' own CIoU (``stock``) and once
per boxloss loss through ``boxloss.integrations.ultralytics.replace_box_loss``; its held-out predictions go
through the same COCOeval (see ultralytics_yolo.py).

Data: by default a built-in synthetic set (4 shape classes in random colours, several sizes and aspect
ratios, overlapping objects, textured backgrounds) written to disk in COCO format and read back through the
same loader as real data; ``--dataset neon-trees``: real airborne photographs of forests with hand-made
tree-crown boxes from the deepforest wheel (``pip install --no-deps deepforest==2.1.0``; see neon_trees.py),
tiled, split by source image and trained with random flips and quarter turns; or your own COCO-format subset
with ``--images DIR --ann FILE``.

    python examples/coco_subset.py --quick                      # smooth_l1, giou, diou: < 10 min on 2 CPU cores
    python examples/coco_subset.py --seeds 0,1,2 --out runs/coco_full    # every loss, 3 seeds: ~45 min on 2 cores
    python examples/coco_subset.py --dataset neon-trees --out runs/neon  # real images: ~5 min per loss on 2 cores
    python examples/coco_subset.py --images val2017 --ann instances_val2017.json \\
        --max-images 500 --categories person,car --model fasterrcnn_resnet50_fpn --device cuda --epochs 12
    python examples/coco_subset.py --framework ultralytics --dataset neon-trees \\
        --losses stock,ciou,giou,siou,wiou,mpdiou,eiou --seeds 0,1,2   # YOLO11n, 100 epochs: ~4.5 min per run on 2 cores

Every loss gets the same seed, initial weights, data order and schedule. Output in --out: results.json
(rewritten after every finished loss, ``"complete": false`` until the last), ap.png (AP, AP50, AP75 per loss),
loss_curves.png (training loss per loss), predictions.png (the held-out image with the most objects: its
ground truth and each loss' detections, first seed), and a markdown table. Every image of both splits is checked before
training starts. ``--weights``/``--weights-backbone`` load what fits of a local checkpoint and report the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coco_data import (  # noqa: E402
    CocoDetectionData,
    DataError,
    DihedralAugment,
    Standardized,
    image_ids,
    load_coco_json,
    select_categories,
    split_image_ids,
    subset_coco,
    write_synthetic_coco,
)

from boxloss.detection import DEFAULT_LOSS_WEIGHTS, LOSS_NAMES, replace_box_loss  # noqa: E402
from boxloss.detection.loss import CLASSIC_LOSS_NAMES  # noqa: E402

ALL_LOSSES = ("smooth_l1",) + CLASSIC_LOSS_NAMES  # the default set; the variants run when named in --losses
CHOICES = ("smooth_l1",) + LOSS_NAMES
QUICK_LOSSES = ("smooth_l1", "giou", "diou")
DATASETS = ("synthetic", "neon-trees")
# what each built-in data set trains with unless the command line says otherwise: the synthetic shapes fill
# 10-55 % of a 128-px image; the tree crowns are 12-90 px in 400-px tiles (median 40), seen at 256 px here
DATASET_DEFAULTS = {
    "synthetic": {"epochs": 4, "image_size": 128, "batch_size": 8, "lr": 2e-3, "anchor_sizes": (12, 24, 48, 96),
                  "detections": None, "augment": "none",
                  "standardize": False, "train_sizes": ()},
    "neon-trees": {"epochs": 40, "image_size": 256, "batch_size": 4, "lr": 2e-3, "anchor_sizes": (8, 16, 32, 64),
                   "detections": 150, "augment": "overhead",
                   "standardize": True, "train_sizes": (192, 224, 288, 320)},
}
FRAMEWORKS = ("torchvision", "ultralytics")
# --framework ultralytics: "stock" is Ultralytics' own CIoU term; the other names go through
# boxloss.integrations.ultralytics.replace_box_loss (its AXIS_LOSS_NAMES)
YOLO_LOSSES = ("iou", "log_iou", "giou", "diou", "ciou", "siou", "eiou", "focal_eiou", "wiou", "mpdiou", "shape_iou",
               "nwd", "alpha_iou", "inner_iou", "focaler_iou")
YOLO_CHOICES = ("stock",) + YOLO_LOSSES
YOLO_DEFAULT_LOSSES = ("stock", "ciou", "giou", "siou", "wiou", "mpdiou", "eiou")
YOLO_QUICK_LOSSES = ("stock", "giou", "siou")
# what YOLO trains with on each built-in data set unless the command line says otherwise (sides: multiples of 32)
YOLO_DEFAULTS = {
    "synthetic": {"model": "yolo11n.yaml", "epochs": 30, "image_size": 128, "batch_size": 16, "detections": 100},
    "neon-trees": {"model": "yolo11n.yaml", "epochs": 100, "image_size": 320, "batch_size": 8, "detections": 150},
}
STOCK_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                "fasterrcnn_mobilenet_v3_large_320_fpn")


def small_fasterrcnn(num_classes: int, image_size: int, anchor_sizes=(12, 24, 48, 96),
                     detections: int | None = None, train_sizes=()) -> nn.Module:
    """torchvision's FasterRCNN on a 6-conv backbone (stride 8, 128 channels): learns on a CPU in minutes.
    ``anchor_sizes`` in pixels of the resized image; ``detections``: the most boxes kept per image
    (default 50); ``train_sizes``: sides to resize training batches to at random (multi-scale training;
    evaluation always uses ``image_size``)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    layers, c = [], 3
    for out, stride in ((32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        layers += [nn.Conv2d(c, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    backbone = nn.Sequential(*layers)
    backbone.out_channels = c
    return FasterRCNN(
        # torchvision's transform picks a random min_size per training batch and evaluates at min_size[-1]
        backbone, num_classes=None, min_size=(*train_sizes, image_size), max_size=max((image_size, *train_sizes)),
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=600,
        rpn_post_nms_top_n_test=200, box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(c * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, num_classes),
        box_batch_size_per_image=128, box_detections_per_img=detections or 50)


def build_model(name: str, num_classes: int, image_size: int, weights: str | None,
                weights_backbone: str | None = None, anchor_sizes=(12, 24, 48, 96),
                detections: int | None = None, train_sizes=()) -> nn.Module:
    if name == "small":
        model = small_fasterrcnn(num_classes, image_size, anchor_sizes, detections, train_sizes)
    else:
        import torchvision

        model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None,
                                                            num_classes=num_classes, box_detections_per_img=detections or 50)
    if weights_backbone:
        body = getattr(model.backbone, "body", model.backbone)  # torchvision's FPN backbones wrap the CNN
        load_fitting(body, weights_backbone, "--weights-backbone")
    if weights:
        load_fitting(model, weights, "--weights")
    return model


def _read_state(path: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{flag}: no file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file, a pickle of something else
        raise DataError(f"{flag}: {path} is not a PyTorch checkpoint: {e}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{flag}: {path} holds no state dict (a dict of tensors, or one under 'model')")
    return state


def load_fitting(module: nn.Module, path: str, flag: str) -> dict:
    """Load what fits of the checkpoint at ``path`` into ``module`` and report the rest.

    Keys are matched as they are, or with a leading ``module.``/``backbone.``/``body.``/``features.`` removed;
    tensors of another shape (e.g. a box predictor for another number of classes) are skipped and listed, never
    a ``size mismatch`` traceback. Nothing fitting at all is an error: the file is for another model.
    """
    state = _read_state(path, flag)
    own = module.state_dict()
    best = {}
    for prefix in ("", "module.", "backbone.", "backbone.body.", "body.", "features.", "module.backbone."):
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        matched = {k: v for k, v in candidate.items() if k in own and own[k].shape == v.shape}
        if len(matched) > len(best):
            best, used = matched, candidate
    if not best:
        raise DataError(f"{flag}: no tensor of {path} fits this model (is it a checkpoint of another architecture?)")
    module.load_state_dict(best, strict=False)
    skipped = sorted(k for k in used if k not in best)
    missing = sorted(k for k in own if k not in best)
    report = {"loaded": len(best), "skipped_shape_or_name": skipped, "not_in_checkpoint": missing}
    print(f"{flag}: loaded {len(best)} of {len(own)} tensors from {path}; skipped {len(skipped)} "
          f"(another shape or name{': ' + ', '.join(skipped[:6]) + (' …' if len(skipped) > 6 else '') if skipped else ''})"
          f"; {len(missing)} keep their initialisation", file=sys.stderr)
    return report


def collate(batch):
    return tuple(zip(*batch))


def train_one(loss_name: str, seed: int, args, train_set, num_classes: int, device) -> tuple:
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = build_model(args.model, num_classes, args.image_size, args.weights, args.weights_backbone,
                        args.anchor_sizes, args.detections, args.train_sizes)
    if loss_name != "smooth_l1":
        replace_box_loss(model, loss_name, loss_weight=args.loss_weight)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(seed), num_workers=0)
    curve, start = [], time.perf_counter()
    with tqdm(total=total, desc=f"train {loss_name} (seed {seed})", file=sys.stderr) as bar:
        for _ in range(args.epochs):
            for images, targets in loader:
                images = [im.to(device) for im in images]
                targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
                losses = model(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{loss_name}: non-finite loss {dict((k, v.item()) for k, v in losses.items())}")
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
                sched.step()
                curve.append({k: v.item() for k, v in losses.items()})
                bar.set_postfix(loss=f"{loss.item():.3f}", box=f"{losses['loss_box_reg'].item():.3f}")
                bar.update(1)
    return model, curve, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, eval_set, gt: dict, category_ids, device, batch_size: int, detections_out=None) -> list:
    """The 12 COCOeval bbox numbers; every detection (COCO result dicts) is appended to ``detections_out``
    when it is a list."""
    from tqdm import tqdm

    model.eval()
    detections = []
    loader = torch.utils.data.DataLoader(eval_set, batch_size=batch_size, collate_fn=collate)
    for images, targets in tqdm(loader, desc="evaluate", file=sys.stderr):
        for out, t in zip(model([im.to(device) for im in images]), targets):
            for box, score, label in zip(out["boxes"].cpu().tolist(), out["scores"].cpu().tolist(),
                                         out["labels"].cpu().tolist()):
                detections.append({"image_id": t["image_id"], "category_id": category_ids[label - 1],
                                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    if detections_out is not None:
        detections_out.extend(detections)
    return coco_stats(gt, detections)


def coco_stats(gt: dict, detections: list) -> list:
    """pycocotools' 12 COCOeval bbox numbers of ``detections`` (COCO result dicts) against ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return [0.0] * 12
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return [float(s) for s in coco_eval.stats]


def prepare_data(args):
    """(train set, eval set, eval ground truth, category ids, dataset description)."""
    if args.dataset == "neon-trees":
        from neon_trees import prepare_neon_trees

        root = os.path.join(args.out, "neon_trees")
        args.ann, args.eval_ann, image_dir = prepare_neon_trees(root)  # DataError with the install command
        ann = args.ann
        source = {"source": "NEON tree crowns (deepforest 2.1.0 wheel), train: YELL crop2 tiles, held out: "
                            "YELL crop and OSBS_029 tiles", "path": root}
    elif args.images is None and args.ann is None:
        root = os.path.join(args.out, "synthetic_coco")
        ann = write_synthetic_coco(root, args.synthetic_images, size=args.image_size, seed=1000)
        image_dir = os.path.join(root, "images")
        source = {"source": "built-in synthetic", "path": root, "images": args.synthetic_images}
    else:
        if args.images is None or args.ann is None:
            raise DataError("--images and --ann go together")
        if not os.path.isdir(args.images):
            raise DataError(f"--images: no directory at {args.images}")
        ann, image_dir = args.ann, args.images
        source = {"source": "user", "images_dir": args.images, "ann": args.ann}
    data = load_coco_json(ann)
    names = [s.strip() for s in args.categories.split(",")] if args.categories else None
    category_ids = select_categories(data, names)
    if args.eval_ann:  # train on every (kept) image of --ann, evaluate on every (kept) image of --eval-ann
        eval_data = load_coco_json(args.eval_ann)
        names_kept = [c["name"] for c in data["categories"] if c["id"] in category_ids]
        if select_categories(eval_data, names_kept) != category_ids:
            raise DataError("--eval-ann must give the kept categories the same ids as --ann")
        only = category_ids if names else None
        train_ids = sorted(image_ids(data, args.split_seed, args.max_images, only))
        eval_ids = sorted(image_ids(eval_data, args.split_seed, args.max_images, only))
        eval_source = eval_data
    else:
        train_ids, eval_ids = split_image_ids(data, args.eval_fraction, args.split_seed, args.max_images,
                                              category_ids if names else None)
        eval_source = data
    train_set = CocoDetectionData(data, image_dir, train_ids, category_ids)
    eval_set = CocoDetectionData(eval_source, image_dir, eval_ids, category_ids)
    # every image of both splits, now: not when the evaluation of the first loss reaches a missing one
    train_set.check_images("training images")
    eval_set.check_images("held-out images")
    gt = subset_coco(eval_source, eval_ids, category_ids)
    if args.standardize:
        train_set, eval_set = Standardized(train_set), Standardized(eval_set)
    if args.augment in ("dihedral", "overhead"):
        train_set = DihedralAugment(train_set, colour=0.3 if args.augment == "overhead" else 0.0)
    source.update(train_images=len(train_set), eval_images=len(eval_set), eval_objects=len(gt["annotations"]),
                  categories=[c["name"] for c in data["categories"] if c["id"] in category_ids])
    return train_set, eval_set, gt, category_ids, source


def summarise(runs: list) -> dict:
    """Per loss: the 12 stats and AP/AP50/AP75 averaged over seeds (with std), and every run."""
    stats = [r["stats"] for r in runs]
    mean = [statistics.fmean(col) for col in zip(*stats)]
    out = {"stats": mean, "AP": mean[0], "AP50": mean[1], "AP75": mean[2],
           "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
           "final_loss": statistics.fmean(r["final_loss"] for r in runs)}
    if len(runs) > 1:
        for i, key in enumerate(("AP", "AP50", "AP75")):
            out[f"{key}_std"] = statistics.stdev(s[i] for s in stats)
        out["runs"] = runs
    return out


def plot_ap(results: dict, out_dir: str) -> None:
    """ap.png: AP, AP50 and AP75 per loss (with the seed spread where there are several seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 4))
    width = 0.25
    for k, key in enumerate(("AP", "AP50", "AP75")):
        vals = [results[n][key] for n in names]
        errs = [results[n].get(f"{key}_std", 0.0) for n in names]
        ax.bar([i + (k - 1) * width for i in range(len(names))], vals, width, yerr=errs, capsize=3, label=key)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("COCOeval bbox")
    ax.set_title("held-out AP per box loss")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ap.png"), dpi=110)
    plt.close(fig)


def plot(results: dict, curves: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_ap(results, out_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        if not curve:
            continue
        total = torch.tensor([sum(c.values()) for c in curve])
        box = torch.tensor([c["loss_box_reg"] + c["loss_rpn_box_reg"] if "loss_box_reg" in c else c["box_loss"]
                            for c in curve])
        k = max(1, len(total) // 50)  # a running mean, so that curves can be told apart
        smooth = lambda x, k=k: torch.nn.functional.avg_pool1d(x[None, None], k, 1)[0, 0]  # noqa: E731
        axes[0].plot(smooth(total), label=name)
        axes[1].plot(smooth(box), label=name)
    per_epoch = any(c and "box_loss" in c[0] for c in curves.values())  # Ultralytics' results.csv: per epoch
    axes[0].set_title("training loss (all terms)")
    axes[1].set_title("box (IoU) term, weighted" if per_epoch else "box terms (RPN + RoI), weighted")
    for ax in axes:
        ax.set_xlabel("epoch" if per_epoch else "step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_curves.png"), dpi=110)
    plt.close(fig)


def plot_predictions(eval_set, gt: dict, shown: dict, results: dict, out_dir: str, min_score: float = 0.5) -> None:
    """predictions.png: the held-out image with the most ground-truth boxes, once per loss — ground truth in
    white, the loss' detections scoring at least ``min_score`` in colour (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    image_id = showcase_image(gt)
    raw = getattr(eval_set, "dataset", eval_set)  # the image as it is, not standardized
    image, _ = raw[raw.image_ids.index(image_id)]
    truth = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image_id]
    names = list(shown)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.imshow(image.permute(1, 2, 0).numpy())
        for x, y, w, h in truth:
            ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=1.0))
        dets = [d for d in shown[name] if d["image_id"] == image_id and d["score"] >= min_score]
        for d in dets:
            x, y, w, h = d["bbox"]
            ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor="#ff3b30", linewidth=1.2))
        r = results.get(name, {})
        ax.set_title(f"{name}: {len(dets)} boxes ≥ {min_score}\n(held-out AP50 {r.get('AP50', float('nan')):.3f}, "
                     f"AP75 {r.get('AP75', float('nan')):.3f})", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"held-out image {image_id}: {len(truth)} ground-truth boxes (white), detections (red)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # room for the title above the panels' own
    fig.savefig(os.path.join(out_dir, "predictions.png"), dpi=100)
    plt.close(fig)


def showcase_image(gt: dict) -> int:
    """The held-out image with the most ground-truth boxes (the lowest id among ties)."""
    counts = {im["id"]: 0 for im in gt["images"]}
    for a in gt["annotations"]:
        counts[a["image_id"]] += 1
    return max(sorted(counts), key=lambda i: counts[i])


def table(results: dict) -> str:
    lines = ["| loss | AP | AP50 | AP75 | train s | final loss |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        cell = lambda k, r=r: f"{r[k]:.3f}" + (f" ± {r[k + '_std']:.3f}" if k + "_std" in r else "")  # noqa: E731
        lines.append(f"| {name} | {cell('AP')} | {cell('AP50')} | {cell('AP75')} | {r['train_seconds']:.0f} | "
                     f"{r['final_loss']:.3f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=FRAMEWORKS, default="torchvision",
                   help="torchvision: Faster R-CNN through boxloss.detection (default); ultralytics: a YOLO built "
                        "from its YAML through boxloss.integrations.ultralytics (pip install \"boxloss[ultralytics]\")")
    p.add_argument("--dataset", choices=DATASETS, default="synthetic",
                   help="built-in data when --images/--ann are not given: the synthetic shapes (default) or the "
                        "NEON tree crowns of the deepforest wheel (pip install --no-deps deepforest==2.1.0)")
    p.add_argument("--images", help="directory of the images of a COCO-format data set")
    p.add_argument("--ann", help="its instances JSON")
    p.add_argument("--eval-ann", help="a separate instances JSON for evaluation (images also in --images)")
    p.add_argument("--max-images", type=int, help="use at most this many images (after a seeded shuffle)")
    p.add_argument("--categories", help="comma-separated category names to keep (default: all)")
    p.add_argument("--losses", help=f"comma-separated from {', '.join(CHOICES)} (default: {','.join(ALL_LOSSES)}; "
                                    f"--quick: {','.join(QUICK_LOSSES)})")
    p.add_argument("--epochs", type=int, help="default: 4 (synthetic), 40 (neon-trees); ultralytics: 30, 100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", help="comma-separated seeds, one run per loss and seed (overrides --seed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/coco_subset")
    p.add_argument("--quick", action="store_true", help=f"only {','.join(QUICK_LOSSES)} (< 10 min on 2 CPU cores)")
    p.add_argument("--model", help="torchvision: 'small' (FasterRCNN on a 6-conv backbone, for CPUs; the default) or "
                                   f"one of {', '.join(STOCK_MODELS)} (random init); ultralytics: a model YAML "
                                   "(default yolo11n.yaml; e.g. yolov8n.yaml, yolo26n.yaml, or a path)")
    p.add_argument("--weights", help="a local checkpoint (state dict) of the detector to start from: what fits is "
                                     "loaded, the rest (e.g. a predictor for other classes) is reported and skipped")
    p.add_argument("--weights-backbone", help="a local checkpoint of the backbone CNN (e.g. torchvision's ImageNet "
                                              "resnet50 or mobilenet_v3 weights file): what fits is loaded")
    p.add_argument("--loss-weight", type=float, default=None,
                   help=f"box-term multiplier for every head (default: boxloss' per-head {DEFAULT_LOSS_WEIGHTS})")
    p.add_argument("--image-size", type=int, help="the side images are resized to (default: 128 synthetic, "
                                                    "256 neon-trees; ultralytics: 128, 320)")
    p.add_argument("--train-sizes", type=lambda v: tuple(int(x) for x in v.split(",") if x.strip()),
                   help="comma-separated sides to resize training batches to at random ('small' model; evaluation "
                        "stays at --image-size; default: none for synthetic, 192,224,288,320 for neon-trees)")
    p.add_argument("--augment", choices=("none", "dihedral", "overhead"),
                   help="training augmentation: random flips and quarter turns ('dihedral': overhead imagery has "
                        "no up), plus random brightness, contrast and saturation ('overhead', the default for "
                        "neon-trees), or none (default otherwise)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardize every image per channel (mean and spread), training and evaluation alike: "
                        "removes exposure and white-balance differences between sites (default: on for neon-trees)")
    p.add_argument("--synthetic-images", type=int, default=560, help="size of the built-in set")
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, help="default: 8 (synthetic), 4 (neon-trees); ultralytics: 16, 8")
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (default 2e-3); ultralytics: "
                                                "AdamW at this lr0 instead of its own optimizer choice")
    args = p.parse_args(argv)
    if args.dataset != "synthetic" and (args.images or args.ann or args.eval_ann):
        p.error(f"--dataset {args.dataset} brings its own data; leave out --images/--ann/--eval-ann")
    yolo = args.framework == "ultralytics"
    if yolo:
        # Ultralytics trains with its own augmentation, schedule and image handling
        given = [flag for flag, key in (("--augment", "augment"), ("--standardize", "standardize"),
                                        ("--train-sizes", "train_sizes"), ("--weights", "weights"),
                                        ("--weights-backbone", "weights_backbone"), ("--loss-weight", "loss_weight"))
                 if getattr(args, key) is not None]
        if given:
            p.error(f"{', '.join(given)}: torchvision-only; --framework ultralytics trains with Ultralytics' own "
                    "augmentation and image handling")
        args.augment, args.standardize, args.train_sizes = "none", False, ()
        for key, value in YOLO_DEFAULTS[args.dataset].items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        if args.image_size % 32:
            p.error(f"--image-size must be a multiple of 32 for YOLO (its largest stride); got {args.image_size}")
    elif args.model is None:
        args.model = "small"
    elif args.model not in ("small",) + STOCK_MODELS:
        p.error(f"--model for torchvision must be 'small' or one of {', '.join(STOCK_MODELS)}; got {args.model!r}")
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key, None) is None and not (yolo and key == "lr"):  # YOLO: Ultralytics' own optimiser
            setattr(args, key, value)
    choices = YOLO_CHOICES if yolo else CHOICES
    default = (YOLO_QUICK_LOSSES if args.quick else YOLO_DEFAULT_LOSSES) if yolo else \
        (QUICK_LOSSES if args.quick else ALL_LOSSES)
    losses = args.losses or ",".join(default)
    args.losses = [s.strip() for s in losses.split(",") if s.strip()]
    unknown = [s for s in args.losses if s not in choices]
    if unknown or not args.losses:
        p.error(f"--losses: unknown {unknown} for --framework {args.framework}; choose from {', '.join(choices)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers; got {args.seeds!r}")
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.eval_fraction < 1:
        p.error("--epochs and --batch-size must be positive, --eval-fraction in (0, 1)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but CUDA is not available")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    yolo = args.framework == "ultralytics"
    try:
        train_set, eval_set, gt, category_ids, dataset = prepare_data(args)
        if yolo:
            import ultralytics_yolo

            ultralytics_yolo._ultralytics()  # the install hint now, not after the data are written
            data_yaml, ids_of = ultralytics_yolo.write_yolo_dataset(
                os.path.join(args.out, "yolo_data"), {"train": train_set, "eval": eval_set}, dataset["categories"])
    except DataError as e:
        sys.exit(f"error: {e}")
    device = torch.device(args.device)
    if yolo:
        weights = "Ultralytics' own box gain (hyp box=7.5) for every loss"
        print(f"{dataset['train_images']} training / {dataset['eval_images']} held-out images, classes "
              f"{dataset['categories']}; {args.model} from its YAML; {weights}", file=sys.stderr)
    else:
        weights = {**DEFAULT_LOSS_WEIGHTS} if args.loss_weight is None else \
            {k: args.loss_weight for k in DEFAULT_LOSS_WEIGHTS}
        print(f"{dataset['train_images']} training / {dataset['eval_images']} held-out images, classes "
              f"{dataset['categories']}; box-loss weights {weights} (smooth_l1: torchvision's own)", file=sys.stderr)
    for flag, path in (("--weights", args.weights), ("--weights-backbone", args.weights_backbone)):
        if path:
            try:
                _read_state(path, flag)  # a bad file stops the run now, not after the first loss
            except DataError as e:
                sys.exit(f"error: {e}")
    config = {k: v for k, v in vars(args).items()}
    config.update(loss_weights=weights, torch=torch.__version__, python=platform.python_version(),
                  device_name=torch.cuda.get_device_name() if device.type == "cuda" else platform.machine())
    if yolo:
        import ultralytics

        config.update(ultralytics=ultralytics.__version__)
    results, curves, shown = {}, {}, {}
    try:
        for name in args.losses:
            runs = []
            for seed in args.seeds:
                detections = [] if seed == args.seeds[0] else None
                if yolo:
                    model, curve, seconds = ultralytics_yolo.train_one(name, seed, args, data_yaml, device)
                    found = ultralytics_yolo.detect(model, ids_of["eval"], category_ids, args, device)
                    stats = coco_stats(gt, found)
                    if detections is not None:
                        detections.extend(found)
                    final = curve[-1] if curve else {}
                    final = sum(final.values()) if final else float("nan")
                else:
                    model, curve, seconds = train_one(name, seed, args, train_set, len(category_ids) + 1, device)
                    stats = evaluate(model, eval_set, gt, category_ids, device, args.batch_size, detections)
                    final = statistics.fmean(sum(c.values()) for c in curve[-20:])
                if detections is not None:
                    shown[name] = detections
                runs.append({"seed": seed, "stats": stats, "AP": stats[0], "AP50": stats[1], "AP75": stats[2],
                             "train_seconds": seconds, "final_loss": final})
                curves.setdefault(name, curve)
                print(f"{name} seed {seed}: AP {stats[0]:.3f} AP50 {stats[1]:.3f} AP75 {stats[2]:.3f}", file=sys.stderr)
            results[name] = summarise(runs)
            # after every finished loss: a run that fails later keeps what it measured
            write_results(args.out, {"dataset": dataset, "config": config, "losses": results,
                                     "complete": len(results) == len(args.losses)})
            plot(results, curves, args.out)
            # YOLO trained from scratch scores few boxes above 0.5: draw from its own default confidence, 0.25
            plot_predictions(eval_set, gt, shown, results, args.out, min_score=0.25 if yolo else 0.5)
    except DataError as e:
        sys.exit(f"error: {e} (results.json holds the losses finished before this)" if results else f"error: {e}")
    payload = {"dataset": dataset, "config": config, "losses": results, "complete": True}
    print(table(results))
    print(f"wrote {args.out}/results.json, ap.png, loss_curves.png, predictions.png", file=sys.stderr)
    return payload


def write_results(out_dir: str, payload: dict) -> None:
    """results.json, written atomically: nothing half-written looks like a result. ``complete`` is False while
    losses are still to come."""
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, os.path.join(out_dir, "results.json"))


if __name__ == "__main__":
    main()
