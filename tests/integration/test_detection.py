"""boxloss.detection: replace_box_loss on torchvision detectors, the box coder, decoded_box_loss and DDP."""

import copy
import io
import os
import pickle

import pytest
import torch
import torch.multiprocessing as mp
from torchvision.models import detection as D
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

import boxloss
from boxloss.detection import (
    DEFAULT_LOSS_WEIGHTS,
    LOSS_NAMES,
    decode_boxes,
    decoded_box_loss,
    encode_boxes,
    replace_box_loss,
    restore_box_loss,
)

SIZE = 64
KW = dict(weights=None, weights_backbone=None, num_classes=3, min_size=SIZE, max_size=SIZE)


def _tiny_backbone():
    layers = []
    for i, o in ((3, 16), (16, 32), (32, 32)):
        layers += [torch.nn.Conv2d(i, o, 3, 2, 1), torch.nn.ReLU()]
    backbone = torch.nn.Sequential(*layers)
    backbone.out_channels = 32
    return backbone


def _tiny(name):
    """Each supported torchvision detector class on a 3-conv backbone: the same heads, a fraction of the cost."""
    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = lambda size: MultiScaleRoIAlign(["0"], size, 2)  # noqa: E731
    common = dict(min_size=SIZE, max_size=SIZE)
    if name == "fasterrcnn":
        return D.FasterRCNN(_tiny_backbone(), 3, rpn_anchor_generator=anchors, box_roi_pool=pool(7), **common)
    if name == "maskrcnn":
        return D.MaskRCNN(_tiny_backbone(), None, box_predictor=FastRCNNPredictor(1024, 3), rpn_anchor_generator=anchors, box_roi_pool=pool(7),
                          mask_roi_pool=pool(14), mask_head=MaskRCNNHeads(32, (32, 32), 1),
                          mask_predictor=MaskRCNNPredictor(32, 32, 3), **common)
    if name == "keypointrcnn":
        return D.KeypointRCNN(_tiny_backbone(), 2, rpn_anchor_generator=anchors, box_roi_pool=pool(7),
                              keypoint_roi_pool=pool(14), keypoint_head=KeypointRCNNHeads(32, (32, 32)),
                              keypoint_predictor=KeypointRCNNPredictor(32, 3), **common)
    if name == "retinanet":
        return D.RetinaNet(_tiny_backbone(), 3, anchor_generator=anchors, **common)
    return D.FCOS(_tiny_backbone(), 3, anchor_generator=AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),)),
                  **common)


