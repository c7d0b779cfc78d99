"""examples/coco_subset.py --framework ultralytics: the YOLO-format export of the COCO splits reads back through
Ultralytics' own loader as the same boxes, the command line keeps the torchvision-only options away, and a tiny
real run (a YOLO from its YAML, one epoch, offline) writes the same results.json layout and plots as the
torchvision comparison."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
from PIL import Image  # noqa: E402

_PIL_OPEN = Image.open
pytest.importorskip("ultralytics")
# importing ultralytics replaces PIL's Image.open for the whole process (HEIF support that turns an unreadable image
# into "No module named 'pi_heif'"); the other test modules expect PIL's own, at collection and after each test here
Image.open = _PIL_OPEN
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import coco_data  # noqa: E402
import coco_subset  # noqa: E402
import ultralytics_yolo  # noqa: E402


@pytest.fixture(autouse=True)
def _pil_open_restored():
    # importing ultralytics replaces PIL's Image.open for the whole process; the other modules expect PIL's own
    yield
    Image.open = _PIL_OPEN


def _splits(tmp_path, n=10):
    ann = coco_data.write_synthetic_coco(str(tmp_path / "data"), n, size=96, seed=3)
    args = coco_subset.parse_args(["--framework", "ultralytics", "--images", str(tmp_path / "data" / "images"),
                                   "--ann", ann, "--eval-fraction", "0.3", "--out", str(tmp_path / "out")])
    return args, coco_subset.prepare_data(args)


def test_the_yolo_export_reads_back_through_ultralytics_as_the_same_boxes(tmp_path):
    from ultralytics.data.dataset import YOLODataset

    args, (train_set, eval_set, gt, category_ids, dataset) = _splits(tmp_path)
    yaml_path, ids_of = ultralytics_yolo.write_yolo_dataset(str(tmp_path / "yolo"), {"train": train_set,
                                                                                      "eval": eval_set},
                                                            dataset["categories"])
    assert sorted(ids_of["train"].values()) == sorted(train_set.image_ids)
    assert sorted(ids_of["eval"].values()) == sorted(eval_set.image_ids)
    assert "names:" in Path(yaml_path).read_text()
    data = {"names": dict(enumerate(dataset["categories"])), "channels": 3}
    loaded = YOLODataset(img_path=str(tmp_path / "yolo" / "images" / "eval"), data=data, augment=False,
                         imgsz=96, rect=False, batch_size=1, task="detect")
    by_id = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        by_id.setdefault(a["image_id"], []).append((category_ids.index(a["category_id"]), x, y, x + w, y + h))
    assert len(loaded.labels) == len(eval_set.image_ids)
    for label in loaded.labels:
        image_id = ids_of["eval"][label["im_file"]]
        h, w = label["shape"]
        cxcywh = torch.tensor(label["bboxes"], dtype=torch.float64).reshape(-1, 4) * torch.tensor([w, h, w, h])
        xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        want = sorted(by_id.get(image_id, []))
        got = sorted(zip(label["cls"].reshape(-1).astype(int).tolist(), *xyxy.T.tolist()))
        assert [g[0] for g in got] == [c[0] for c in want]
        torch.testing.assert_close(torch.tensor([g[1:] for g in got]), torch.tensor([c[1:] for c in want],
                                                                                     dtype=torch.float32),
                                   atol=1e-3 * max(w, h), rtol=0)


def test_command_line_for_ultralytics(capsys):
    args = coco_subset.parse_args(["--framework", "ultralytics", "--dataset", "neon-trees"])
    assert (args.model, args.epochs, args.image_size, args.lr) == ("yolo11n.yaml", 100, 320, None)
    assert args.losses == ["stock", "ciou", "giou", "siou", "wiou", "mpdiou", "eiou"]
    assert not args.standardize and args.augment == "none"
    assert coco_subset.parse_args([]).model == "small"  # torchvision keeps its defaults
    for argv, message in ((["--losses", "smooth_l1"], "unknown ['smooth_l1'] for --framework ultralytics"),
                          (["--augment", "dihedral"], "--augment: torchvision-only"),
                          (["--loss-weight", "2"], "--loss-weight: torchvision-only"),
                          (["--image-size", "100"], "must be a multiple of 32")):
        with pytest.raises(SystemExit):
            coco_subset.parse_args(["--framework", "ultralytics", *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        coco_subset.parse_args(["--losses", "stock"])  # Ultralytics' name, not torchvision's
    assert "unknown ['stock'] for --framework torchvision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        coco_subset.parse_args(["--model", "yolo11n.yaml"])
    assert "--model for torchvision must be" in capsys.readouterr().err


def test_tiny_ultralytics_run_writes_results_and_plots(tmp_path):
    out = tmp_path / "out"
    payload = coco_subset.main(["--framework", "ultralytics", "--synthetic-images", "24", "--epochs", "1",
                                "--image-size", "96", "--batch-size", "8", "--losses", "stock,siou",
                                "--device", "cpu", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(payload)) and results["complete"]
    assert results["config"]["framework"] == "ultralytics" and results["config"]["ultralytics"]
    assert set(results["losses"]) == {"stock", "siou"}
    for r in results["losses"].values():
        assert len(r["stats"]) == 12 and r["AP"] == r["stats"][0] and r["train_seconds"] > 0
        assert r["final_loss"] > 0
    for png in ("ap.png", "loss_curves.png", "predictions.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # each run trained from its own Ultralytics run folder, and the swapped one with the boxloss term
    assert (out / "yolo" / "stock_seed0" / "weights" / "last.pt").exists()
    assert (out / "yolo" / "siou_seed0" / "results.csv").exists()


def test_the_swapped_run_used_the_boxloss_term(tmp_path, monkeypatch):
    seen = []
    real = ultralytics_yolo.train_one

    def spy(loss_name, seed, args, data_yaml, device):
        model, curve, seconds = real(loss_name, seed, args, data_yaml, device)
        seen.append(loss_name)
        return model, curve, seconds

    from boxloss.integrations import ultralytics as bu

    calls = []
    original = bu.BoxTerm.forward

    def counting(self, *a, **k):
        calls.append(self.spec.loss)
        return original(self, *a, **k)

    monkeypatch.setattr(bu.BoxTerm, "forward", counting)
    monkeypatch.setattr(ultralytics_yolo, "train_one", spy)
    coco_subset.main(["--framework", "ultralytics", "--synthetic-images", "16", "--epochs", "1", "--image-size",
                      "64", "--batch-size", "8", "--losses", "stock,giou", "--out", str(tmp_path / "out")])
    assert seen == ["stock", "giou"] and calls and set(calls) == {"giou"}


@pytest.mark.skipif(importlib.util.find_spec("deepforest") is None,
                    reason="the deepforest wheel is not installed (pip install --no-deps deepforest==2.1.0)")
def test_one_epoch_on_the_real_tree_tiles(tmp_path):
    out = tmp_path / "run"
    payload = coco_subset.main(["--framework", "ultralytics", "--dataset", "neon-trees", "--losses", "stock,ciou",
                                "--epochs", "1", "--max-images", "4", "--image-size", "128", "--out", str(out)])
    assert payload["complete"] and payload["dataset"]["train_images"] == 4
    assert (out / "predictions.png").read_bytes()[:4] == b"\x89PNG"
