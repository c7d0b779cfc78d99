"""boxloss.integrations.ultralytics against the real package (YOLO built from YAML, real trainers, one tiny epoch
on generated images, offline): every task trains with the swapped loss, the criterion of the trainer's model
and EMA carry it, ``ciou`` equals Ultralytics' own term, other names equal boxloss on the same boxes and
weights, OBB angles convert as Ultralytics draws them, checkpoints load without boxloss, the DDP state rebuilds
the swap, and bad input is refused before anything changes."""

import math
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
from PIL import Image  # noqa: E402

_PIL_OPEN = Image.open
ultralytics = pytest.importorskip("ultralytics")
# importing ultralytics replaces PIL's Image.open for the whole process (HEIF support that turns an unreadable image
# into "No module named 'pi_heif'"): the other test modules expect PIL's own; these tests read PNGs only
Image.open = _PIL_OPEN

from ultralytics import YOLO  # noqa: E402

import boxloss  # noqa: E402
from boxloss.integrations import ultralytics as bu  # noqa: E402

SIZE = 160
TRAIN = dict(epochs=1, imgsz=SIZE, device="cpu", plots=False, workers=0, batch=4, verbose=False, exist_ok=True,
             fliplr=0.0, mosaic=0.0, val=True, amp=False)


def _write_data(root, task):
    """8 train and 8 val images of coloured rectangles (rotated ones for OBB) and their labels for ``task``."""
    import numpy as np
    from PIL import Image, ImageDraw

    for split, seed in (("train", 0), ("val", 1)):
        os.makedirs(root / "images" / split, exist_ok=True)
        os.makedirs(root / "labels" / split, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(8):
            img = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 60 + 80).astype("uint8"))
            draw = ImageDraw.Draw(img)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                w, h = (int(v) for v in rng.integers(24, 60, 2))
                cx, cy = (float(v) for v in rng.integers(35, SIZE - 35, 2))
                c = int(rng.integers(0, 2))
                a = float(rng.uniform(-0.6, 0.6)) if task == "obb" else 0.0
                ca, sa = math.cos(a), math.sin(a)
                corners = [(cx + sx * w / 2 * ca - sy * h / 2 * sa, cy + sx * w / 2 * sa + sy * h / 2 * ca)
                           for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
                draw.polygon(corners, fill=(220, 40, 40) if c == 0 else (40, 40, 220))
                norm = " ".join(f"{x / SIZE:.5f} {y / SIZE:.5f}" for x, y in corners)
                box = f"{cx / SIZE:.5f} {cy / SIZE:.5f} {w / SIZE:.5f} {h / SIZE:.5f}"
                if task in ("obb", "segment"):
                    lines.append(f"{c} {norm}")
                elif task == "pose":
                    kpts = " ".join(f"{x / SIZE:.5f} {y / SIZE:.5f} 2" for x, y in corners[:3])
                    lines.append(f"{c} {box} {kpts}")
                else:
                    lines.append(f"{c} {box}")
            img.save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines))
    extra = "kpt_shape: [3, 3]\n" if task == "pose" else ""
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\n{extra}"
                                    "names:\n  0: red\n  1: blue\n")
    return str(root / "data.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return {task: _write_data(tmp_path_factory.mktemp(task), task) for task in ("detect", "segment", "pose", "obb")}


def _parts(criterion):
    return [criterion.one2many, criterion.one2one] if hasattr(criterion, "one2one") else [criterion]


@pytest.mark.parametrize("yaml, task, loss", [("yolo11n.yaml", "detect", "siou"), ("yolo26n.yaml", "detect", "diou"),
                                              ("yolo11n-seg.yaml", "segment", "eiou"),
                                              ("yolo11n-pose.yaml", "pose", "giou"),
                                              ("yolo11n-obb.yaml", "obb", "kld"), ("yolo26n-obb.yaml", "obb", "giou")])
def test_every_task_trains_with_the_swapped_loss(data, tmp_path, yaml, task, loss):
    model = bu.replace_box_loss(YOLO(yaml), loss)
    model.train(data=data[task], project=str(tmp_path), name="run", **TRAIN)
    trainer = model.trainer
    expected = bu.BoxLossRotatedBboxLoss if task == "obb" else bu.BoxLossBboxLoss
    for m in (trainer.model, trainer.ema.ema):  # training and validation losses
        for part in _parts(m.criterion):
            assert type(part.bbox_loss) is expected and part.bbox_loss.spec.loss == loss
    assert all(math.isfinite(float(v)) for v in trainer.tloss.values()) if isinstance(trainer.tloss, dict) else \
        torch.isfinite(trainer.tloss).all()
    assert (tmp_path / "run" / "weights" / "last.pt").exists()


CHILD = """
import os, sys
sys.modules["boxloss"] = None  # importing boxloss fails in this process
os.environ["YOLO_OFFLINE"] = "1"
from ultralytics import YOLO
model = YOLO(sys.argv[1])
results = model.predict(sys.argv[2], imgsz=160, device="cpu", verbose=False)
print("predicted", len(results), type(model.model).__name__)
"""


def test_checkpoints_load_and_predict_without_boxloss(data, tmp_path):
    model = bu.replace_box_loss(YOLO("yolo11n.yaml"), "wiou")
    model.train(data=data["detect"], project=str(tmp_path), name="run", **TRAIN)
    image = os.path.join(os.path.dirname(data["detect"]), "images", "val", "0.png")
    for name in ("last.pt", "best.pt"):
        result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "run" / "weights" / name), image],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split()[-3:] == ["predicted", "1", "DetectionModel"]