BUILDERS = {name: (lambda name=name: _tiny(name)) for name in
            ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos")}
# the stock builders, as users call them (heavier: one smoke test each)
STOCK_BUILDERS = {
    "fasterrcnn": lambda: D.fasterrcnn_mobilenet_v3_large_fpn(**KW),
    "retinanet": lambda: D.retinanet_resnet50_fpn(**KW),
    "fcos": lambda: D.fcos_resnet50_fpn(**KW),
}
BOX_KEYS = {"fasterrcnn": ["loss_rpn_box_reg", "loss_box_reg"], "maskrcnn": ["loss_rpn_box_reg", "loss_box_reg"],
            "keypointrcnn": ["loss_rpn_box_reg", "loss_box_reg"], "retinanet": ["bbox_regression"],
            "fcos": ["bbox_regression"]}


def _regressors(name, model):
    """The parameters that predict box deltas, per head."""
    if name in ("retinanet", "fcos"):
        return [model.head.regression_head.bbox_reg.weight]
    return [model.rpn.head.bbox_pred.weight, model.roi_heads.box_predictor.bbox_pred.weight]


def _batch(name, empty_second=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = []
    for i in range(2):
        boxes = torch.tensor([[4.0, 6, 30, 40], [20, 18, 60, 56], [8, 30, 28, 60]])
        labels = torch.tensor([1, 2, 1]) if name != "keypointrcnn" else torch.tensor([1, 1, 1])
        if empty_second and i == 1:
            boxes, labels = boxes[:0], labels[:0]
        t = {"boxes": boxes, "labels": labels}
        if name == "maskrcnn":
            t["masks"] = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.uint8)
            for k, b in enumerate(boxes.long()):
                t["masks"][k, b[1]:b[3], b[0]:b[2]] = 1
        if name == "keypointrcnn":
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            t["keypoints"] = torch.stack([torch.cat([centre + d, torch.ones(len(boxes), 1)], 1)
                                          for d in (-3.0, 0.0, 3.0)], 1)
        targets.append(t)
    return images, targets


@pytest.fixture(scope="module")
def stock_models():
    torch.manual_seed(0)
    return {name: build() for name, build in BUILDERS.items()}


def _losses(model, images, targets, seed=1):
    model.train()
    torch.manual_seed(seed)  # the samplers draw at random: same draws for both models
    return model(images, targets)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_training_step_with_every_loss(stock_models, name, loss):
    stock = stock_models[name]
    model = replace_box_loss(copy.deepcopy(stock), loss)
    images, targets = _batch(name)
    ours = _losses(model, images, targets)
    ref = _losses(stock, images, targets)
    assert set(ours) == set(ref)  # torchvision's keys
    assert all(torch.isfinite(v) for v in ours.values())
    for key in BOX_KEYS[name]:
        if name == "fcos" and loss in ("iou", "giou"):
            # torchvision's FCOS already uses GIoU, weight 1; and at initialisation FCOS predicts near-point boxes
            # inside their targets, where 1 - IoU and 1 - GIoU coincide (test_fcos_uses_the_chosen_loss checks more)
            torch.testing.assert_close(ours[key], ref[key])
        else:
            assert not torch.isclose(ours[key], ref[key]), key
    for key in set(ours) - set(BOX_KEYS[name]):
        torch.testing.assert_close(ours[key], ref[key])  # the other terms are untouched
    sum(ours[k] for k in BOX_KEYS[name]).backward()
    for p in _regressors(name, model):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(STOCK_BUILDERS))
def test_stock_builders_train_with_boxloss(name):
    torch.manual_seed(0)
    stock = STOCK_BUILDERS[name]()
    model = replace_box_loss(copy.deepcopy(stock), "diou")
    images, targets = _batch(name)
    ours, ref = _losses(model, images, targets), _losses(stock, images, targets)
    assert set(ours) == set(ref) and all(torch.isfinite(v) for v in ours.values())
    for key in BOX_KEYS[name]:
        assert not torch.isclose(ours[key], ref[key]), key
    sum(ours.values()).backward()
    assert all(p.grad.abs().sum() > 0 for p in _regressors(name, model))


