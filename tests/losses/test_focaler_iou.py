"""Focaler-IoU: hand-worked values, the paper's linear re-mapping on every base loss, descent."""

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from test_inner_iou import BASES
from variant_checks import DISJOINT, descend, iou, per_box

import boxloss


def test_hand_worked_values():
    p, t = torch.tensor([[0., 0., 4., 4.]]), torch.tensor([[2., 0., 6., 4.]])  # IoU 1/3
    # IoU_focaler = (1/3) / 0.5 = 2/3: 1 − 1/3 + 1/3 − 2/3
    assert boxloss.focaler_iou_loss(p, t, d=0.0, u=0.5).item() == pytest.approx(1 / 3, rel=1e-6)
    # IoU 2/3 ≥ u: IoU_focaler = 1
    q = torch.tensor([[0., 0., 4., 6.]])
    assert boxloss.focaler_iou_loss(p, q, d=0.0, u=0.5).item() == pytest.approx(0.0, abs=1e-7)
    # IoU 1/3 ≤ d: IoU_focaler = 0, and no gradient through it
    assert boxloss.focaler_iou_loss(p, t, d=0.4, u=0.9).item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("variant", list(BASES))
def test_equals_the_papers_definition(variant):
    d, u = 0.2, 0.8
    for p, t in (overlapping_pairs(150, seed=43), disjoint_pairs(150, seed=44)):
        focaler = per_box(lambda a, b: iou(a, b) - min(1.0, max(0.0, (iou(a, b) - d) / (u - d))), p, t)
        assert_close(boxloss.focaler_iou_loss(p, t, reduction="none", d=d, u=u, variant=variant),
                     BASES[variant](p, t) + focaler, rtol=1e-6, atol=1e-7)


def test_descent_from_a_disjoint_start():
    for variant in ("giou", "diou", "ciou", "siou", "eiou"):
        assert descend(lambda p, t, v=variant: boxloss.focaler_iou_loss(p, t, variant=v), *DISJOINT) > 0.5, variant
    p = DISJOINT[0].clone().requires_grad_()
    boxloss.focaler_iou_loss(p, DISJOINT[1]).backward()  # "iou": no gradient when disjoint (documented)
    assert torch.equal(p.grad, torch.zeros_like(p))
