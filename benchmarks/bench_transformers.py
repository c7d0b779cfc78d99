"""The loss call of Hugging Face transformers' RT-DETR and D-FINE, transformers' own against the boxloss swap,
side by side: time and peak extra memory of the whole loss function (matching every decoder layer, the
encoder output and the denoising groups, then every term) and of the box term alone.

The size is a training step's: batch 16, 300 queries, 6 decoder layers with auxiliary and denoising outputs
(100 denoising queries), about 20 objects per image. The model (random-init, a small backbone: only the loss is
timed) is run forward once to record the arguments it passes to its loss function; the loss functions are then
timed on those same arguments with gradients enabled, interleaved repetition by repetition. The box term alone:
transformers' ``1 − diag(generalized_box_iou(...))`` against ``boxloss.giou_loss`` on all matched pairs of the
batch and of every layer (N boxes), with their backward. Only public APIs are used.

    python benchmarks/bench_transformers.py            # CPU
    python benchmarks/bench_transformers.py --device cuda
    python benchmarks/bench_transformers.py --quick    # batch 4, 3 repeats

Writes bench_transformers_<device>.json to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import transformers
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import generalized_box_iou

import boxloss
from boxloss.integrations.transformers import replace_box_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_speed import peak_extra_memory  # noqa: E402


def models(batch: int):
    common = dict(use_pretrained_backbone=False, d_model=64, encoder_hidden_dim=64, encoder_in_channels=[32, 64, 64],
                  feat_strides=[8, 16, 32], encoder_layers=1, decoder_layers=6, num_queries=300, num_denoising=100,
                  decoder_in_channels=[64, 64, 64], encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=80,
                  decoder_n_points=2)
    rt_backbone = transformers.RTDetrResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 64], depths=[1, 1, 1],
                                                  layer_type="basic", out_features=["stage1", "stage2", "stage3"])
    hg = transformers.HGNetV2Config(
        stem_channels=[3, 8, 16], stage_in_channels=[16, 32, 64], stage_mid_channels=[8, 16, 32],
        stage_out_channels=[32, 64, 64], stage_num_blocks=[1, 1, 1], stage_downsample=[False, True, True],
        stage_light_block=[False, False, True], stage_kernel_size=[3, 3, 5], stage_numb_of_layers=[2, 2, 2],
        out_features=["stage1", "stage2", "stage3"], hidden_sizes=[32, 64, 64], depths=[1, 1, 1], embedding_size=16)
    return {
        "RT-DETR": transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(backbone_config=rt_backbone,
                                                                                   **common)),
        "D-FINE": transformers.DFineForObjectDetection(transformers.DFineConfig(backbone_config=hg,
                                                                                hidden_expansion=0.5, **common)),
    }


def batch_of(n: int, objects: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 128, 128, generator=g).to(device)
    labels = []
    for _ in range(n):
        k = objects + int(torch.randint(-3, 4, (1,), generator=g))
        centre = torch.rand(k, 2, generator=g) * 0.8 + 0.1
        size = torch.rand(k, 2, generator=g) * 0.2 + 0.02
        labels.append({"class_labels": torch.randint(0, 80, (k,), generator=g).to(device),
                       "boxes": torch.cat([centre, size], 1).to(device)})
    return images, labels


def recorded_call(model, images, labels):
    """The arguments ``model`` passes to its loss function in one training forward pass."""
    seen = {}
    original = model.loss_function

    def record(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return original(*args, **kwargs)

    model.loss_function = record
    model.train()
    with torch.no_grad():
        model(pixel_values=images, labels=labels)
    del model._loss_function  # back to the class's own
    return seen["args"], seen["kwargs"]


def with_grad(args, kwargs):
    def leaf(x):
        return x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
    return [leaf(x) for x in args], {k: leaf(v) for k, v in kwargs.items()}


def timed(impls: dict, device, repeats: int) -> dict:
    times = {k: [] for k in impls}
    for fn in impls.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in impls.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: {"median_ms": statistics.median(v), "iqr_ms": (statistics.quantiles(v, n=4)[2] -
                                                              statistics.quantiles(v, n=4)[0]) if len(v) > 1 else 0.0}
            for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 3
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    images, labels = batch_of(args.batch, args.objects, device)
    for name, model in models(args.batch).items():
        model.to(device)
        call_args, call_kwargs = recorded_call(model, images, labels)
        stock_fn = model.loss_function
        swapped_fn = replace_box_loss(copy.deepcopy(model), "giou").loss_function

        def run(fn, a=call_args, k=call_kwargs):
            ga, gk = with_grad(a, k)
            loss = fn(*ga, **gk)[0]
            loss.backward()

        impls = {"transformers": lambda f=stock_fn: run(f), "boxloss": lambda f=swapped_fn: run(f)}
        row = {"op": f"{name} loss function, fwd+bwd", "times": timed(impls, device, args.repeats),
               "peak_extra_bytes": {k: peak_extra_memory(f, device) for k, f in impls.items()}}
        rows.append(row)
        print(row, file=sys.stderr)

    # the box term alone, on as many matched pairs as one RT-DETR step holds (every layer and group)
    n = args.batch * args.objects * (6 + 1 + 6)  # decoder layers + encoder output + denoising groups
    g = torch.Generator().manual_seed(1)
    src = torch.cat([torch.rand(n, 2, generator=g) * 0.8 + 0.1, torch.rand(n, 2, generator=g) * 0.2 + 0.02], 1)
    tgt = src + (torch.rand(n, 4, generator=g) - 0.5) * 0.02
    src, tgt = src.to(device).requires_grad_(), tgt.to(device)

    def theirs():
        loss = 1 - torch.diag(generalized_box_iou(center_to_corners_format(src), center_to_corners_format(tgt)))
        loss.sum().backward()

    def ours():
        boxloss.giou_loss(src, tgt, fmt="cxcywh", reduction="sum").backward()

    impls = {"transformers": theirs, "boxloss": ours}
    row = {"op": f"box term alone (GIoU of {n} matched pairs), fwd+bwd", "times": timed(impls, device, args.repeats),
           "peak_extra_bytes": {k: peak_extra_memory(f, device) for k, f in impls.items()}}
    rows.append(row)
    print(row, file=sys.stderr)

    print(f"\ndevice: {platform.machine() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, ~{args.objects} objects per image, median of {args.repeats} interleaved repeats\n")
    print("| op | transformers ms | boxloss ms | speed-up | peak extra MB transformers / boxloss |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        t, b = r["times"]["transformers"], r["times"]["boxloss"]
        m = r["peak_extra_bytes"]
        print(f"| {r['op']} | {t['median_ms']:.1f} (±{t['iqr_ms']:.1f}) | {b['median_ms']:.1f} (±{b['iqr_ms']:.1f}) | "
              f"{t['median_ms'] / b['median_ms']:.2f}× | {m['transformers'] / 2**20:.1f} / {m['boxloss'] / 2**20:.1f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"bench_transformers_{device.type}.json"), "w") as f:
        json.dump({"device": device.type, "machine": platform.machine(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                   "batch": args.batch, "objects": args.objects, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
