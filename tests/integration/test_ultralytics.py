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

from ultralytics import RTDETR, YOLO  # noqa: E402

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
            assert type(part.bbox_loss) is expected and part.bbox_loss.term.spec.loss == loss
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
    # Wise-IoU v3: the checkpoint also carries its running mean (a plain dict on the saved model)
    model = bu.replace_box_loss(YOLO("yolo11n.yaml"), "wiou", version=3)
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
    swapped = bu._swap_criterion(net.init_criterion(), {"main": bu._Spec("ciou", (), False).build()})
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
    module = bu.BoxLossBboxLoss(16, bu._Spec(loss, tuple(sorted(params.items())), False).build())
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
    got = 1 - spec.build()(a, b).double()
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
        assert type(part.bbox_loss) is bu.BoxLossBboxLoss and part.bbox_loss.term.spec.loss == "diou"


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
    with pytest.raises(TypeError, match="model must be an ultralytics YOLO or RTDETR object"):
        bu.replace_box_loss(torch.nn.Linear(2, 2), "giou")
    monkeypatch.setattr(ultralytics, "__version__", "8.3.100")  # before the tested range
    with pytest.raises(ValueError, match="ultralytics 8.3.100 is outside the versions"):
        bu.replace_box_loss(model, "giou")
    assert {k: list(v) for k, v in model.callbacks.items()} == before


def test_restore_removes_the_swap_and_a_second_call_replaces_the_first():
    model = bu.replace_box_loss(YOLO("yolo11n.yaml"), "siou")
    bu.replace_box_loss(model, "diou")
    ours = [c for c in model.callbacks["on_train_start"] if isinstance(c, bu._SwapAtTrainStart)]
    assert len(ours) == 1 and ours[0].specs["main"].loss == "diou" and "diou" in repr(ours[0])
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
        assert type(part.bbox_loss) is bu.BoxLossBboxLoss and part.bbox_loss.term.spec.loss == "diou"


def _wiou_mean(criterion):
    return {name: float(part.bbox_loss.term.wiou.iou_mean) for name, part in bu._branches(criterion).items()}


def test_wise_iou_v3_keeps_its_running_mean_in_the_criterion_and_resume_continues_it(data, tmp_path):
    model = bu.replace_box_loss(YOLO("yolo26n.yaml"), "wiou", version=3, momentum=0.05)
    model.add_callback("on_fit_epoch_end", _interrupt_after_first_epoch)
    with pytest.raises(_Interrupted):
        model.train(data=data["detect"], project=str(tmp_path), name="run", **{**TRAIN, "epochs": 3})
    trainer = model.trainer
    means = _wiou_mean(trainer.model.criterion)
    assert set(means) == {"one2many", "one2one"} and all(0 < m < 1 for m in means.values())  # moved from 1
    # the EMA's criterion (validation losses) shares the branch's term, and validation did not move the mean
    for name, part in bu._branches(trainer.ema.ema.criterion).items():
        assert part.bbox_loss.term is bu._branches(trainer.model.criterion)[name].bbox_loss.term
    last = torch.load(tmp_path / "run" / "weights" / "last.pt", map_location="cpu", weights_only=False)
    saved = getattr(last["ema"], bu.STATE_ATTRIBUTE)
    assert {k: v["iou_mean"] for k, v in saved.items()} == means
    assert all(type(v["iou_mean"]) is float for v in saved.values())  # plain data: loads without boxloss

    restored = {}

    def record(trainer):  # after the swap callback, before the first resumed step
        restored.update(_wiou_mean(trainer.model.criterion))

    resumed = bu.replace_box_loss(YOLO(str(tmp_path / "run" / "weights" / "last.pt")), "wiou", version=3,
                                  momentum=0.05)
    resumed.add_callback("on_train_start", record)
    resumed.train(resume=True)
    assert restored == pytest.approx(means, rel=1e-6)
    assert _wiou_mean(resumed.trainer.model.criterion) != pytest.approx(means)  # and training moved it on


def test_validation_losses_leave_the_wise_iou_mean_alone():
    term = bu._Spec("wiou", (("version", 3),), False).build()
    pred, target = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[2.0, 1, 12, 11]])
    with torch.no_grad():
        term(pred, target)
    assert float(term.wiou.iou_mean) == 1.0
    term(pred.requires_grad_(), target)
    assert float(term.wiou.iou_mean) < 1.0


