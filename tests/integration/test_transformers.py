"""boxloss.integrations.transformers against the real transformers models (random-init configs, offline, CPU):
equivalence with transformers' own GIoU loss (values, loss_dict, gradients) for every supported loss function,
the box term of other losses against boxloss on the matched pairs, the matcher's cost, degenerate and NaN
boxes, autocast, training, save/load without boxloss, and the errors."""

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("scipy")

from transformers.loss import loss_for_object_detection as lfod  # noqa: E402

import boxloss  # noqa: E402
from boxloss.integrations import transformers as bt  # noqa: E402

T = transformers


def _resnet(out):
    return T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], out_features=out)


SMALL = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
             encoder_attention_heads=2, decoder_attention_heads=2, num_labels=3)
DETR_LIKE = dict(use_timm_backbone=False, use_pretrained_backbone=False, num_queries=12, **SMALL)
RT_LIKE = dict(use_pretrained_backbone=False, encoder_hidden_dim=32, feat_strides=[4, 8, 16], num_queries=20,
               num_denoising=10, decoder_in_channels=[32, 32, 32], num_feature_levels=3, decoder_n_points=2, **SMALL)


def _rt_detr():
    backbone = T.RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32], depths=[1, 1, 1], layer_type="basic",
                                    out_features=["stage1", "stage2", "stage3"])
    return T.RTDetrForObjectDetection(T.RTDetrConfig(backbone_config=backbone, encoder_in_channels=[16, 32, 32],
                                                     **RT_LIKE))


def _d_fine():
    backbone = T.HGNetV2Config(stem_channels=[3, 8, 16], stage_in_channels=[16, 32, 32],
                               stage_mid_channels=[8, 16, 16], stage_out_channels=[32, 32, 32],
                               stage_num_blocks=[1, 1, 1], stage_downsample=[False, True, True],
                               stage_light_block=[False, False, True], stage_kernel_size=[3, 3, 5],
                               stage_numb_of_layers=[2, 2, 2], out_features=["stage1", "stage2", "stage3"],
                               hidden_sizes=[32, 32, 32], depths=[1, 1, 1], embedding_size=16)
    return T.DFineForObjectDetection(T.DFineConfig(backbone_config=backbone, encoder_in_channels=[32, 32, 32],
                                                   hidden_expansion=0.5, **RT_LIKE))


def _rt_detr_v2():
    backbone = T.RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32], depths=[1, 1, 1], layer_type="basic",
                                    out_features=["stage1", "stage2", "stage3"])
    return T.RTDetrV2ForObjectDetection(T.RTDetrV2Config(backbone_config=backbone, encoder_in_channels=[16, 32, 32],
                                                         **RT_LIKE))


MODELS = {
    "detr": lambda: T.DetrForObjectDetection(T.DetrConfig(backbone_config=_resnet(["stage2"]), **DETR_LIKE)),
    "deformable_detr": lambda: T.DeformableDetrForObjectDetection(T.DeformableDetrConfig(
        backbone_config=_resnet(["stage1", "stage2"]), num_feature_levels=2, encoder_n_points=2, decoder_n_points=2,
        **DETR_LIKE)),
    "conditional_detr": lambda: T.ConditionalDetrForObjectDetection(T.ConditionalDetrConfig(
        backbone_config=_resnet(["stage2"]), **DETR_LIKE)),
    "dab_detr": lambda: T.DabDetrForObjectDetection(T.DabDetrConfig(backbone_config=_resnet(["stage2"]),
                                                                     **DETR_LIKE)),
    "rt_detr": _rt_detr,
    "rt_detr_v2": _rt_detr_v2,
    "d_fine": _d_fine,
}
FAMILY = {"detr": "ForObjectDetectionLoss", "deformable_detr": "DeformableDetrForObjectDetectionLoss",
          "conditional_detr": "DeformableDetrForObjectDetectionLoss", "dab_detr": "DeformableDetrForObjectDetectionLoss",
          "rt_detr": "RTDetrForObjectDetectionLoss", "rt_detr_v2": "RTDetrForObjectDetectionLoss",
          "d_fine": "DFineForObjectDetectionLoss"}