def test_fcos_uses_the_chosen_loss(stock_models):
    stock = stock_models["fcos"]
    images, targets = _batch("fcos")
    once = _losses(replace_box_loss(copy.deepcopy(stock), "iou", loss_weight=1.0), images, targets)
    twice = _losses(replace_box_loss(copy.deepcopy(stock), "iou", loss_weight=2.0), images, targets)
    torch.testing.assert_close(twice["bbox_regression"], 2 * once["bbox_regression"])
    # move the predictions off their near-point start: 1 - IoU and 1 - GIoU now differ
    shifted = copy.deepcopy(stock)
    torch.nn.init.constant_(shifted.head.regression_head.bbox_reg.bias, 3.0)  # boxes wider than their targets
    a = _losses(replace_box_loss(copy.deepcopy(shifted), "iou", loss_weight=1.0), images, targets)
    b = _losses(shifted, images, targets)
    assert not torch.isclose(a["bbox_regression"], b["bbox_regression"])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_image_without_boxes(stock_models, name):
    model = replace_box_loss(copy.deepcopy(stock_models[name]), "ciou")
    images, targets = _batch(name, empty_second=True)
    losses = _losses(model, images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # and with no boxes at all
    images, targets = _batch(name, empty_second=True)
    targets = [targets[1], targets[1]]
    losses = _losses(model, images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_eval_mode_inference_is_unchanged(stock_models, name):
    stock = stock_models[name]
    model = replace_box_loss(copy.deepcopy(stock), "diou")
    images, _ = _batch(name)
    stock.eval()
    model.eval()
    with torch.no_grad():
        a, b = stock(images), model(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["boxes"], y["boxes"])
        torch.testing.assert_close(x["scores"], y["scores"])


def test_roi_loss_equals_a_hand_computation_through_decode_boxes(stock_models):
    model = replace_box_loss(copy.deepcopy(stock_models["fasterrcnn"]), "diou", loss_weight={"roi_heads": 3.0})
    images, targets = _batch("fasterrcnn")
    model.train()
    image_list, targets_t = model.transform(images, targets)
    features = {"0": model.backbone(image_list.tensors)}
    proposals = [torch.tensor([[2.0, 4, 28, 42], [22, 20, 58, 50], [0, 0, 20, 20], [30, 30, 62, 62]])] * 2
    heads = model.roi_heads
    torch.manual_seed(5)
    _, losses = heads(features, [p.clone() for p in proposals], image_list.image_sizes, targets_t)
    # by hand: the same sampling, the head's own layers, decode_boxes and boxloss.diou_loss
    torch.manual_seed(5)
    props, matched_idxs, labels, _ = D.roi_heads.RoIHeads.select_training_samples(
        heads, [p.clone() for p in proposals], targets_t)
    feats = heads.box_head(heads.box_roi_pool(features, props, image_list.image_sizes))
    _, deltas = heads.box_predictor(feats)
    labels = torch.cat(labels)
    pos = torch.where(labels > 0)[0]
    deltas = deltas.reshape(len(labels), -1, 4)[pos, labels[pos]]
    gt = torch.cat([t["boxes"][m] for t, m in zip(targets_t, matched_idxs)])[pos]
    pred = decode_boxes(deltas, torch.cat(props)[pos], weights=(10.0, 10.0, 5.0, 5.0))
    expected = 3.0 * boxloss.diou_loss(pred, gt, reduction="sum") / len(labels)
    torch.testing.assert_close(losses["loss_box_reg"], expected)


def test_rpn_false_keeps_torchvision_rpn_loss(stock_models):
    stock = stock_models["fasterrcnn"]
    model = replace_box_loss(copy.deepcopy(stock), "giou", rpn=False)
    images, targets = _batch("fasterrcnn")
    ours, ref = _losses(model, images, targets), _losses(stock, images, targets)
    torch.testing.assert_close(ours["loss_rpn_box_reg"], ref["loss_rpn_box_reg"])
    assert not torch.isclose(ours["loss_box_reg"], ref["loss_box_reg"])
    assert type(model.rpn) is type(stock.rpn)
    model = replace_box_loss(copy.deepcopy(stock), "giou", roi_heads=False)
    ours = _losses(model, images, targets)
    torch.testing.assert_close(ours["loss_box_reg"], ref["loss_box_reg"])


def test_matching_on_boxloss_iou_gives_torchvision_matches(stock_models):
    stock = stock_models["fasterrcnn"]
    images, targets = _batch("fasterrcnn")
    with_boxloss = _losses(replace_box_loss(copy.deepcopy(stock), "giou", matching=True), images, targets)
    with_torchvision = _losses(replace_box_loss(copy.deepcopy(stock), "giou", matching=False), images, targets)
    for key in with_boxloss:
        torch.testing.assert_close(with_boxloss[key], with_torchvision[key])
    model = replace_box_loss(copy.deepcopy(stock_models["retinanet"]), "giou")
    images, targets = _batch("retinanet")
    a = _losses(model, images, targets)
    model._boxloss_matching = False
    b = _losses(model, images, targets)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_other_models_are_unaffected(stock_models):
    stock = stock_models["fasterrcnn"]
    images, targets = _batch("fasterrcnn")
    before = _losses(stock, images, targets)
    other = copy.deepcopy(stock)
    replace_box_loss(copy.deepcopy(stock), "ciou")
    after = _losses(other, images, targets)
    assert type(other.roi_heads) is D.roi_heads.RoIHeads and type(other.rpn) is D.rpn.RegionProposalNetwork
    for key in before:
        torch.testing.assert_close(before[key], after[key])
    fresh = _tiny("fasterrcnn")
    assert type(fresh.roi_heads) is D.roi_heads.RoIHeads


def test_replaced_model_pickles_and_keeps_its_state_dict(stock_models):
    model = replace_box_loss(copy.deepcopy(stock_models["fasterrcnn"]), "giou")
    assert model.state_dict().keys() == stock_models["fasterrcnn"].state_dict().keys()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.roi_heads).__name__ == "BoxLossRoIHeads"
    assert pickle.loads(pickle.dumps(model.rpn))._boxloss_weight == DEFAULT_LOSS_WEIGHTS["rpn"]


def test_loss_specs_module_and_callable(stock_models):
    images, targets = _batch("retinanet")
    stock = stock_models["retinanet"]
    by_name = _losses(replace_box_loss(copy.deepcopy(stock), "ciou", loss_weight=1.0), images, targets)
    by_module = _losses(replace_box_loss(copy.deepcopy(stock), boxloss.CIoULoss(reduction="sum"), loss_weight=1.0),
                        images, targets)
    by_callable = _losses(replace_box_loss(copy.deepcopy(stock), lambda p, t: boxloss.ciou_loss(p, t, reduction="none"),
                                           loss_weight=1.0), images, targets)
    torch.testing.assert_close(by_name["bbox_regression"], by_module["bbox_regression"])
    torch.testing.assert_close(by_name["bbox_regression"], by_callable["bbox_regression"])
    doubled = _losses(replace_box_loss(copy.deepcopy(stock), "ciou", loss_weight={"retinanet": 2.0}), images, targets)
    torch.testing.assert_close(doubled["bbox_regression"], 2 * by_name["bbox_regression"])
    bad = replace_box_loss(copy.deepcopy(stock), lambda p, t: boxloss.ciou_loss(p, t))  # a scalar, not per box
    with pytest.raises(ValueError, match="one loss per box"):
        _losses(bad, images, targets)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torchvision FasterRCNN, MaskRCNN, KeypointRCNN, RetinaNet or FCOS"):
        replace_box_loss(torch.nn.Linear(2, 2))
    model = _tiny("fasterrcnn")
    with pytest.raises(ValueError, match="loss must be one of 'iou', 'log_iou', 'giou', 'diou', 'ciou'.*'smooth_l1'"):
        replace_box_loss(model, "smooth_l1")
    with pytest.raises(TypeError, match="loss must be one of"):
        replace_box_loss(model, 3)
    with pytest.raises(ValueError, match="loss_weight keys must be among"):
        replace_box_loss(model, "giou", loss_weight={"box": 2.0})
    with pytest.raises(TypeError, match="loss_weight must be a number"):
        replace_box_loss(model, "giou", loss_weight="10")


# ---------------------------------------------------------------------------------------------- coder
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_equal_torchvision_box_coder(weights):
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.rand(50, 2, generator=g) * 50, torch.rand(50, 2, generator=g) * 50 + 60], 1)
    boxes = anchors + torch.randn(50, 4, generator=g) * 3
    coder = BoxCoder(weights)
    deltas = encode_boxes(boxes, anchors, weights)
    torch.testing.assert_close(deltas, coder.encode_single(boxes, anchors))
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights), coder.decode_single(deltas, anchors))
    torch.testing.assert_close(decode_boxes(deltas, anchors, weights), boxes, rtol=1e-4, atol=1e-4)
    huge = torch.full((1, 4), 100.0)  # dw, dh far past the clamp: finite, and as torchvision clamps them
    torch.testing.assert_close(decode_boxes(huge, anchors[:1], weights), coder.decode_single(huge, anchors[:1]))
    with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
        decode_boxes(deltas, anchors, (1.0, 1.0, 1.0))


