"""examples/neon_trees.py: VOC → COCO, tiling with clipping, the split by source image, the missing-wheel error,
and (where the deepforest wheel is installed, as in CI) the real NEON files."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import coco_data  # noqa: E402
import neon_trees  # noqa: E402

VOC = """<annotation><filename>{name}.tif</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJECT = "<object><name>Tree</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"


def _fixture(folder: Path, name: str, w: int, h: int, boxes) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(len(name))
    pixels = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(folder / f"{name}.png")
    (folder / f"{name}.xml").write_text(VOC.format(name=name, w=w, h=h, objects="".join(OBJECT.format(*b)
                                                                                        for b in boxes)))


def _fake_data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "deepforest_data"
    folder.mkdir()
    # train source 180 × 100, tiles of 64: x starts 0, 58, 116 (3 tiles), y starts 0, 36 (2 tiles)
    _fixture(folder, neon_trees.TRAIN_SOURCES[0], 180, 100, [(5, 5, 25, 25), (50, 10, 70, 30), (150, 70, 175, 95)])
    _fixture(folder, neon_trees.EVAL_SOURCES[0], 64, 64, [(1, 1, 10, 10), (20, 20, 40, 50)])
    _fixture(folder, neon_trees.EVAL_SOURCES[1], 70, 60, [(30, 10, 60, 40)])
    return folder


def test_tile_starts_cover_each_side_evenly():
    assert neon_trees.tile_starts(400, 400) == [0] and neon_trees.tile_starts(300, 400) == [0]
    assert neon_trees.tile_starts(2299, 400) == [0, 380, 760, 1139, 1519, 1899]
    for length in (401, 799, 800, 1035, 2472):
        s = neon_trees.tile_starts(length, 400)
        assert s[0] == 0 and s[-1] == length - 400 and all(b - a <= 400 for a, b in zip(s, s[1:]))


def test_boxes_cut_by_a_tile_edge_are_clipped_or_dropped_by_visible_area():
    # one tile column boundary at x = 100 (tiles of 100 on a 200-wide image)
    boxes = [[10, 10, 30, 30],      # inside the first tile
             [90, 10, 130, 30],     # 25% in the first tile, 75% in the second
             [80, 40, 120, 60],     # exactly half in each
             [99.5, 70, 150, 90]]   # 0.5 px in the first tile: under 1 px, dropped there
    tiles = {(x0, y0): kept for x0, y0, w, h, kept in neon_trees.tile_boxes(boxes, 200, 100, 100)}
    assert tiles[(0, 0)] == [[10, 10, 30, 30], [80, 40, 100, 60]]
    assert tiles[(100, 0)] == [[0, 10, 30, 30], [0, 40, 20, 60], [0, 70, 50, 90]]
    strict = {(x0, y0): kept for x0, y0, w, h, kept in neon_trees.tile_boxes(boxes, 200, 100, 100, min_visible=0.9)}
    assert strict[(0, 0)] == [[10, 10, 30, 30]] and strict[(100, 0)] == [[0, 70, 50, 90]]  # 99% inside


