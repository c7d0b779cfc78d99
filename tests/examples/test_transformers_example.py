"""examples/transformers_detr.py: a tiny run end to end (built-in data written and read back, training with
transformers' own loss and a swapped one, COCOeval, results.json and plots), and its errors."""

import json
import os
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("scipy")
pytest.importorskip("pycocotools")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import transformers_detr  # noqa: E402
from coco_data import DataError  # noqa: E402


def test_tiny_run_writes_results_and_plots(tmp_path):
    out = tmp_path / "run"
    payload = transformers_detr.main(["--losses", "stock,diou", "--steps", "3", "--train-images", "10",
                                      "--batch-size", "2", "--image-size", "64", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and saved == json.loads(json.dumps(payload))
    for name in ("stock", "diou"):
        stats = saved["losses"][name]["stats"]
        assert len(stats) == 12 and all(-1.0 <= s <= 1.0 for s in stats)
    assert (out / "ap.png").stat().st_size > 0 and (out / "loss_curves.png").stat().st_size > 0


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        transformers_detr.main(["--images", str(tmp_path / "missing"), "--ann", str(tmp_path / "a.json"),
                                "--out", str(tmp_path / "o")])
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match="annotation file not found"):
        transformers_detr.main(["--images", str(tmp_path / "imgs"), "--ann", str(tmp_path / "a.json"),
                                "--out", str(tmp_path / "o")])
