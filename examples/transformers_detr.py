"""Train a Hugging Face transformers DETR-family detector with transformers' own GIoU term and with boxloss losses
(``boxloss.integrations.transformers.replace_box_loss``), and evaluate each with pycocotools' COCOeval on a
held-out split.

Data: the built-in synthetic COCO-format set of ``coco_subset.py`` (4 shape classes, textured backgrounds),
written to disk and read back through the same loader as real data, or your own with ``--images DIR --ann
FILE``. Model: RT-DETR (default), DETR or Deformable DETR, built from a config with a small random-init backbone
(nothing is downloaded), trained with AdamW in a plain loop.

    python examples/transformers_detr.py --quick                        # stock vs ciou, ~2 min on 2 CPU cores
    python examples/transformers_detr.py --losses stock,giou,ciou,diou --steps 1500 --seeds 0,1
    python examples/transformers_detr.py --model detr --images train2017 --ann instances.json --device cuda

``stock`` is transformers' own loss, unchanged; every other name goes through ``replace_box_loss`` (``giou`` is
the same loss as ``stock``, computed by boxloss on the matched pairs). Every run gets the same seed, initial
weights, data order and schedule. What a short schedule can show: that each loss trains and how the held-out AP
compares at that budget on this data; not which loss is better for a full schedule (DETR-family models train for
tens of epochs). Output in --out: results.json (rewritten after every finished run, ``"complete": false`` until
the last; ``losses.<name>.stats`` holds the 12 COCOeval numbers, averaged over seeds), ap.png and
loss_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import coco_data  # noqa: E402

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def build_model(name: str, num_classes: int, queries: int):
    """A small random-init DETR-family model (no download)."""
    import transformers as T

    small = dict(d_model=64, encoder_layers=1, decoder_layers=3, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 encoder_attention_heads=4, decoder_attention_heads=4, num_labels=num_classes, num_queries=queries)
    if name == "rt_detr":
        backbone = T.RTDetrResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 64], depths=[1, 1, 1],
                                        layer_type="basic", out_features=["stage1", "stage2", "stage3"])
        return T.RTDetrForObjectDetection(T.RTDetrConfig(
            backbone_config=backbone, use_pretrained_backbone=False, encoder_hidden_dim=64,
            encoder_in_channels=[32, 64, 64], feat_strides=[4, 8, 16], decoder_in_channels=[64, 64, 64],
            num_feature_levels=3, decoder_n_points=4, num_denoising=50, **small))
    resnet = dict(embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1])
    if name == "detr":
        return T.DetrForObjectDetection(T.DetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False,
            backbone_config=T.ResNetConfig(out_features=["stage2"], **resnet), **small))
    if name == "deformable_detr":
        return T.DeformableDetrForObjectDetection(T.DeformableDetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False, num_feature_levels=2, encoder_n_points=4,
            decoder_n_points=4, backbone_config=T.ResNetConfig(out_features=["stage1", "stage2"], **resnet), **small))
    raise ValueError(f"--model must be rt_detr, detr or deformable_detr; got {name!r}")


def to_transformers(images, targets, size: int):
    """Stack images and convert targets to transformers' format: class_labels 0..K-1, boxes cxcywh / size."""
    labels = []
    for t in targets:
        b = t["boxes"]
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
                             1) / size
        labels.append({"class_labels": t["labels"] - 1, "boxes": cxcywh})
    return torch.stack([coco_data.standardize_image(im) for im in images]), labels


def detections(model_name: str, out, size: int, keep: int = 100):
    """(boxes xyxy px, scores, labels 0..K-1) per image: softmax without the no-object class for DETR, the
    sigmoid scores of every (query, class) for the focal-loss models, the top ``keep`` of each image."""
    logits, boxes = out.logits, out.pred_boxes
    if model_name == "detr":
        prob = logits.softmax(-1)[..., :-1]
        scores, labels = prob.max(-1)
        index = scores.topk(min(keep, scores.shape[1]), dim=1).indices
    else:
        prob = logits.sigmoid()
        flat = prob.flatten(1)
        scores_all, idx = flat.topk(min(keep, flat.shape[1]), dim=1)
        index, labels = idx // prob.shape[2], idx % prob.shape[2]
        scores = scores_all
    result = []
    for b in range(logits.shape[0]):
        if model_name == "detr":
            q = index[b]
            s, lab = scores[b, q], labels[b, q]
        else:
            q, s, lab = index[b], scores[b], labels[b]
        c = boxes[b, q]
        xyxy = torch.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2,
                            c[:, 1] + c[:, 3] / 2], 1).clamp(0, 1) * size
        result.append((xyxy, s, lab))
    return result