def test_decoded_box_loss_value_and_empty_positives():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 25, 15], [0, 0, 4, 4]])
    targets = torch.tensor([[1.0, 1, 11, 12], [6, 4, 22, 16], [0, 0, 0, 0]])
    deltas = torch.randn(3, 4) * 0.1
    deltas.requires_grad_()
    positive = torch.tensor([True, True, False])
    out = decoded_box_loss(deltas, anchors, targets, positive, loss="diou", loss_weight=2.0)
    expected = 2.0 * boxloss.diou_loss(decode_boxes(deltas[:2], anchors[:2]), targets[:2], reduction="sum") / 2
    torch.testing.assert_close(out, expected)
    out.backward()
    assert deltas.grad[:2].abs().sum() > 0 and deltas.grad[2].abs().sum() == 0
    none = decoded_box_loss(deltas, anchors, targets, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    torch.testing.assert_close(decoded_box_loss(deltas, anchors, targets, positive, avg_factor=4.0),
                               boxloss.giou_loss(decode_boxes(deltas[:2], anchors[:2]), targets[:2], reduction="sum") / 4)
    with pytest.raises(TypeError, match="positive must be a bool tensor"):
        decoded_box_loss(deltas, anchors, targets, positive.long())


# ---------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    features, anchors, targets, positive = _ddp_data()
    half = slice(0, 5) if rank == 0 else slice(5, 12)  # unequal shards with unequal numbers of positives
    ddp = DistributedDataParallel(net)
    loss = decoded_box_loss(ddp(features[half]), anchors[half], targets[half], positive[half], loss="giou",
                            all_reduce=True)
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in net.named_parameters()}, os.path.join(out_dir, "grads.pt"))
    dist.destroy_process_group()


