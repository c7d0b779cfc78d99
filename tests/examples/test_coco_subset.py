"""examples/coco_subset.py and examples/coco_data.py: the data generator, the loader's errors, a tiny run."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
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
    for png in ("ap.png", "loss_curves.png", "predictions.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------- review fixes
def test_a_missing_held_out_image_stops_the_run_before_training(tmp_path):
    ann = coco_data.write_synthetic_coco(str(tmp_path / "data"), 8, size=64, seed=6)
    data = coco_data.load_coco_json(ann)
    _, eval_ids = coco_data.split_image_ids(data, 0.25, seed=0)
    name = next(im["file_name"] for im in data["images"] if im["id"] == eval_ids[-1])
    (tmp_path / "data" / "images" / name).unlink()
    out = tmp_path / "out"
    started = []
    real_train = coco_subset.train_one
    coco_subset.train_one = lambda *a, **k: started.append(1) or real_train(*a, **k)
    try:
        with pytest.raises(SystemExit, match=f"1 of the 2 held-out images cannot be used: .*{name}.* does not exist"):
            coco_subset.main(["--images", str(tmp_path / "data" / "images"), "--ann", ann, "--losses", "giou",
                              "--epochs", "1", "--image-size", "64", "--eval-fraction", "0.25", "--out", str(out)])
    finally:
        coco_subset.train_one = real_train
    assert not started  # no training was wasted


def test_results_json_is_written_after_each_finished_loss(tmp_path, monkeypatch):
    ann = coco_data.write_synthetic_coco(str(tmp_path / "data"), 8, size=64, seed=7)
    out = tmp_path / "out"
    real_evaluate = coco_subset.evaluate
    calls = []

    def evaluate_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second loss dies in its evaluation
            raise coco_data.DataError("disk full")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(coco_subset, "evaluate", evaluate_then_fail)
    with pytest.raises(SystemExit, match="disk full .*results.json holds the losses finished before this"):
        coco_subset.main(["--images", str(tmp_path / "data" / "images"), "--ann", ann, "--losses", "smooth_l1,giou",
                          "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--eval-fraction", "0.25",
                          "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert list(results["losses"]) == ["smooth_l1"] and results["complete"] is False
    assert (out / "ap.png").exists()


def test_zero_area_annotations_are_dropped_from_training_and_evaluation(tmp_path):
    ann = coco_data.write_synthetic_coco(str(tmp_path), 3, size=48, seed=8)
    data = coco_data.load_coco_json(ann)
    data["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 12], "area": 0,
                                "iscrowd": 0})
    ds = coco_data.CocoDetectionData(data, str(tmp_path / "images"), [1, 2, 3], [1, 2, 3, 4])
    gt = coco_data.subset_coco(data, [1, 2, 3], [1, 2, 3, 4])
    assert all(a["id"] != 999 for a in gt["annotations"])
    n_train = sum(len(ds.anns[i]) for i in (1, 2, 3))
    assert n_train == len(gt["annotations"])  # the same boxes on both sides
    # a perfect detector scores AP 1 against that ground truth
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = coco.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                          "score": 1.0} for a in gt["annotations"]])
    ev = COCOeval(coco, dets, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def _checkpoint(model, path, **extra):
    torch.save({"model": model.state_dict(), **extra}, path)


def test_weights_of_another_head_size_load_what_fits_and_report_the_rest(tmp_path, capsys):
    other = coco_subset.small_fasterrcnn(num_classes=7, image_size=64)  # a predictor for 6 classes + background
    _checkpoint(other, tmp_path / "other.pt")
    model = coco_subset.build_model("small", 5, 64, str(tmp_path / "other.pt"))
    err = capsys.readouterr().err
    assert "--weights: loaded" in err and "roi_heads.box_predictor.cls_score.weight" in err
    torch.testing.assert_close(model.backbone[0].weight, other.backbone[0].weight)
    assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == 5


def test_weights_backbone_loads_a_backbone_checkpoint(tmp_path, capsys):
    donor = coco_subset.small_fasterrcnn(num_classes=3, image_size=64)
    torch.save(donor.backbone.state_dict(), tmp_path / "backbone.pt")
    model = coco_subset.build_model("small", 5, 64, None, str(tmp_path / "backbone.pt"))
    assert "--weights-backbone: loaded 36 of 36 tensors" in capsys.readouterr().err  # 6 convs, 6 BatchNorms (5 each)
    torch.testing.assert_close(model.backbone[3].weight, donor.backbone[3].weight)
    # prefixed keys ("backbone.…", as inside a detector checkpoint) are found too
    torch.save({"backbone." + k: v for k, v in donor.backbone.state_dict().items()}, tmp_path / "prefixed.pt")
    model = coco_subset.build_model("small", 5, 64, None, str(tmp_path / "prefixed.pt"))
    torch.testing.assert_close(model.backbone[3].weight, donor.backbone[3].weight)


def test_bad_weight_files_give_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    torch.save({"x": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(coco_data.DataError, match="is not a PyTorch checkpoint"):
        coco_subset.build_model("small", 3, 64, str(tmp_path / "junk.pt"))
    with pytest.raises(coco_data.DataError, match="no tensor of .* fits this model"):
        coco_subset.build_model("small", 3, 64, None, str(tmp_path / "unrelated.pt"))
    with pytest.raises(coco_data.DataError, match="no file at"):
        coco_subset.build_model("small", 3, 64, str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------------------------------------- augmentation
def test_flips_and_quarter_turns_move_boxes_with_the_pixels():
    image = torch.zeros(1, 30, 50)
    box = torch.tensor([[5.0, 3.0, 20.0, 10.0]])
    image[0, 3:10, 5:20] = 1
    for k in range(8):
        turned = coco_data.dihedral_image(image, k)
        x1, y1, x2, y2 = coco_data.dihedral_boxes(box, 50, 30, k)[0].tolist()
        ys, xs = torch.nonzero(turned[0], as_tuple=True)
        assert [x1, y1, x2, y2] == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert turned.shape[1:] == ((30, 50) if k % 2 == 0 else (50, 30))


def test_augmented_and_standardized_sets_keep_targets_valid(tmp_path):
    ann = coco_data.write_synthetic_coco(str(tmp_path), 4, size=48, seed=1)
    data = coco_data.load_coco_json(ann)
    base = coco_data.CocoDetectionData(data, str(tmp_path / "images"), [1, 2, 3, 4], [1, 2, 3, 4])
    std = coco_data.Standardized(base)
    image, _ = std[0]
    assert torch.allclose(image.mean(dim=(1, 2)), torch.full((3,), 0.5), atol=1e-5)
    assert torch.allclose(image.std(dim=(1, 2)), torch.full((3,), 0.25), atol=1e-4)
    torch.manual_seed(0)
    aug = coco_data.DihedralAugment(base, colour=0.3)
    for i in range(4):
        image, target = aug[i]
        b = target["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= image.shape[2]).all() and (b[:, [1, 3]] <= image.shape[1]).all()
        assert len(b) == len(base[i][1]["boxes"])