def evaluate(model, model_name, eval_set, gt, category_ids, size, device, batch_size) -> list:
    from coco_subset import coco_stats  # the same COCOeval as the torchvision comparison
    from tqdm import tqdm

    model.eval()
    found = []
    loader = torch.utils.data.DataLoader(eval_set, batch_size=batch_size, collate_fn=lambda b: tuple(zip(*b)))
    with torch.no_grad():
        for images, targets in tqdm(loader, desc="evaluate", file=sys.stderr):
            pixels, _ = to_transformers(images, targets, size)
            out = model(pixel_values=pixels.to(device))
            for (boxes, scores, labels), t in zip(detections(model_name, out, size), targets):
                for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                    found.append({"image_id": t["image_id"], "category_id": category_ids[label],
                                  "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    return coco_stats(gt, found)


def train(loss_name: str, seed: int, args, train_set, num_classes: int, device):
    """A model trained with one loss; returns (model, per-step loss dicts)."""
    from tqdm import tqdm

    from boxloss.integrations.transformers import replace_box_loss

    torch.manual_seed(seed)
    model = build_model(args.model, num_classes, args.queries).to(device)
    if loss_name != "stock":
        replace_box_loss(model, loss_name)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=g,
                                         collate_fn=lambda b: tuple(zip(*b)), drop_last=True)
    curve, step = [], 0
    bar = tqdm(total=args.steps, desc=f"{loss_name} seed {seed}", file=sys.stderr)
    model.train()
    while step < args.steps:
        for images, targets in loader:
            pixels, labels = to_transformers(images, targets, args.image_size)
            out = model(pixel_values=pixels.to(device), labels=[{k: v.to(device) for k, v in t.items()}
                                                              for t in labels])
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"{loss_name}: the loss became {float(out.loss.detach())} at step {step}")
            optimiser.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimiser.step()
            curve.append({"loss": float(out.loss.detach()), "box": float(out.loss_dict["loss_giou"].detach())})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            if step >= args.steps:
                break
    bar.close()
    return model, curve


def plot(results: dict, curves: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from coco_subset import plot_ap  # the same ap.png as the torchvision comparison

    plot_ap(results, out_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        for ax, key in zip(axes, ("loss", "box")):
            series = torch.tensor([c[key] for c in curve])
            k = max(1, len(series) // 50)
            ax.plot(torch.nn.functional.avg_pool1d(series[None, None], k, 1)[0, 0], label=name)
    axes[0].set_title("training loss (all terms, weighted)")
    axes[1].set_title("box term of the last layer (loss_giou key), unweighted")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_curves.png"), dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rt_detr", choices=["rt_detr", "detr", "deformable_detr"])
    p.add_argument("--losses", default="stock,ciou", help="comma-separated: stock and boxloss loss names")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--image-size", type=int, default=128, help="side of the built-in images")
    p.add_argument("--train-images", type=int, default=256, help="built-in set: images (a fifth held out)")
    p.add_argument("--images", help="your own images folder (with --ann)")
    p.add_argument("--ann", help="your own COCO instances json (with --images)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="120 steps on 96 images")
    p.add_argument("--out", default="runs/transformers_detr")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.train_images = 120, 96
    if (args.images is None) != (args.ann is None):
        p.error("--images and --ann go together")
    return args


def prepare_data(args):
    if args.images:
        if not os.path.isdir(args.images):
            raise coco_data.DataError(f"--images {args.images!r} is not a folder")
        ann, image_dir = args.ann, args.images
    else:
        root = tempfile.mkdtemp(prefix="boxloss_transformers_")
        ann = coco_data.write_synthetic_coco(root, args.train_images, size=args.image_size, seed=123)
        image_dir = os.path.join(root, "images")
    data = coco_data.load_coco_json(ann)
    category_ids = coco_data.select_categories(data, None)
    train_ids, eval_ids = coco_data.split_image_ids(data, 0.2, seed=0, category_ids=category_ids)
    train_set = coco_data.CocoDetectionData(data, image_dir, train_ids, category_ids)
    eval_set = coco_data.CocoDetectionData(data, image_dir, eval_ids, category_ids)
    train_set.check_images("training images")
    eval_set.check_images("held-out images")
    return train_set, eval_set, coco_data.subset_coco(data, eval_ids, category_ids), category_ids


def main(argv=None) -> dict:
    args = parse_args(argv)
    import transformers

    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    train_set, eval_set, gt, category_ids = prepare_data(args)
    losses = [n.strip() for n in args.losses.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    payload = {"complete": False, "model": args.model, "steps": args.steps, "seeds": seeds,
               "train_images": len(train_set), "eval_images": len(eval_set), "device": str(device),
               "machine": platform.machine(), "torch": torch.__version__, "transformers": transformers.__version__,
               "losses": {}}
    curves = {}
    for name in losses:
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            model, curve = train(name, seed, args, train_set, len(category_ids), device)
            stats = evaluate(model, args.model, eval_set, gt, category_ids, args.image_size, device, args.batch_size)
            runs.append({"seed": seed, "stats": stats, "seconds": time.perf_counter() - start,
                         "final_loss": curve[-1]["loss"]})
            curves.setdefault(name, curve)
            mean = [statistics.mean(r["stats"][k] for r in runs) for k in range(12)]
            entry = {"stats": mean, "runs": runs, **dict(zip(STAT_NAMES, mean))}
            if len(runs) > 1:
                entry.update({f"{k}_std": statistics.stdev(r["stats"][i] for r in runs)
                              for i, k in enumerate(STAT_NAMES[:3])})
            payload["losses"][name] = entry
            write(args.out, payload)  # partial results survive a failed later run
    payload["complete"] = True
    write(args.out, payload)
    plot({n: payload["losses"][n] for n in losses}, curves, args.out)
    print("| loss | AP | AP50 | AP75 |\n|---|---:|---:|---:|")
    for n in losses:
        e = payload["losses"][n]
        print(f"| {n} | {e['AP']:.3f} | {e['AP50']:.3f} | {e['AP75']:.3f} |")
    return payload


def write(out_dir: str, payload: dict) -> None:
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
