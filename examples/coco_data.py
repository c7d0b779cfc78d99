"""COCO-format data for examples/coco_subset.py: a synthetic data set written to disk, and the loader for it
and for a user's own COCO (or COCO-format) annotations.

The loader is the only path: the built-in data is first written as images + ``instances.json`` and then read
back exactly as a user's data is, so the real path is always exercised.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import torch

CLASSES = ("rectangle", "disc", "triangle", "ring")


class DataError(ValueError):
    """A data set that cannot be used: the message says which file and what is wrong."""


# ------------------------------------------------------------------------------------------ synthetic set
def _texture(g: torch.Generator, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    img = torch.zeros(3, size, size)
    for _ in range(3):  # a few oriented sinusoids per channel: stripes and blobs of varying frequency
        angle, freq = float(torch.rand(1, generator=g)) * math.pi, float(torch.rand(1, generator=g)) * 0.35 + 0.05
        wave = torch.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq + float(torch.rand(1, generator=g)) * 6)
        img += wave * (torch.rand(3, 1, 1, generator=g) * 0.25)
    img += torch.rand(3, 1, 1, generator=g) * 0.5 + 0.2
    return img


def _shape_mask(kind: str, xx, yy, x1, y1, w, h):
    cx, cy = x1 + w / 2, y1 + h / 2
    if kind == "rectangle":
        return (xx >= x1) & (xx < x1 + w) & (yy >= y1) & (yy < y1 + h)
    r = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2
    if kind == "disc":
        return r <= 1
    if kind == "ring":
        return (r <= 1) & (r >= 0.35)
    # triangle, apex up: half-width grows linearly from the apex to the base
    t = (yy - y1) / h
    return (t >= 0) & (t <= 1) & ((xx - cx).abs() <= t * w / 2)


def write_synthetic_coco(out_dir: str, n_images: int, size: int = 128, seed: int = 0, max_objects: int = 5) -> str:
    """Write ``n_images`` PNG images and ``instances.json`` (COCO format) to ``out_dir``; return the json path.

    Objects: 4 shape classes (rectangle, disc, triangle, ring) in random colours, so that colour does not tell
    the class; sides 10–55 % of the image, aspect ratios 1:2.5 to 2.5:1; up to ``max_objects`` per image, allowed
    to overlap (IoU ≤ 0.3 between boxes; later objects are drawn on top); textured backgrounds and pixel noise.
    """
    from PIL import Image

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        img = _texture(g, size)
        boxes: List[List[float]] = []
        for _ in range(int(torch.randint(1, max_objects + 1, (1,), generator=g))):
            for _attempt in range(10):
                side = float(torch.rand(1, generator=g)) * 0.45 * size + 0.1 * size
                aspect = math.exp((float(torch.rand(1, generator=g)) * 2 - 1) * math.log(2.5))
                w, h = min(side * math.sqrt(aspect), size - 2), min(side / math.sqrt(aspect), size - 2)
                x1 = float(torch.rand(1, generator=g)) * (size - w)
                y1 = float(torch.rand(1, generator=g)) * (size - h)
                box = torch.tensor([[x1, y1, x1 + w, y1 + h]])
                if not boxes or _max_iou(box, torch.tensor(boxes)) <= 0.3:
                    break
            else:
                continue
            kind = int(torch.randint(0, len(CLASSES), (1,), generator=g))
            mask = _shape_mask(CLASSES[kind], xx, yy, x1, y1, w, h)
            if mask.sum() < 20:
                continue
            colour = torch.rand(3, 1, 1, generator=g)
            shade = 1 + 0.15 * torch.randn(1, size, size, generator=g)
            img = torch.where(mask, (colour * shade).clamp(0, 1), img)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            bx1, by1, bx2, by2 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
            boxes.append([bx1, by1, bx2, by2])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": kind + 1,
                                "bbox": [bx1, by1, bx2 - bx1, by2 - by1], "area": float(mask.sum()),
                                "iscrowd": 0})
        img = (img + torch.randn(3, size, size, generator=g) * 0.05).clamp(0, 1)
        file_name = f"{image_id:06d}.png"
        Image.fromarray((img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).save(
            os.path.join(out_dir, "images", file_name))
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
    ann_path = os.path.join(out_dir, "instances.json")
    with open(ann_path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}, f)
    return ann_path


def _max_iou(box: torch.Tensor, boxes: torch.Tensor) -> float:
    import boxloss

    return float(boxloss.box_iou(box, boxes).max())


# ------------------------------------------------------------------------------------------ loader
def load_coco_json(path: str) -> dict:
    """Read and check a COCO instances file; a clear ``DataError`` for anything malformed."""
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path} must hold a JSON object with 'images', 'annotations' and "
                        f"'categories'; got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {path} has no '{key}' list (is it a COCO instances file?)")
    for what, items, fields in (("image", data["images"], ("id", "file_name")),
                                ("annotation", data["annotations"], ("image_id", "category_id", "bbox")),
                                ("category", data["categories"], ("id", "name"))):
        for k, item in enumerate(items):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise DataError(f"annotation file {path}: {what} #{k} lacks {', '.join(missing)}")
    for k, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(f"annotation file {path}: annotation #{k} has bbox {bbox!r}, expected [x, y, w, h]")
    return data


def usable_box(bbox) -> bool:
    """A COCO [x, y, w, h] box that is trained on and evaluated against: at least 1 px wide and high. Zero-area
    boxes are dropped from both (torchvision's references drop degenerate boxes too): kept in the evaluation
    ground truth, they are objects no detector can match (a perfect detector scored AP 0.944)."""
    return bbox[2] >= 1 and bbox[3] >= 1


class CocoDetectionData(torch.utils.data.Dataset):
    """Images and targets (``boxes`` xyxy float32, ``labels`` 1..K int64) from a COCO instances dict.

    Crowd annotations and boxes under 1 px wide or high (see :func:`usable_box`) are left out.
    ``category_ids`` fixes the label order (label k = ``category_ids[k - 1]``).
    """

    def __init__(self, data: dict, image_dir: str, image_ids: Sequence[int], category_ids: Sequence[int]) -> None:
        self.image_dir = image_dir
        self.images = {im["id"]: im for im in data["images"]}
        missing = [i for i in image_ids if i not in self.images]
        if missing:
            raise DataError(f"image ids {missing[:5]} are not in the annotation file")
        self.image_ids = list(image_ids)
        self.label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
        self.anns: Dict[int, list] = {i: [] for i in self.image_ids}
        for ann in data["annotations"]:
            if (ann["image_id"] in self.anns and ann["category_id"] in self.label_of and not ann.get("iscrowd", 0)
                    and usable_box(ann["bbox"])):
                x, y, w, h = ann["bbox"]
                self.anns[ann["image_id"]].append(([x, y, x + w, y + h], self.label_of[ann["category_id"]]))

    def path_of(self, image_id: int) -> str:
        return os.path.join(self.image_dir, self.images[image_id]["file_name"])

    def check_images(self, what: str = "images") -> None:
        """Open the header of every image now (no decoding): a missing or unreadable file stops the run before
        any training, with every bad file named, instead of when the loader reaches it."""
        from PIL import Image, UnidentifiedImageError

        bad = []
        for image_id in self.image_ids:
            path = self.path_of(image_id)
            try:
                with Image.open(path) as im:
                    im.verify()
            except FileNotFoundError:
                bad.append(f"{path} (id {image_id}) does not exist")
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                bad.append(f"{path} (id {image_id}) cannot be read: {e}")
        if bad:
            more = f" … and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DataError(f"{len(bad)} of the {len(self.image_ids)} {what} cannot be used: "
                            + "; ".join(bad[:5]) + more)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        from PIL import Image, UnidentifiedImageError

        image_id = self.image_ids[index]
        path = self.path_of(image_id)
        try:
            with Image.open(path) as im:
                image = torch.from_numpy(__import__("numpy").asarray(im.convert("RGB"), dtype="uint8").copy())
        except FileNotFoundError:
            raise DataError(f"image {path} (id {image_id}) does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"image {path} (id {image_id}) cannot be read: {e}") from None
        anns = self.anns[image_id]
        boxes = torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a[1] for a in anns], dtype=torch.int64)
        return image.permute(2, 0, 1).float() / 255, {"boxes": boxes, "labels": labels, "image_id": image_id}


def select_categories(data: dict, names: Optional[Sequence[str]]) -> List[int]:
    """Category ids to use, in file order; ``names`` restricts them (unknown names → ``DataError``)."""
    by_name = {c["name"]: c["id"] for c in data["categories"]}
    if not names:
        return [c["id"] for c in data["categories"]]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DataError(f"--categories: {unknown} are not in the annotation file; it has "
                        f"{', '.join(sorted(by_name)[:20])}{' …' if len(by_name) > 20 else ''}")
    return [by_name[n] for n in names]


def image_ids(data: dict, seed: int, max_images: Optional[int] = None,
              category_ids: Optional[Sequence[int]] = None) -> List[int]:
    """The image ids to use, in a seeded order: those holding one of ``category_ids`` (when given), at most
    ``max_images`` of them."""
    ids = sorted(im["id"] for im in data["images"])
    if category_ids is not None:
        keep = set(category_ids)
        with_objects = {a["image_id"] for a in data["annotations"] if a["category_id"] in keep}
        ids = [i for i in ids if i in with_objects]
    g = torch.Generator().manual_seed(seed)
    ids = [ids[k] for k in torch.randperm(len(ids), generator=g).tolist()]
    return ids[:max_images] if max_images else ids


def split_image_ids(data: dict, eval_fraction: float, seed: int, max_images: Optional[int] = None,
                    category_ids: Optional[Sequence[int]] = None):
    """Deterministic train/eval split of :func:`image_ids`."""
    ids = image_ids(data, seed, max_images, category_ids)
    n_eval = max(1, int(round(len(ids) * eval_fraction)))
    if len(ids) < 2:
        raise DataError(f"need at least 2 images to split into train and eval; found {len(ids)}")
    return sorted(ids[n_eval:]), sorted(ids[:n_eval])


def subset_coco(data: dict, image_ids: Sequence[int], category_ids: Sequence[int]) -> dict:
    """The instances dict restricted to ``image_ids``, ``category_ids`` and usable boxes (the ground truth for
    COCOeval: the same boxes the model trains on, see :func:`usable_box`)."""
    ids, cats = set(image_ids), set(category_ids)
    anns = []
    for k, a in enumerate(data["annotations"]):
        if a["image_id"] in ids and a["category_id"] in cats and usable_box(a["bbox"]):
            a = dict(a)
            a.setdefault("id", k + 1)
            a.setdefault("iscrowd", 0)
            a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
            anns.append(a)
    return {"images": [im for im in data["images"] if im["id"] in ids], "annotations": anns,
            "categories": [c for c in data["categories"] if c["id"] in cats]}


# ------------------------------------------------------------------------------------------ augmentation
def dihedral_boxes(boxes: torch.Tensor, width: int, height: int, k: int) -> torch.Tensor:
    """``boxes`` (xyxy, in an image ``width`` × ``height``) after :func:`dihedral_image` with the same ``k``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    if k >= 4:  # mirror left-right first
        x1, x2 = width - x2, width - x1
    for _ in range(k % 4):  # a quarter turn counter-clockwise: (x, y) → (y, width − x); the sides swap
        x1, y1, x2, y2 = y1, width - x2, y2, width - x1
        width, height = height, width
    return torch.stack((x1, y1, x2, y2), -1)


def dihedral_image(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on a ``(C, H, W)`` image: ``k % 4`` quarter turns counter-clockwise,
    after a left-right mirror when ``k >= 4``."""
    if k >= 4:
        image = image.flip(-1)
    return torch.rot90(image, k % 4, dims=(-2, -1))


def standardize_image(image: torch.Tensor, mean: float = 0.5, std: float = 0.25) -> torch.Tensor:
    """Each channel of a ``(C, H, W)`` image shifted and scaled to the given mean and standard deviation: removes
    the differences of exposure and white balance between flights and sites."""
    m = image.mean(dim=(-2, -1), keepdim=True)
    s = image.std(dim=(-2, -1), keepdim=True).clamp_min(1e-3)
    return (image - m) / s * std + mean


class Standardized(torch.utils.data.Dataset):
    """A detection data set whose images are standardized per image and channel (:func:`standardize_image`)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.image_ids = getattr(dataset, "image_ids", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return standardize_image(image), target

    def check_images(self, what: str = "images") -> None:
        self.dataset.check_images(what)


class DihedralAugment(torch.utils.data.Dataset):
    """A detection data set seen through a random flip and quarter turn (one of 8, uniformly) per access: the
    augmentation for overhead imagery, where up has no meaning; with ``colour`` > 0 also a random brightness,
    contrast and saturation change of up to that fraction (other flights, other light). Draws from torch's
    global generator, so a seeded run is repeatable (with ``num_workers=0``)."""

    def __init__(self, dataset: torch.utils.data.Dataset, colour: float = 0.0) -> None:
        self.dataset = dataset
        self.colour = colour

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        k = int(torch.randint(0, 8, (1,)))
        height, width = image.shape[-2:]
        target = dict(target, boxes=dihedral_boxes(target["boxes"], width, height, k))
        image = dihedral_image(image, k)
        if self.colour > 0:
            brightness, contrast, saturation = (1 + (torch.rand(3) * 2 - 1) * self.colour).tolist()
            grey = image.mean(0, keepdim=True)
            image = grey + (image - grey) * saturation                       # saturation
            image = image.mean() + (image - image.mean()) * contrast          # contrast
            image = image * brightness                                        # brightness
        return image, target
