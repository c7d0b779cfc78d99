"""The examples run end to end on tiny settings and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


def test_quickstart_textbook_iou_stays_put_and_boxloss_losses_converge():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "60", "--boxes", "16"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert float(rows["iou_textbook"][-1]) == 0.0  # final mean IoU: never moved
    for name in ("iou", "log_iou", "giou", "diou", "ciou"):
        first, last = float(rows[name][1]), float(rows[name][-2])
        assert last < first, name
        assert float(rows[name][-1]) > 0.0, name  # boxes reached overlap


def test_segmentation_example_tiny_run(tmp_path):
    import segmentation

    payload = segmentation.main(["--losses", "ce,ce+soft_iou,lovasz", "--epochs", "1", "--train-images", "8",
                                 "--test-images", "4", "--size", "24", "--batch-size", "4", "--device", "cpu",
                                 "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["losses"]) == {"ce", "ce+soft_iou", "lovasz"}
    for r in results["losses"].values():
        assert 0.0 <= r["mIoU"] <= 1.0 and len(r["loss_curve"]) == 2
    assert (tmp_path / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    assert payload["config"]["epochs"] == 1


def test_segmentation_dataset_is_deterministic_and_labelled():
    import segmentation

    a_img, a_lab = segmentation.make_dataset(4, 32, seed=3)
    b_img, b_lab = segmentation.make_dataset(4, 32, seed=3)
    assert (a_img == b_img).all() and (a_lab == b_lab).all()
    assert a_img.shape == (4, 3, 32, 32) and a_img.min() >= 0 and a_img.max() <= 1
    assert set(a_lab.unique().tolist()) <= {0, 1, 2, 3} and (a_lab > 0).any()


def test_segmentation_rejects_unknown_loss(capsys):
    import segmentation

    with pytest.raises(SystemExit):
        segmentation.main(["--losses", "dice"])
    assert "unknown ['dice']" in capsys.readouterr().err


def test_custom_detector_switches_box_loss_by_one_argument():
    import custom_detector as cd

    results = cd.main(["--box-loss", "diou", "--epochs", "1", "--train-images", "8", "--test-images", "4",
                       "--batch-size", "4"])
    assert set(results) == {"diou"}
    r = results["diou"]
    assert 0.0 <= r["mean_iou"] <= 1.0 and all(r[k] >= 0 for k in ("loss_obj", "loss_cls", "loss_box"))
    with pytest.raises(SystemExit):
        cd.main(["--box-loss", "l2"])


def test_custom_detector_losses_agree_on_what_a_perfect_box_is():
    import custom_detector as cd
    import torch

    anchors = cd.make_anchors(32)
    boxes = torch.tensor([[4.0, 4, 20, 22]])
    positive, idx, _ = cd.assign(anchors, boxes)
    assert positive.any()
    # deltas that decode exactly onto the target: both box losses are ~0
    from boxloss.detection import encode_boxes
    deltas = torch.zeros(1, len(anchors), 4)
    deltas[0, positive] = encode_boxes(boxes[idx[positive]], anchors[positive])
    outputs = (torch.zeros(1, len(anchors)), torch.zeros(1, len(anchors), 2), deltas)
    for name in ("smooth_l1", "giou"):
        _, _, box = cd.detection_loss(outputs, [(boxes, torch.tensor([0]))], anchors, name)
        assert box.item() < 1e-5, name
