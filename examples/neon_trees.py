"""NEON tree crowns, as shipped in the DeepForest wheel, turned into a COCO-format detection set on disk.

Real airborne RGB orthophotos of forests with hand-made tree-crown boxes (Pascal VOC XML) travel inside the
``deepforest`` wheel (MIT licence; the imagery and labels are NEON's, released CC0 / CC BY 4.0; see Weinstein
et al., "DeepForest", Methods in Ecology and Evolution 2020). This module finds those files **without importing
deepforest** (its ``__init__`` pulls in Lightning, rasterio, geopandas and transformers), cuts the large images
into tiles, and writes a COCO instances file per split that ``coco_data.load_coco_json`` and
``CocoDetectionData`` read like any user's data:

* train: the tiles of ``2019_YELL_2_528000_4978000_image_crop2`` (2299 × 2472 px, 574 trees);
* held out: the tiles of ``2019_YELL_2_541000_4977000_image_crop`` (1249 × 1035 px, 279 trees) and
  ``OSBS_029`` (400 × 400 px, 61 trees) — a split by source image, so no tree is seen in training and evaluation.
  ``SOAP_061`` is left out: its labels are incomplete.

Each side is covered by as few ``tile``-pixel tiles as it takes, spread evenly from edge to edge (neighbours
overlap by a few pixels); a box cut by a tile edge is kept, clipped, when at least ``min_visible`` of its area
lies inside the tile.

    pip install --no-deps deepforest==2.1.0
    python examples/neon_trees.py --out runs/neon_trees        # writes the tiles and train.json / eval.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coco_data import DataError  # noqa: E402

INSTALL = "pip install --no-deps deepforest==2.1.0"
TRAIN_SOURCES = ("2019_YELL_2_528000_4978000_image_crop2",)
EVAL_SOURCES = ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029")
CATEGORY = {"id": 1, "name": "tree"}


def deepforest_data_dir() -> str:
    """The ``data`` folder of the installed deepforest package, located without importing it."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the NEON tree-crown images ship inside the deepforest wheel, which is not installed: "
                        f"{INSTALL} (no dependencies are needed; boxloss never imports it)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    missing = [f"{s}.{ext}" for s in TRAIN_SOURCES + EVAL_SOURCES for ext in ("png", "xml")
               if not os.path.isfile(os.path.join(folder, f"{s}.{ext}"))]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}: install the version these examples use: {INSTALL}")
    return folder


def read_voc(path: str) -> Tuple[int, int, List[List[float]]]:
    """(width, height, boxes as [x1, y1, x2, y2]) of a Pascal VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes = []
        for obj in root.iter("object"):
            b = obj.find("bndbox")
            boxes.append([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a Pascal VOC annotation file with a size and bndbox entries: {e}") from None
    return width, height, boxes


def tile_starts(length: int, tile: int) -> List[int]:
    """Tile offsets along one side: as few tiles as cover it, spread evenly from edge to edge (neighbours overlap
    by the same few pixels instead of a last tile that almost repeats the one before it)."""
    if length <= tile:
        return [0]
    n = -(-length // tile)
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_boxes(boxes: Sequence[Sequence[float]], width: int, height: int, tile: int,
               min_visible: float = 0.5) -> List[Tuple[int, int, int, int, List[List[float]]]]:
    """Every tile ``(x0, y0, w, h, boxes)`` with the boxes in tile coordinates: clipped to the tile, kept when at
    least ``min_visible`` of the box's area lies inside and the clipped box is at least 1 px wide and high."""
    tiles = []
    for y0 in tile_starts(height, tile):
        for x0 in tile_starts(width, tile):
            w, h = min(tile, width - x0), min(tile, height - y0)
            kept = []
            for x1, y1, x2, y2 in boxes:
                cx1, cy1 = max(x1, x0), max(y1, y0)
                cx2, cy2 = min(x2, x0 + w), min(y2, y0 + h)
                area = (x2 - x1) * (y2 - y1)
                inside = max(0.0, cx2 - cx1) * max(0.0, cy2 - cy1)
                if area > 0 and inside >= min_visible * area and cx2 - cx1 >= 1 and cy2 - cy1 >= 1:
                    kept.append([cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0])
            tiles.append((x0, y0, w, h, kept))
    return tiles


def _write_split(sources: Sequence[str], data_dir: str, images_dir: str, tile: int, min_visible: float,
                 next_ids: Dict[str, int]) -> dict:
    from PIL import Image

    coco = {"images": [], "annotations": [], "categories": [dict(CATEGORY)]}
    for source in sources:
        width, height, boxes = read_voc(os.path.join(data_dir, f"{source}.xml"))
        with Image.open(os.path.join(data_dir, f"{source}.png")) as im:
            image = im.convert("RGB")
        if image.size != (width, height):
            raise DataError(f"{source}.png is {image.size[0]} × {image.size[1]} px but its XML says {width} × {height}")
        for x0, y0, w, h, kept in tile_boxes(boxes, width, height, tile, min_visible):
            name = f"{source}_x{x0:04d}_y{y0:04d}.png"
            path = os.path.join(images_dir, name)
            if not os.path.exists(path):
                image.crop((x0, y0, x0 + w, y0 + h)).save(path)
            image_id = next_ids["image"]
            next_ids["image"] += 1
            coco["images"].append({"id": image_id, "file_name": name, "width": w, "height": h, "source": source,
                                   "offset": [x0, y0]})
            for x1, y1, x2, y2 in kept:
                coco["annotations"].append({"id": next_ids["ann"], "image_id": image_id, "category_id": 1,
                                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                            "iscrowd": 0})
                next_ids["ann"] += 1
    return coco


def prepare_neon_trees(out_dir: str, tile: int = 400, min_visible: float = 0.5,
                       data_dir: Optional[str] = None) -> Tuple[str, str, str]:
    """Write the tiles and ``train.json`` / ``eval.json`` (COCO instances) under ``out_dir``; returns
    (train annotation path, eval annotation path, images directory). Deterministic; tiles already on disk are
    reused."""
    if tile < 32:
        raise DataError(f"tile must be at least 32 px; got {tile}")
    if not 0 < min_visible <= 1:
        raise DataError(f"min_visible must be in (0, 1]; got {min_visible}")
    data_dir = data_dir or deepforest_data_dir()
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    ids = {"image": 1, "ann": 1}
    paths = []
    for split, sources in (("train", TRAIN_SOURCES), ("eval", EVAL_SOURCES)):
        coco = _write_split(sources, data_dir, images_dir, tile, min_visible, ids)
        coco["info"] = {"description": f"NEON tree crowns from the deepforest wheel, {split} split, {tile}-px tiles",
                        "sources": list(sources), "min_visible": min_visible}
        path = os.path.join(out_dir, f"{split}.json")
        with open(path, "w") as f:
            json.dump(coco, f)
        paths.append(path)
    return paths[0], paths[1], images_dir


def main(argv=None) -> Tuple[str, str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/neon_trees")
    parser.add_argument("--tile", type=int, default=400)
    parser.add_argument("--min-visible", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        train, held_out, images = prepare_neon_trees(args.out, args.tile, args.min_visible)
    except DataError as e:
        sys.exit(f"error: {e}")
    for path in (train, held_out):
        with open(path) as f:
            data = json.load(f)
        print(f"{path}: {len(data['images'])} tiles, {len(data['annotations'])} tree boxes", file=sys.stderr)
    return train, held_out, images


if __name__ == "__main__":
    main()
