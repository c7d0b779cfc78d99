"""examples/coco_subset.py and examples/coco_data.py: the data generator, the loader's errors, a tiny run."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import coco_data  # noqa: E402
import coco_subset  # noqa: E402


def test_synthetic_set_is_valid_coco_and_deterministic(tmp_path):
    a = coco_data.write_synthetic_coco(str(tmp_path / "a"), 6, size=64, seed=3)
    b = coco_data.write_synthetic_coco(str(tmp_path / "b"), 6, size=64, seed=3)
    da, db = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    assert da == db
    assert [c["name"] for c in da["categories"]] == list(coco_data.CLASSES)
    assert len(da["images"]) == 6 and len(da["annotations"]) >= 6
    for ann in da["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
    # several sizes and aspect ratios, more than one class
    sides = torch.tensor([a["bbox"][2:] for a in da["annotations"]], dtype=torch.float32)
    assert (sides[:, 0] / sides[:, 1]).std() > 0.1 and len({a["category_id"] for a in da["annotations"]}) > 1
    assert (Path(tmp_path / "a" / "images" / "000001.png").read_bytes()
            == Path(tmp_path / "b" / "images" / "000001.png").read_bytes())


def test_loader_reads_images_and_targets(tmp_path):
    ann = coco_data.write_synthetic_coco(str(tmp_path), 4, size=48, seed=1)
    data = coco_data.load_coco_json(ann)
    cats = coco_data.select_categories(data, None)
    ds = coco_data.CocoDetectionData(data, str(tmp_path / "images"), [1, 2, 3, 4], cats)
    image, target = ds[0]
    assert image.shape == (3, 48, 48) and 0 <= image.min() and image.max() <= 1
    n = sum(1 for a in data["annotations"] if a["image_id"] == 1)
    assert target["boxes"].shape == (n, 4) and target["labels"].min() >= 1
    x, y, w, h = next(a["bbox"] for a in data["annotations"] if a["image_id"] == 1)
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"images": [], "annotations": []}', "has no 'categories' list"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "image #0 lacks file_name"),
    ('{"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2]}], "categories": []}',
     "annotation #0 has bbox"),
])
def test_malformed_annotation_file_gives_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(coco_data.DataError, match=message):
        coco_data.load_coco_json(str(path))


def test_missing_files_and_unreadable_images(tmp_path):
    with pytest.raises(coco_data.DataError, match="annotation file not found"):
        coco_data.load_coco_json(str(tmp_path / "nope.json"))
    ann = coco_data.write_synthetic_coco(str(tmp_path), 3, size=32, seed=2)
    data = coco_data.load_coco_json(ann)
    (tmp_path / "images" / "000002.png").write_bytes(b"not a png")
    (tmp_path / "images" / "000003.png").unlink()
    ds = coco_data.CocoDetectionData(data, str(tmp_path / "images"), [1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(coco_data.DataError, match="000002.png .* cannot be read"):
        ds[1]
    with pytest.raises(coco_data.DataError, match="000003.png .* does not exist"):
        ds[2]
    with pytest.raises(coco_data.DataError, match="are not in the annotation file"):
        coco_data.select_categories(data, ["zebra"])


def test_cli_errors_exit_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        coco_subset.parse_args(["--losses", "giou,focal"])
    assert "unknown ['focal']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="annotation file not found"):
        coco_subset.main(["--images", str(tmp_path), "--ann", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--images: no directory"):
        coco_subset.main(["--images", str(tmp_path / "x"), "--ann", "a.json", "--out", str(tmp_path)])


def test_split_is_deterministic_and_disjoint(tmp_path):
    ann = coco_data.write_synthetic_coco(str(tmp_path), 10, size=32, seed=4)
    data = coco_data.load_coco_json(ann)
    a = coco_data.split_image_ids(data, 0.3, seed=0)
    assert a == coco_data.split_image_ids(data, 0.3, seed=0)
    assert not set(a[0]) & set(a[1]) and len(a[1]) == 3 and len(a[0]) == 7


def test_tiny_run_on_a_user_coco_set_writes_results_and_plots(tmp_path):
    ann = coco_data.write_synthetic_coco(str(tmp_path / "data"), 8, size=64, seed=5)
    out = tmp_path / "out"
    payload = coco_subset.main(["--images", str(tmp_path / "data" / "images"), "--ann", ann, "--losses",
                                "smooth_l1,giou", "--epochs", "1", "--image-size", "64", "--batch-size", "4",
                                "--eval-fraction", "0.25", "--device", "cpu", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(payload))
    assert results["dataset"]["train_images"] == 6 and results["dataset"]["eval_images"] == 2
    assert set(results["losses"]) == {"smooth_l1", "giou"}
    for r in results["losses"].values():
        assert len(r["stats"]) == 12 and r["AP"] == r["stats"][0] and r["AP50"] == r["stats"][1]
        assert r["train_seconds"] > 0 and r["final_loss"] > 0
    assert results["config"]["loss_weights"]["roi_heads"] == 10.0
    for png in ("ap.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))