def _ddp_data():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(12, 6, generator=g)
    anchors = torch.cat([torch.rand(12, 2, generator=g) * 20, torch.rand(12, 2, generator=g) * 20 + 25], 1)
    targets = anchors + torch.randn(12, 4, generator=g) * 2
    positive = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0], dtype=torch.bool)
    return features, anchors, targets, positive


def test_ddp_all_reduce_gives_the_gradients_of_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / "grads.pt")
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    features, anchors, targets, positive = _ddp_data()
    decoded_box_loss(net(features), anchors, targets, positive, loss="giou").backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad)
    # and normalising per process instead would not: the shards hold 4 and 2 positives
    torch.manual_seed(0)
    net2 = torch.nn.Linear(6, 4)
    local = [decoded_box_loss(net2(features[s]), anchors[s], targets[s], positive[s], loss="giou")
             for s in (slice(0, 5), slice(5, 12))]
    (sum(local) / 2).backward()
    assert not torch.allclose(net2.weight.grad, net.weight.grad)


# ---------------------------------------------------------------------------------------------- review fixes
SAVE_LOAD_CHILD = """
import sys, torch
import boxloss.detection  # nothing else: the swapped classes must come from here
model = torch.load(sys.argv[1], weights_only=False)
images, targets = torch.load(sys.argv[2], weights_only=False)
model.train()
torch.manual_seed(1)
losses = model(images, targets)
print(type(model).__name__, {k: round(float(v), 6) for k, v in losses.items()})
"""


class MyRoIHeads(D.roi_heads.RoIHeads):
    """A user's subclass of a supported head: it must survive save/load too."""