def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 64, 64, generator=g)
    labels = []
    for i in range(n):
        k = 1 + i % 3
        centre = torch.rand(k, 2, generator=g) * 0.5 + 0.25
        size = torch.rand(k, 2, generator=g) * 0.3 + 0.1
        labels.append({"class_labels": torch.randint(0, 3, (k,), generator=g), "boxes": torch.cat([centre, size], 1)})
    return images, labels


def _loss(model, images, labels, seed=1):
    model.train()
    torch.manual_seed(seed)  # denoising queries are drawn at random: the same draws for both models
    out = model(pixel_values=images, labels=labels)
    return out


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build() for name, build in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_giou_equals_transformers_own_loss_dict_and_gradients(models, name):
    stock = models[name]
    swapped = bt.replace_box_loss(copy.deepcopy(stock), "giou")
    assert swapped.loss_function.family == FAMILY[name]
    images, labels = _batch()
    ref, ours = _loss(stock, images, labels), _loss(swapped, images, labels)
    assert set(ours.loss_dict) == set(ref.loss_dict)
    assert any(k.startswith("loss_giou") for k in ours.loss_dict)
    for key in ref.loss_dict:
        torch.testing.assert_close(ours.loss_dict[key].float(), ref.loss_dict[key].float(), rtol=1e-5, atol=1e-5,
                                   msg=key)
    torch.testing.assert_close(ours.loss, ref.loss, rtol=1e-5, atol=1e-5)
    if name == "d_fine":
        # at random initialisation D-FINE's backward through the network is chaotic: its auxiliary and denoising
        # terms' parameter gradients (of order 1e6) change by as much when an IoU-aware class target moves by 2 ulp
        # (transformers' own IoU times 1 + 2.4e-7 does the same; boxloss' IoU agrees with it to 3e-8). The
        # gradients are compared where the loss starts: with respect to every tensor the loss function is given
        _assert_same_input_gradients(stock, swapped, images, labels)
        return
    trained = [n for n, p in stock.named_parameters() if p.requires_grad]
    g_ref = torch.autograd.grad(ref.loss, [dict(stock.named_parameters())[n] for n in trained], allow_unused=True)
    g_ours = torch.autograd.grad(ours.loss, [dict(swapped.named_parameters())[n] for n in trained],
                                 allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    _assert_same_input_gradients(stock, swapped, images, labels)


def _loss_call(model, images, labels):
    """The arguments the model passes to its loss function (detached), from one forward pass."""
    seen = {}
    original = model.loss_function

    def record(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return original(*args, **kwargs)

    copied = copy.deepcopy(model)
    copied.loss_function = record
    with torch.no_grad():
        _loss(copied, images, labels)
    return seen["args"], seen["kwargs"]


def _assert_same_input_gradients(stock, swapped, images, labels):
    args, kwargs = _loss_call(stock, images, labels)
    results = []
    for model in (stock, swapped):
        leaves = []

        def leaf(x, leaves=leaves):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                x = x.detach().clone().requires_grad_()
                leaves.append(x)
            return x

        a = [leaf(x) for x in args]
        k = {key: leaf(v) for key, v in kwargs.items()}
        torch.manual_seed(1)
        loss, loss_dict, _ = model.loss_function(*a, **k)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((loss, loss_dict, grads))
    (l0, d0, g0), (l1, d1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert len(g0) == len(g1) >= 2  # logits and boxes at least (RT-DETR, D-FINE: every layer and group)
    for a, b in zip(g1, g0):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _matched_pairs(model, out, labels):
    """The last layer's matched (prediction, target) boxes, from transformers' own matcher."""
    c = model.config
    matcher = lfod.HungarianMatcher(class_cost=c.class_cost, bbox_cost=c.bbox_cost, giou_cost=c.giou_cost)
    indices = matcher({"logits": out.logits, "pred_boxes": out.pred_boxes}, labels)
    src = torch.cat([out.pred_boxes[b, i] for b, (i, _) in enumerate(indices)])
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(labels, indices)])
    return src, tgt


@pytest.mark.parametrize("loss, params", [("ciou", {}), ("diou", {}), ("siou", {"theta": 3.0}), ("wiou", {}),
                                          ("mpdiou", {}), ("inner_iou", {"ratio": 0.8}), ("log_iou", {})])
def test_the_box_term_is_boxloss_on_the_matched_pairs(models, loss, params):
    model = bt.replace_box_loss(copy.deepcopy(models["detr"]), loss, matcher=False, **params)
    images, labels = _batch(seed=3)
    out = _loss(model, images, labels)
    src, tgt = _matched_pairs(model, out, labels)
    fn = getattr(boxloss, f"{loss}_loss")
    extra = {"image_size": (1.0, 1.0)} if loss == "mpdiou" else {}
    want = fn(src, tgt, fmt="cxcywh", reduction="sum", **params, **extra) / sum(len(t["boxes"]) for t in labels)
    torch.testing.assert_close(out.loss_dict["loss_giou"], want)
    # and the other terms are transformers' (the same matching: matcher=False)
    ref = _loss(models["detr"], images, labels)
    for key in ("loss_ce", "loss_bbox", "cardinality_error"):
        torch.testing.assert_close(out.loss_dict[key], ref.loss_dict[key])


@pytest.mark.parametrize("loss, pairwise", [("diou", "distance_box_iou"), ("ciou", "complete_box_iou"),
                                            ("iou", "box_iou"), ("siou", "generalized_box_iou")])
def test_the_matcher_cost_is_boxloss_pairwise_of_the_family(models, monkeypatch, loss, pairwise):
    calls = []
    original = getattr(boxloss, pairwise)

    def spy(a, b, **kw):
        if not kw.get("aligned"):  # (the IoU-aware class weights call box_iou aligned: not the matcher)
            calls.append((tuple(a.shape), tuple(b.shape)))
        return original(a, b, **kw)

    monkeypatch.setattr(boxloss, pairwise, spy)
    images, labels = _batch()
    for name in ("detr", "rt_detr"):
        calls.clear()
        _loss(bt.replace_box_loss(copy.deepcopy(models[name]), loss), images, labels)
        n_targets = sum(len(t["boxes"]) for t in labels)
        assert calls and all(b[0] == n_targets and a[0] > n_targets for a, b in calls), (name, calls)
        calls.clear()
        _loss(bt.replace_box_loss(copy.deepcopy(models[name]), loss, matcher=False), images, labels)
        assert not calls


def _detr_outputs(model, images, labels):
    out = _loss(model, images, labels)
    return out.logits.detach(), out.pred_boxes.detach()


@pytest.mark.parametrize("name", ["detr", "deformable_detr"])
def test_degenerate_boxes_give_a_finite_loss_and_nan_gives_nan(models, name):
    # transformers raises ValueError on an inverted box (its matcher's generalized_box_iou), which fp16 training
    # produces (transformers #42202); zero-width boxes make its GIoU term 0/0
    model = models[name]
    images, labels = _batch()
    logits, boxes = _detr_outputs(model, images, labels)
    bad = boxes.clone()
    bad[:, ::2, 2] = 0.0     # zero width
    bad[:, 1::3, 3] = -0.05  # negative height: x1 < x0 after center_to_corners_format
    stock_fn = model.loss_function
    with pytest.raises(ValueError, match="corner"):
        stock_fn(logits, labels, "cpu", bad, model.config)
    swapped = bt.replace_box_loss(copy.deepcopy(model), "ciou")
    pred = bad.clone().requires_grad_()
    loss, loss_dict, _ = swapped.loss_function(logits, labels, "cpu", pred, swapped.config)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in loss_dict.values())
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    nan = boxes.clone()
    nan[:] = float("nan")
    loss, loss_dict, _ = swapped.loss_function(logits, labels, "cpu", nan, swapped.config)
    assert torch.isnan(loss_dict["loss_giou"])