def _batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(6, 2, generator=g) * 0.5 + 0.25, torch.rand(6, 2, generator=g) * 0.3 + 0.1], 1)
    return {"img": torch.rand(n, 3, SIZE, SIZE, generator=g), "batch_idx": torch.tensor([0, 0, 0, 1, 1, 1.0]),
            "cls": torch.tensor([[0], [1], [0], [1], [1], [0.0]]), "bboxes": boxes}


def test_ciou_equals_ultralytics_own_term():
    # Ultralytics' CIoU keeps α's gradient; boxloss' holds α constant (torchvision and the CIoU paper do): the
    # values agree, the gradients differ by the α term only
    torch.manual_seed(0)
    net = YOLO("yolo11n.yaml").model
    net.args = ultralytics.cfg.get_cfg()
    net.train()
    batch = _batch()
    preds = net(batch["img"])
    stock = net.init_criterion()
    swapped = bu._swap_bbox_losses(net.init_criterion(), bu._Spec("ciou", (), False))
    total_stock, items_stock = stock(preds, batch)
    total_ours, items_ours = swapped(preds, batch)
    box = list(items_stock).index("box_loss") if isinstance(items_stock, dict) else 0
    stock_box = list(items_stock.values())[box] if isinstance(items_stock, dict) else items_stock[0]
    ours_box = list(items_ours.values())[box] if isinstance(items_ours, dict) else items_ours[0]
    assert float(stock_box) > 0
    torch.testing.assert_close(ours_box, stock_box, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total_ours, total_stock, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss, params", [("siou", {"theta": 3.0}), ("wiou", {}), ("nwd", {"constant": 20.0}),
                                          ("mpdiou", {}), ("giou", {})])
def test_the_box_term_is_boxloss_on_the_foreground_with_ultralytics_weights(loss, params):
    g = torch.Generator().manual_seed(1)
    b, a = 2, 50
    xy = torch.rand(b, a, 2, generator=g) * 100
    pred = torch.cat([xy, xy + 10 + torch.rand(b, a, 2, generator=g) * 30], -1)
    target = pred + torch.randn(b, a, 4, generator=g) * 3
    scores = torch.rand(b, a, 2, generator=g)
    fg = torch.rand(b, a, generator=g) > 0.4
    total = scores.sum()
    module = bu.BoxLossBboxLoss(16, bu._Spec(loss, tuple(sorted(params.items())), False))
    anchors = xy[0] + 5
    dist = torch.randn(b, a, 64, generator=g)
    imgsz = torch.tensor([160.0, 200.0])
    got, dfl = module(dist, pred, anchors, target, scores, total, fg, imgsz, torch.ones(a, 1))
    extra = {"image_size": (200.0, 160.0)} if loss == "mpdiou" else {}
    per_box = getattr(boxloss, f"{loss}_loss")(pred[fg], target[fg], reduction="none", **params, **extra)
    torch.testing.assert_close(got, (per_box * scores[fg].sum(-1)).sum() / total)
    stock_iou, stock_dfl = ultralytics.utils.loss.BboxLoss(16)(dist, pred, anchors, target, scores, total, fg, imgsz,
                                                               torch.ones(a, 1))
    torch.testing.assert_close(dfl, stock_dfl)  # Ultralytics' own DFL term


