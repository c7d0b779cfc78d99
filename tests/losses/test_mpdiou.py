"""MPDIoU: hand-worked value, the paper's equation, per-box image sizes, descent, and the detectors' image sizes."""

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, descend, iou, per_box

import boxloss


def paper_mpdiou(p, t, w, h):
    d1 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    d2 = (p[2] - t[2]) ** 2 + (p[3] - t[3]) ** 2
    return 1 - (iou(p, t) - d1 / (w * w + h * h) - d2 / (w * w + h * h))


def test_hand_worked_value_and_paper():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]])
    assert boxloss.mpdiou_loss(p, t, image_size=(4, 3)).item() == pytest.approx(1 - 1 / 3 + 2 / 25, rel=1e-6)
    for p, t in (overlapping_pairs(200, seed=31), disjoint_pairs(200, seed=32)):
        assert_close(boxloss.mpdiou_loss(p, t, reduction="none", image_size=(64, 48)),
                     per_box(paper_mpdiou, p, t, w=64, h=48))


def test_descends_from_a_disjoint_start():
    assert descend(lambda p, t: boxloss.mpdiou_loss(p, t, image_size=(16, 16)), *DISJOINT) > 0.5


def test_detector_heads_pass_each_images_size():
    import torchvision

    from boxloss.detection import replace_box_loss

    torch.manual_seed(0)
    model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                                           min_size=64, max_size=96)
    replace_box_loss(model, "mpdiou")
    seen = []
    real = boxloss.losses.mpdiou.mpdiou_loss

    def spy(pred, target, **kw):
        seen.append(kw["image_size"])
        return real(pred, target, **kw)

    model.head._boxloss_fn.fn = spy
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4., 4., 40., 30.]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10., 10., 50., 60.]]), "labels": torch.tensor([1])}]
    model(images, targets)
    sizes = seen[0]
    assert sizes.shape[-1] == 2 and {tuple(s) for s in sizes.tolist()} == {(96.0, 64.0), (64.0, 64.0)}
    with pytest.raises(ValueError, match="needs the input image size"):
        from boxloss.detection import decoded_box_loss

        decoded_box_loss(torch.zeros(2, 4), torch.ones(2, 4).cumsum(-1), torch.ones(2, 4).cumsum(-1),
                         torch.tensor([True, True]), loss="mpdiou")