def test_under_autocast_the_box_term_is_float32(models):
    model = bt.replace_box_loss(copy.deepcopy(models["rt_detr"]), "diou")
    images, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _loss(model, images, labels)
    assert out.loss_dict["loss_giou"].dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("name, loss, lr, steps", [("detr", "ciou", 2e-3, 60), ("rt_detr", "diou", 1e-3, 40)])
def test_a_swapped_model_trains(name, loss, lr, steps):
    torch.manual_seed(0)
    model = bt.replace_box_loss(MODELS[name](), loss)
    images, labels = _batch(seed=5, n=2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    total, box = [], []
    for step in range(steps):
        out = _loss(model, images, labels, seed=step)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        total.append(float(out.loss))
        box.append(float(out.loss_dict["loss_giou"]))
    first, last = (lambda h: sum(h[:5]) / 5), (lambda h: sum(h[-5:]) / 5)
    assert last(total) < 0.8 * first(total), total
    assert last(box) < 0.95 * first(box), box


SAVED_CHILD = """
import sys
sys.modules["boxloss"] = None  # importing boxloss fails here
import torch, transformers
model = transformers.AutoModelForObjectDetection.from_pretrained(sys.argv[1])
model.train()
images = torch.rand(1, 3, 64, 64)
labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}]
out = model(pixel_values=images, labels=labels)
print(type(model).__name__, model.loss_function.__name__, bool(torch.isfinite(out.loss)))
"""


def test_saved_model_loads_and_trains_in_plain_transformers(models, tmp_path):
    model = bt.replace_box_loss(copy.deepcopy(models["rt_detr"]), "siou", theta=3.0)
    model.save_pretrained(tmp_path)
    assert "boxloss" not in (tmp_path / "config.json").read_text()
    result = subprocess.run([sys.executable, "-c", SAVED_CHILD, str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["RTDetrForObjectDetection", "RTDetrForObjectDetectionLoss", "True"]
    # re-applying the swap after loading gives the swapped loss again
    loaded = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path)
    images, labels = _batch()
    torch.testing.assert_close(_loss(bt.replace_box_loss(loaded, "siou", theta=3.0), images, labels).loss,
                               _loss(model, images, labels).loss)


def test_restore_pickle_and_repr(models):
    stock = models["detr"]
    model = bt.replace_box_loss(copy.deepcopy(stock), "eiou")
    assert "loss='eiou'" in repr(model.loss_function)
    again = pickle.loads(pickle.dumps(model))
    images, labels = _batch()
    torch.testing.assert_close(_loss(again, images, labels).loss, _loss(model, images, labels).loss)
    assert bt.restore_box_loss(model) is model
    assert model.loss_function is lfod.ForObjectDetectionLoss
    torch.testing.assert_close(_loss(model, images, labels).loss, _loss(stock, images, labels).loss)
    # a second swap replaces the first; restoring goes back to transformers' loss, not to the first swap
    twice = bt.replace_box_loss(bt.replace_box_loss(copy.deepcopy(stock), "diou"), "giou", matcher=False)
    assert twice.loss_function.spec.loss == "giou"
    assert bt.restore_box_loss(twice).loss_function is lfod.ForObjectDetectionLoss
    # and stock models are untouched while a swapped one runs (the replacements act for swapped calls only)
    assert lfod.ImageLoss.__module__ == lfod.__name__ and lfod.generalized_box_iou.__module__ == lfod.__name__
    assert "boxloss" not in repr(lfod.ImageLoss.loss_boxes)


def test_bad_arguments_change_nothing(models, monkeypatch):
    model = copy.deepcopy(models["detr"])
    with pytest.raises(ValueError, match="loss must be one of 'iou'|loss must be one of iou"):
        bt.replace_box_loss(model, "smooth_l1")
    with pytest.raises(ValueError, match="'kld' is for rotated boxes"):
        bt.replace_box_loss(model, "kld")
    with pytest.raises(ValueError, match="theta must be"):
        bt.replace_box_loss(model, "siou", theta=-1.0)
    with pytest.raises(TypeError, match="does not take these options"):
        bt.replace_box_loss(model, "giou", theta=2.0)
    with pytest.raises(ValueError, match="fmt and reduction are set by the integration"):
        bt.replace_box_loss(model, "giou", fmt="xyxy")
    with pytest.raises(TypeError, match="matcher must be a bool"):
        bt.replace_box_loss(model, "giou", matcher="yes")
    classifier = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1]))
    with pytest.raises(TypeError, match="model must be a transformers detection model whose loss is one of"):
        bt.replace_box_loss(classifier, "giou")
    with pytest.raises(TypeError, match="model must be a transformers detection model"):
        bt.replace_box_loss(torch.nn.Linear(2, 2), "giou")
    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    with pytest.raises(ValueError, match="transformers 4.57.1 is outside the versions"):
        bt.replace_box_loss(model, "giou")
    assert "_loss_function" not in model.__dict__