def test_obb_angles_convert_as_ultralytics_draws_its_boxes():
    from shapely.geometry import Polygon
    from ultralytics.utils.ops import xywhr2xyxyxyxy

    g = torch.Generator().manual_seed(2)
    a = torch.cat([torch.rand(40, 2, generator=g) * 20, torch.rand(40, 2, generator=g) * 8 + 2,
                   (torch.rand(40, 1, generator=g) * 2 - 1) * math.pi], 1).double()
    b = a + torch.cat([torch.randn(40, 4, generator=g) * 1.5, torch.randn(40, 1, generator=g) * 0.3], 1).double()
    spec = bu._Spec("iou", (("zero_overlap", "none"),), True)
    got = 1 - spec.per_box(a, b, torch.tensor([640.0, 640.0])).double()
    pa, pb = xywhr2xyxyxyxy(a), xywhr2xyxyxyxy(b)
    want = []
    for x, y in zip(pa, pb):
        px, py = Polygon(x.tolist()), Polygon(y.tolist())
        inter = px.intersection(py).area
        want.append(inter / (px.area + py.area - inter))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_the_ddp_state_rebuilds_the_swap(data, tmp_path):
    # what generate_ddp_file writes (trainer class, args, model, callbacks, through cloudpickle) and what its
    # script does with it in each new process: a fresh trainer from that state trains with the swapped loss
    cloudpickle = pytest.importorskip("cloudpickle")
    from ultralytics.utils import DEFAULT_CFG_DICT

    model = bu.replace_box_loss(YOLO("yolo11n.yaml"), "diou")
    model.train(data=data["detect"], project=str(tmp_path), name="first", **TRAIN)
    trainer = model.trainer
    state = cloudpickle.loads(cloudpickle.dumps({"trainer": type(trainer), "args": {**vars(trainer.args),
                                                                                   "name": "rebuilt"},
                                                 "model": trainer.model, "callbacks": trainer.callbacks}))
    cfg = DEFAULT_CFG_DICT.copy()
    cfg.update(save_dir="")
    rebuilt = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
    rebuilt.model = state["model"]
    rebuilt.train()
    for part in _parts(rebuilt.model.criterion):
        assert type(part.bbox_loss) is bu.BoxLossBboxLoss and part.bbox_loss.spec.loss == "diou"


def test_bad_input_is_refused_before_anything_changes(monkeypatch):
    model = YOLO("yolo11n.yaml")
    before = {k: list(v) for k, v in model.callbacks.items()}
    with pytest.raises(ValueError, match="loss for the 'detect' task must be one of iou, log_iou, giou"):
        bu.replace_box_loss(model, "smooth_l1")
    with pytest.raises(ValueError, match="loss for the 'detect' task must be one of"):
        bu.replace_box_loss(model, "probiou")  # rotated only
    with pytest.raises(ValueError, match="loss for the 'obb' task must be one of iou, log_iou, giou, diou, probiou"):
        bu.replace_box_loss(YOLO("yolo11n-obb.yaml"), "siou")  # axis-aligned only
    with pytest.raises(ValueError, match="theta must be"):
        bu.replace_box_loss(model, "siou", theta=-1.0)
    with pytest.raises(TypeError, match="does not take these options"):
        bu.replace_box_loss(model, "giou", theta=2.0)
    with pytest.raises(ValueError, match="task must be one of detect, segment, pose, obb"):
        bu.replace_box_loss(YOLO("yolo11n-cls.yaml"), "giou")
    with pytest.raises(TypeError, match="model must be an ultralytics YOLO object"):
        bu.replace_box_loss(torch.nn.Linear(2, 2), "giou")
    monkeypatch.setattr(ultralytics, "__version__", "8.3.100")  # before the tested range
    with pytest.raises(ValueError, match="ultralytics 8.3.100 is outside the versions"):
        bu.replace_box_loss(model, "giou")
    assert {k: list(v) for k, v in model.callbacks.items()} == before


def test_restore_removes_the_swap_and_a_second_call_replaces_the_first():
    model = bu.replace_box_loss(YOLO("yolo11n.yaml"), "siou")
    bu.replace_box_loss(model, "diou")
    ours = [c for c in model.callbacks["on_train_start"] if isinstance(c, bu._SwapAtTrainStart)]
    assert len(ours) == 1 and ours[0].spec.loss == "diou" and "diou" in repr(ours[0])
    assert bu.restore_box_loss(model) is model
    assert not any(isinstance(c, bu._SwapAtTrainStart) for c in model.callbacks["on_train_start"])


class _Interrupted(Exception):
    pass


def _interrupt_after_first_epoch(trainer):
    if trainer.epoch == 0:
        raise _Interrupted  # after epoch 0's checkpoint: last.pt can be resumed


def test_a_resumed_run_trains_with_the_swapped_loss_again(data, tmp_path):
    model = bu.replace_box_loss(YOLO("yolo26n.yaml"), "diou")
    model.add_callback("on_fit_epoch_end", _interrupt_after_first_epoch)
    with pytest.raises(_Interrupted):
        model.train(data=data["detect"], project=str(tmp_path), name="run", **{**TRAIN, "epochs": 3})
    resumed = bu.replace_box_loss(YOLO(str(tmp_path / "run" / "weights" / "last.pt")), "diou")
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 1
    for part in _parts(resumed.trainer.model.criterion):  # the criterion that resuming rebuilt, swapped again
        assert type(part.bbox_loss) is bu.BoxLossBboxLoss and part.bbox_loss.spec.loss == "diou"
