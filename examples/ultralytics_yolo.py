"""The Ultralytics side of ``coco_subset.py --framework ultralytics``: the same COCO-format splits written as a
YOLO-format data set, one YOLO trained from its YAML per loss and seed (``stock``: Ultralytics' own CIoU; every
other name through ``boxloss.integrations.ultralytics.replace_box_loss``), and its held-out detections in COCO
result form for pycocotools' COCOeval — so both frameworks' numbers come from the same evaluation.

Needs ``pip install "boxloss[ultralytics]"``; runs offline (``YOLO_OFFLINE=1`` is set here; the model is built from
its YAML with random weights, nothing is downloaded). Ultralytics is AGPL-3.0: only this example imports it.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")  # its per-batch bars; this example shows one bar per run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coco_data import DataError  # noqa: E402

INSTALL = 'pip install "boxloss[ultralytics]"'


def _ultralytics():
    try:
        import ultralytics  # noqa: F401
        from ultralytics import YOLO
    except ImportError:
        raise DataError(f"--framework ultralytics needs Ultralytics: {INSTALL}") from None
    return YOLO


def base_dataset(ds):
    """The CocoDetectionData under any augmentation or standardization wrappers."""
    while hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


def write_yolo_dataset(root: str, splits: Dict[str, object],
                       names: Sequence[str]) -> Tuple[str, Dict[str, Dict[str, int]]]:
    """Write ``root/images/<split>`` (links to the images, copies where links are not allowed),
    ``root/labels/<split>/*.txt`` (``class cx cy w h``, normalised) and ``root/data.yaml``.

    Returns (data.yaml path, {split: {image path as written: COCO image id}}) — the maps turn YOLO's predictions
    back into COCO results. Boxes are those the COCO loader keeps (crowd and sub-pixel boxes left out), so both frameworks
    train and evaluate on the same objects.
    """
    import shutil

    ids_of: Dict[str, Dict[str, int]] = {}
    for split, dataset in splits.items():
        ds = base_dataset(dataset)
        ids_of[split] = {}
        image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "labels", split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for image_id in ds.image_ids:
            info = ds.images[image_id]
            source = os.path.abspath(ds.path_of(image_id))
            stem = f"{image_id:07d}"
            path = os.path.join(image_dir, stem + os.path.splitext(source)[1].lower())
            if not os.path.exists(path):
                try:
                    os.symlink(source, path)
                except OSError:  # file systems without links
                    shutil.copyfile(source, path)
            width, height = float(info["width"]), float(info["height"])
            lines = []
            for (x1, y1, x2, y2), label in ds.anns[image_id]:
                x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)
                if x2 - x1 >= 1 and y2 - y1 >= 1:
                    lines.append(f"{label - 1} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                                 f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
            with open(os.path.join(label_dir, stem + ".txt"), "w") as f:
                f.write("\n".join(lines) + ("\n" if lines else ""))
            ids_of[split][path] = image_id
    for stale in ("train.cache", "eval.cache"):  # Ultralytics' label caches: rebuilt from the files above
        cache = os.path.join(root, "labels", stale)
        if os.path.exists(cache):
            os.remove(cache)
    yaml_path = os.path.join(root, "data.yaml")
    with open(yaml_path, "w") as f:
        f.write(f"path: {os.path.abspath(root)}\ntrain: images/train\nval: images/eval\nnames:\n")
        for k, name in enumerate(names):
            f.write(f"  {k}: {name!r}\n")
    return yaml_path, ids_of


def read_curve(results_csv: str) -> List[dict]:
    """Ultralytics' per-epoch training losses (``box_loss``, ``cls_loss``, ``dfl_loss`` …) from results.csv."""
    if not os.path.isfile(results_csv):
        return []
    with open(results_csv) as f:
        rows = list(csv.DictReader(f))
    return [{k.strip()[len("train/"):]: float(v) for k, v in row.items() if k.strip().startswith("train/")}
            for row in rows]


def train_one(loss_name: str, seed: int, args, data_yaml: str, device) -> tuple:
    """Train ``args.model`` (a YOLO YAML, random init) with ``loss_name``; returns (YOLO with the final EMA
    weights, per-epoch loss curve, seconds)."""
    from tqdm import tqdm

    YOLO = _ultralytics()
    from boxloss.integrations.ultralytics import replace_box_loss

    model = YOLO(args.model)
    if loss_name != "stock":
        replace_box_loss(model, loss_name)
    bar = tqdm(total=args.epochs, desc=f"train {loss_name} (seed {seed})", unit="epoch", file=sys.stderr)

    def progress(trainer):
        items = trainer.label_loss_items(trainer.tloss, prefix="")
        bar.set_postfix({k.split("/")[-1]: f"{float(v):.3f}" for k, v in items.items()})
        bar.update(1)

    model.add_callback("on_train_epoch_end", progress)
    extra = {"optimizer": "AdamW", "lr0": args.lr} if args.lr is not None else {}
    start = time.perf_counter()
    try:
        model.train(data=data_yaml, epochs=args.epochs, imgsz=args.image_size, batch=args.batch_size,
                    device=str(device) if device.type != "cuda" else (device.index or 0), workers=0, plots=False,
                    val=False, seed=seed, deterministic=True, project=os.path.abspath(os.path.join(args.out, "yolo")),
                    name=f"{loss_name}_seed{seed}", exist_ok=True, verbose=False, amp=device.type == "cuda",
                    **extra)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    trained = YOLO(str(model.trainer.last))  # the EMA weights Ultralytics saved, as a user would load them
    return trained, read_curve(str(model.trainer.csv)), seconds


def detect(model, ids_of: Dict[str, int], category_ids: Sequence[int], args, device) -> list:
    """COCO result dicts (xywh, score, category id) for every image of ``ids_of`` (one split's map from
    :func:`write_yolo_dataset`): Ultralytics' own predictor at
    ``args.image_size``, confidence ≥ 0.001 and NMS IoU 0.7 as its validator uses, at most ``args.detections``
    per image."""
    from tqdm import tqdm

    paths = sorted(ids_of)
    detections = []
    for start in tqdm(range(0, len(paths), args.batch_size), desc="evaluate", file=sys.stderr):
        chunk = paths[start:start + args.batch_size]
        for path, result in zip(chunk, model.predict(chunk, imgsz=args.image_size, conf=0.001, iou=0.7,
                                                     max_det=args.detections or 100, device=str(device)
                                                     if device.type != "cuda" else (device.index or 0),
                                                     verbose=False)):
            boxes = result.boxes
            for (x1, y1, x2, y2), score, cls in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist()):
                detections.append({"image_id": ids_of[path], "category_id": category_ids[int(cls)],
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return detections