def test_loss_modules_per_branch_dicts_and_weight():
    model = bu.replace_box_loss(YOLO("yolo11n.yaml"), boxloss.SIoULoss(theta=3.0), weight=0.5)
    (cb,) = [c for c in model.callbacks["on_train_start"] if isinstance(c, bu._SwapAtTrainStart)]
    spec = cb.specs["main"]
    assert spec.loss == "siou" and dict(spec.params)["theta"] == 3.0 and spec.weight == 0.5
    pred, target = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[2.0, 1, 12, 11]])
    torch.testing.assert_close(spec.build()(pred, target), 0.5 * boxloss.siou_loss(pred, target, theta=3.0,
                                                                                   reduction="none"))
    wiou = bu.replace_box_loss(YOLO("yolo11n.yaml"), boxloss.WIoULoss(version=3, alpha=1.7))
    (cb,) = [c for c in wiou.callbacks["on_train_start"] if isinstance(c, bu._SwapAtTrainStart)]
    assert cb.specs["main"].stateful and dict(cb.specs["main"].params)["alpha"] == 1.7

    e2e = bu.replace_box_loss(YOLO("yolo26n.yaml"), {"one2many": "siou", "one2one": boxloss.GIoULoss()})
    (cb,) = [c for c in e2e.callbacks["on_train_start"] if isinstance(c, bu._SwapAtTrainStart)]
    assert cb.specs["one2many"].loss == "siou" and cb.specs["one2one"].loss == "giou"
    with pytest.raises(ValueError, match="is for end-to-end heads"):
        bu.replace_box_loss(YOLO("yolo11n.yaml"), {"one2many": "siou", "one2one": "giou"})
    with pytest.raises(ValueError, match="exactly the keys one2many, one2one"):
        bu.replace_box_loss(YOLO("yolo26n.yaml"), {"one2many": "siou"})
    with pytest.raises(ValueError, match="loss for the 'obb' task must be one of"):
        bu.replace_box_loss(YOLO("yolo11n-obb.yaml"), boxloss.SIoULoss())
    with pytest.raises(TypeError, match="options go into the loss module"):
        bu.replace_box_loss(YOLO("yolo11n.yaml"), boxloss.SIoULoss(), theta=2.0)
    with pytest.raises(TypeError, match="loss name or a boxloss loss module"):
        bu.replace_box_loss(YOLO("yolo11n.yaml"), torch.nn.SmoothL1Loss())
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        bu.replace_box_loss(YOLO("yolo11n.yaml"), "giou", weight=-1.0)
    with pytest.raises(TypeError, match="weight must be a number"):
        bu.replace_box_loss(YOLO("yolo11n.yaml"), "giou", weight="2")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_term_runs_in_float32(dtype):
    # what amp=True does on CUDA, on the CPU: half-precision boxes in, the float32 loss of the float32 boxes out
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(64, 2, generator=g) * 100
    pred = torch.cat([xy, xy + 5 + torch.rand(64, 2, generator=g) * 40], 1).to(dtype)
    target = (pred.float() + torch.randn(64, 4, generator=g)).to(dtype)
    for loss in ("ciou", "siou", "wiou"):
        term = bu._Spec(loss, (), False).build()
        with torch.autocast("cpu", dtype=dtype):
            got = term(pred, target)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, getattr(boxloss, f"{loss}_loss")(pred.float(), target.float(),
                                                                         reduction="none"))


def test_rtdetr_trains_with_the_swapped_loss(data, tmp_path):
    model = bu.replace_box_loss(RTDETR("rtdetr-l.yaml"), "siou")
    model.train(data=data["detect"], project=str(tmp_path), name="run", **TRAIN)
    for m in (model.trainer.model, model.trainer.ema.ema):
        assert type(m.criterion) is bu.BoxLossRTDETRDetectionLoss and m.criterion.term.spec.loss == "siou"
    assert all(math.isfinite(float(v)) for v in model.trainer.tloss.values())
    assert (tmp_path / "run" / "weights" / "last.pt").exists()


def test_rtdetr_giou_equals_ultralytics_own_criterion():
    # every term of RT-DETR's criterion (last layer, auxiliary layers, encoder, denoising queries) on one batch
    torch.manual_seed(0)
    net = RTDETR("rtdetr-l.yaml").model
    net.args = ultralytics.cfg.get_cfg()
    net.nc = 80  # what the trainer sets from the data set (the YAML's default here)
    net.train()
    batch = _batch()
    results = {}
    for name in ("stock", "giou", "siou"):
        criterion = net.init_criterion()
        if name != "stock":
            criterion = bu._swap_criterion(criterion, {"main": bu._Spec(name, (), False).build()})
        net.criterion = criterion
        torch.manual_seed(1)  # the same denoising queries for every criterion
        results[name] = net.loss(batch)
    (total, items), (total_giou, items_giou), (total_siou, items_siou) = results.values()
    torch.testing.assert_close(total_giou, total, rtol=1e-5, atol=1e-5)
    for key in items:
        torch.testing.assert_close(items_giou[key], items[key], rtol=1e-5, atol=1e-5)
    assert float(items_siou["giou_loss"]) != pytest.approx(float(items["giou_loss"]), rel=1e-3)
    torch.testing.assert_close(items_siou["l1_loss"], items["l1_loss"])  # the L1 term is Ultralytics' own


def test_rtdetr_bad_input():
    with pytest.raises(ValueError, match="needs constant= in units of the image size"):
        bu.replace_box_loss(RTDETR("rtdetr-l.yaml"), "nwd")
    with pytest.raises(ValueError, match="loss for the 'detect' task must be one of"):
        bu.replace_box_loss(RTDETR("rtdetr-l.yaml"), "kld")