@pytest.mark.parametrize("name", list(BUILDERS))
def test_saved_model_loads_in_a_new_process(stock_models, name, tmp_path):
    import subprocess
    import sys

    model = replace_box_loss(copy.deepcopy(stock_models[name]), "diou")
    images, targets = _batch(name)
    with torch.no_grad():
        expected = _losses(model, images, targets)
    torch.save(model, tmp_path / "model.pt")
    torch.save((images, targets), tmp_path / "batch.pt")
    out = subprocess.run([sys.executable, "-c", SAVE_LOAD_CHILD, str(tmp_path / "model.pt"),
                          str(tmp_path / "batch.pt")], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    got = eval(out.stdout.strip().split(" ", 1)[1])  # noqa: S307 - our own child's dict of floats
    for key, value in expected.items():
        assert got[key] == pytest.approx(value.item(), abs=1e-5), key


def test_swapped_classes_are_module_attributes_at_import():
    import subprocess
    import sys

    code = ("import boxloss.detection.torchvision_models as m; "
            "print(sorted(n for n in dir(m) if n.startswith('BoxLoss') and isinstance(getattr(m, n), type)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["BoxLossFCOS", "BoxLossFCOSHead", "BoxLossRegionProposalNetwork",  # noqa: S307
                         "BoxLossRetinaNet", "BoxLossRetinaNetRegressionHead", "BoxLossRoIHeads"]


def test_subclass_of_a_supported_head_pickles(stock_models):
    model = copy.deepcopy(stock_models["fasterrcnn"])
    model.roi_heads.__class__ = MyRoIHeads
    replace_box_loss(model, "giou")
    assert isinstance(model.roi_heads, MyRoIHeads)
    loaded = pickle.loads(pickle.dumps(model))
    assert isinstance(loaded.roi_heads, MyRoIHeads) and type(loaded.roi_heads).__name__ == "BoxLossMyRoIHeads"
    assert loaded.roi_heads._boxloss_weight == DEFAULT_LOSS_WEIGHTS["roi_heads"]


def test_bf16_autocast_decodes_in_float32():
    """A perfect prediction costs ~0 under bf16 autocast (it cost GIoU 0.06–0.16 decoded in bf16)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 260
    anchors = torch.cat([xy, xy + torch.rand(500, 2, generator=g) * 30 + 10], 1)
    targets = anchors + (torch.rand(500, 4, generator=g) - 0.5) * 8
    deltas = encode_boxes(targets, anchors, weights=(10.0, 10.0, 5.0, 5.0))
    positive = torch.ones(500, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # what a head's convolution hands over under autocast: bf16 deltas (anchors and boxes in float32)
        loss = decoded_box_loss(deltas.bfloat16(), anchors, targets, positive, weights=(10.0, 10.0, 5.0, 5.0))
    assert loss.dtype == torch.float32 and loss.item() < 0.002, loss.item()
    # exactly the float32 decode of the (bf16-rounded) deltas
    expected = boxloss.giou_loss(decode_boxes(deltas.bfloat16().float(), anchors, (10.0, 10.0, 5.0, 5.0)), targets)
    torch.testing.assert_close(loss, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = boxloss.giou_loss(decode_boxes(deltas.bfloat16(), anchors.bfloat16(), (10.0, 10.0, 5.0, 5.0)),
                                    targets)
    assert in_bf16.item() > 10 * loss.item()  # what decoding in bf16 costs a perfect prediction


@pytest.mark.parametrize("name", list(BUILDERS))
def test_training_under_bf16_autocast_computes_box_terms_in_float32(stock_models, name):
    model = replace_box_loss(copy.deepcopy(stock_models[name]), "giou")
    images, targets = _batch(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _losses(model, images, targets)
    for key in BOX_KEYS[name]:
        assert losses[key].dtype == torch.float32 and torch.isfinite(losses[key]), key


@pytest.mark.parametrize("name", list(BUILDERS))
def test_restore_box_loss_gives_back_torchvision_exactly(stock_models, name):
    stock = stock_models[name]
    model = replace_box_loss(copy.deepcopy(stock), "ciou", loss_weight=3.0)
    with pytest.raises(Exception):  # noqa: B017 - the boxloss heads do not script; the docs say so
        torch.jit.script(model)
    assert restore_box_loss(model) is model
    for mod, ref in zip(model.modules(), stock.modules()):
        assert type(mod) is type(ref)
        assert not any(k.startswith("_boxloss_") for k in vars(mod))
        if hasattr(ref, "box_similarity"):
            assert mod.box_similarity is ref.box_similarity
    images, targets = _batch(name)
    ours, ref = _losses(model, images, targets), _losses(stock, images, targets)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key])
    torch.jit.script(model)  # as for a stock model
    assert restore_box_loss(model) is model  # idempotent


def test_second_call_with_a_head_off_puts_that_head_back(stock_models):
    stock = stock_models["fasterrcnn"]
    images, targets = _batch("fasterrcnn")
    ref = _losses(stock, images, targets)
    model = replace_box_loss(copy.deepcopy(stock), "giou")
    replace_box_loss(model, "diou", rpn=False)
    assert type(model.rpn) is D.rpn.RegionProposalNetwork and type(model.roi_heads).__name__ == "BoxLossRoIHeads"
    ours = _losses(model, images, targets)
    torch.testing.assert_close(ours["loss_rpn_box_reg"], ref["loss_rpn_box_reg"])
    replace_box_loss(model, "diou", roi_heads=False)
    assert type(model.roi_heads) is D.roi_heads.RoIHeads
    assert torch.isclose(_losses(model, images, targets)["loss_box_reg"], ref["loss_box_reg"])


def test_loss_per_head_as_a_dict_and_the_repr_says_which(stock_models):
    stock = stock_models["fasterrcnn"]
    images, targets = _batch("fasterrcnn")
    mixed = replace_box_loss(copy.deepcopy(stock), {"rpn": "giou", "roi_heads": "ciou"}, loss_weight={"rpn": 2.0})
    rpn_giou = _losses(replace_box_loss(copy.deepcopy(stock), "giou", loss_weight={"rpn": 2.0}), images, targets)
    roi_ciou = _losses(replace_box_loss(copy.deepcopy(stock), "ciou"), images, targets)
    got = _losses(mixed, images, targets)
    torch.testing.assert_close(got["loss_rpn_box_reg"], rpn_giou["loss_rpn_box_reg"])
    torch.testing.assert_close(got["loss_box_reg"], roi_ciou["loss_box_reg"])
    assert "fn=giou_loss(reduction='none'), weight=2.0" in repr(mixed.rpn)
    assert "fn=ciou_loss(reduction='none'), weight=10.0, matching=True" in repr(mixed.roi_heads)
    only_roi = replace_box_loss(copy.deepcopy(stock), {"roi_heads": "giou"})  # mmdetection's GIoU Faster R-CNN
    assert type(only_roi.rpn) is D.rpn.RegionProposalNetwork
    with pytest.raises(ValueError, match="loss keys must be among"):
        replace_box_loss(copy.deepcopy(stock), {"box": "giou"})


def test_a_module_of_another_format_reads_the_decoded_boxes_as_xyxy(stock_models):
    images, targets = _batch("retinanet")
    stock = stock_models["retinanet"]
    xyxy = _losses(replace_box_loss(copy.deepcopy(stock), boxloss.GIoULoss()), images, targets)
    cxcywh = _losses(replace_box_loss(copy.deepcopy(stock), boxloss.GIoULoss(fmt="cxcywh")), images, targets)
    torch.testing.assert_close(xyxy["bbox_regression"], cxcywh["bbox_regression"])
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    gt = torch.tensor([[2.0, 1, 12, 13]])
    deltas = torch.tensor([[0.1, -0.1, 0.2, 0.0]])
    positive = torch.tensor([True])
    torch.testing.assert_close(decoded_box_loss(deltas, anchors, gt, positive, loss=boxloss.GIoULoss(fmt="xywh")),
                               decoded_box_loss(deltas, anchors, gt, positive, loss="giou"))


def test_wrapped_models_are_unwrapped(stock_models):
    stock = stock_models["fasterrcnn"]
    wrapped = torch.nn.DataParallel(copy.deepcopy(stock))
    assert replace_box_loss(wrapped, "giou") is wrapped
    assert type(wrapped.module.roi_heads).__name__ == "BoxLossRoIHeads"
    restore_box_loss(wrapped)
    assert type(wrapped.module.roi_heads) is D.roi_heads.RoIHeads


def test_negative_loss_weight_is_refused(stock_models):
    model = copy.deepcopy(stock_models["fasterrcnn"])
    for bad in (-1.0, {"rpn": -0.5}, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="loss_weight must be a finite number >= 0"):
            replace_box_loss(model, "giou", loss_weight=bad)
    assert type(model.rpn) is D.rpn.RegionProposalNetwork  # nothing changed before the error
    with pytest.raises(ValueError, match="loss_weight must be a finite number >= 0"):
        decoded_box_loss(torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4), torch.tensor([True]), loss_weight=-2)


# ---------------------------------------------------------------------------------------------- stateful and rotated-only modules
def test_a_wise_iou_module_trains_with_its_own_running_mean_per_head(stock_models):
    # before: the module was called as a plain callable with reduction="mean" and failed at the first step
    stock = stock_models["fasterrcnn"]
    images, targets = _batch("fasterrcnn")
    criterion = boxloss.WIoULoss(version=3, fmt="cxcywh", momentum=0.5)
    model = replace_box_loss(copy.deepcopy(stock), criterion)
    losses = _losses(model, images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    rpn_mean = model.rpn._boxloss_fn.module.iou_mean
    roi_mean = model.roi_heads._boxloss_fn.module.iou_mean
    # each head moved its own mean (proposals and RoI boxes have different IoUs); the user's instance is untouched
    assert float(rpn_mean) < 1 and float(roi_mean) < 1 and float(rpn_mean) != float(roi_mean)
    assert float(criterion.iou_mean) == 1.0
    # and the heads read xyxy: the module's cxcywh is not applied to the decoded boxes
    assert model.roi_heads._boxloss_fn.module.fmt == "xyxy"
    # a WIoU v1 module (no state) equals the function by name
    v1 = _losses(replace_box_loss(copy.deepcopy(stock), boxloss.WIoULoss(version=1)), images, targets)
    by_name = _losses(replace_box_loss(copy.deepcopy(stock), "wiou"), images, targets)
    torch.testing.assert_close(v1["loss_box_reg"], by_name["loss_box_reg"])


def test_rotated_only_modules_and_foreign_head_keys_are_refused_at_the_call(stock_models):
    model = copy.deepcopy(stock_models["fasterrcnn"])
    for module in (boxloss.KLDLoss(), boxloss.ProbIoULoss(), boxloss.GWDLoss(), boxloss.KFIoULoss()):
        with pytest.raises(ValueError, match="takes rotated boxes only"):
            replace_box_loss(model, module)
    with pytest.raises(ValueError, match=r"loss keys must be heads of this model \(rpn, roi_heads\).*'fcos'"):
        replace_box_loss(model, {"fcos": "giou"})  # before: a silent no-op
    assert type(model.rpn) is D.rpn.RegionProposalNetwork and type(model.roi_heads) is D.roi_heads.RoIHeads
    retina = copy.deepcopy(stock_models["retinanet"])
    with pytest.raises(ValueError, match="loss keys must be heads of this model"):
        replace_box_loss(retina, {"rpn": "giou", "retinanet": "giou"})


def test_a_scalar_loss_error_suggests_reduction_none(stock_models):
    images, targets = _batch("retinanet")
    bad = replace_box_loss(copy.deepcopy(stock_models["retinanet"]), lambda p, t: boxloss.giou_loss(p, t))
    with pytest.raises(ValueError, match="build it with reduction='none'"):
        _losses(bad, images, targets)