def test_prepare_writes_coco_split_by_source_and_reads_back(tmp_path):
    data_dir = _fake_data_dir(tmp_path)
    train, held_out, images = neon_trees.prepare_neon_trees(str(tmp_path / "out"), tile=64,
                                                            data_dir=str(data_dir))
    tr, ev = coco_data.load_coco_json(train), coco_data.load_coco_json(held_out)
    assert {im["source"] for im in tr["images"]} == set(neon_trees.TRAIN_SOURCES)
    assert {im["source"] for im in ev["images"]} == set(neon_trees.EVAL_SOURCES)
    assert len(tr["images"]) == 3 * 2 and len(ev["images"]) == 1 + 2 * 1  # 70 × 60 → tiles at x 0 and 6
    assert not {im["id"] for im in tr["images"]} & {im["id"] for im in ev["images"]}
    # every tile image exists, has the stated size, and every box lies inside its tile
    from PIL import Image

    for data in (tr, ev):
        sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        for im in data["images"]:
            with Image.open(Path(images) / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"])
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = sizes[a["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= W and y + h <= H and w >= 1 and h >= 1
    # the tree at (150, 70)-(175, 95) of the train image is in the last tile (x 116, y 36) at (34, 34)-(59, 59)
    last = next(im for im in tr["images"] if im["offset"] == [116, 36])
    assert [34, 34, 25, 25] in [a["bbox"] for a in tr["annotations"] if a["image_id"] == last["id"]]
    # read back through the loader any user's COCO data goes through
    cats = coco_data.select_categories(tr, None)
    ds = coco_data.CocoDetectionData(tr, images, [im["id"] for im in tr["images"]], cats)
    ds.check_images()
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["labels"].eq(1).all()
    # deterministic: a second run writes the same files
    again = neon_trees.prepare_neon_trees(str(tmp_path / "out2"), tile=64, data_dir=str(data_dir))
    assert json.loads(Path(again[0]).read_text()) == json.loads(Path(train).read_text())


def test_missing_wheel_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(coco_data.DataError, match=r"pip install --no-deps deepforest==2\.1\.0"):
        neon_trees.deepforest_data_dir()
    with pytest.raises(SystemExit, match="not installed"):
        neon_trees.main(["--out", "unused"])


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "bad.xml").write_text("<annotation><size></size></annotation>")
    with pytest.raises(coco_data.DataError, match="is not a Pascal VOC annotation file"):
        neon_trees.read_voc(str(tmp_path / "bad.xml"))
    with pytest.raises(coco_data.DataError, match="tile must be at least 32"):
        neon_trees.prepare_neon_trees(str(tmp_path), tile=8, data_dir=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("deepforest") is None,
                    reason="the deepforest wheel is not installed (pip install --no-deps deepforest==2.1.0)")
def test_the_real_neon_files(tmp_path):
    data_dir = neon_trees.deepforest_data_dir()
    counts = {s: len(neon_trees.read_voc(str(Path(data_dir) / f"{s}.xml"))[2])
              for s in neon_trees.TRAIN_SOURCES + neon_trees.EVAL_SOURCES}
    assert counts == {"2019_YELL_2_528000_4978000_image_crop2": 574, "2019_YELL_2_541000_4977000_image_crop": 279,
                      "OSBS_029": 61}
    train, held_out, _ = neon_trees.prepare_neon_trees(str(tmp_path))
    tr, ev = json.loads(Path(train).read_text()), json.loads(Path(held_out).read_text())
    assert len(tr["images"]) == 6 * 7 and len(ev["images"]) == 4 * 3 + 1
    # tiles overlap and cut boxes: a few more boxes than trees, never fewer than 90% of them
    assert 574 * 0.9 <= len(tr["annotations"]) <= 574 * 1.3
    assert (279 + 61) * 0.9 <= len(ev["annotations"]) <= (279 + 61) * 1.5


def test_coco_subset_without_the_wheel_stops_with_the_install_command(monkeypatch, tmp_path):
    import coco_subset

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install --no-deps deepforest==2\.1\.0"):
        coco_subset.main(["--dataset", "neon-trees", "--out", str(tmp_path)])


def test_neon_trees_defaults_and_conflicting_options(capsys):
    import coco_subset

    args = coco_subset.parse_args(["--dataset", "neon-trees"])
    assert args.augment == "overhead" and args.standardize and args.image_size == 256 and args.train_sizes
    assert coco_subset.parse_args([]).augment == "none"  # the synthetic set keeps its settings
    with pytest.raises(SystemExit):
        coco_subset.parse_args(["--dataset", "neon-trees", "--images", "x", "--ann", "y.json"])
    assert "brings its own data" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("deepforest") is None,
                    reason="the deepforest wheel is not installed (pip install --no-deps deepforest==2.1.0)")
def test_one_iteration_smoke_run_on_the_real_tiles(tmp_path):
    import coco_subset

    out = tmp_path / "run"
    payload = coco_subset.main(["--dataset", "neon-trees", "--losses", "smooth_l1,giou", "--epochs", "1",
                                "--max-images", "4", "--image-size", "128", "--train-sizes", "112",
                                "--out", str(out)])
    assert payload["complete"] and payload["dataset"]["train_images"] == 4 and payload["dataset"]["eval_images"] == 4
    assert set(payload["losses"]) == {"smooth_l1", "giou"}
    for png in ("ap.png", "loss_curves.png", "predictions.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["complete"] is True
