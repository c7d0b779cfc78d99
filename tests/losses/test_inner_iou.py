"""Inner-IoU: hand-worked values, the paper's auxiliary boxes on every base loss, descent."""

import pytest
import torch
import torchvision.ops as tvops
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from test_eiou import paper_eiou
from test_siou import paper_siou
from variant_checks import DISJOINT, centre, descend, iou, per_box, sizes

import boxloss

BASES = {
    "iou": lambda p, t: 1 - tvops.box_iou(p, t).diagonal(),
    "giou": tvops.generalized_box_iou_loss,
    "diou": tvops.distance_box_iou_loss,
    "ciou": tvops.complete_box_iou_loss,
    "siou": lambda p, t: per_box(paper_siou, p, t),
    "eiou": lambda p, t: per_box(paper_eiou, p, t),
}


def inner_iou(p, t, ratio):
    def scaled(b):
        (cx, cy), (w, h) = centre(b), sizes(b)
        return [cx - w * ratio / 2, cy - h * ratio / 2, cx + w * ratio / 2, cy + h * ratio / 2]

    return iou(scaled(p), scaled(t))


def test_hand_worked_values():
    p, t = torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[2., 0., 6., 4.]])  # IoU 1/3
    assert boxloss.inner_iou_loss(p, t, ratio=0.5).item() == pytest.approx(1.0, rel=1e-6)   # inner boxes touch
    assert boxloss.inner_iou_loss(p, t, ratio=1.5).item() == pytest.approx(0.5, rel=1e-6)   # inner IoU 1/2
    assert boxloss.inner_iou_loss(p, t, ratio=1.0).item() == pytest.approx(2 / 3, rel=1e-6)  # the base loss


@pytest.mark.parametrize("variant", list(BASES))
@pytest.mark.parametrize("ratio", [0.7, 1.3])
def test_equals_the_papers_definition(variant, ratio):
    for p, t in (overlapping_pairs(150, seed=41), disjoint_pairs(150, seed=42)):
        want = BASES[variant](p, t) + per_box(lambda a, b: iou(a, b) - inner_iou(a, b, ratio), p, t)
        # (torchvision's losses add eps to denominators: equal to ~1e-7 relative)
        assert_close(boxloss.inner_iou_loss(p, t, reduction="none", ratio=ratio, variant=variant), want, rtol=1e-6, atol=1e-7)


def test_descent_from_a_disjoint_start():
    for variant in ("giou", "diou", "ciou", "siou", "eiou"):
        assert descend(lambda p, t, v=variant: boxloss.inner_iou_loss(p, t, variant=v), *DISJOINT) > 0.5, variant
    p = DISJOINT[0].clone().requires_grad_()
    boxloss.inner_iou_loss(p, DISJOINT[1]).backward()  # "iou": no gradient when disjoint (documented)
    assert torch.equal(p.grad, torch.zeros_like(p))
