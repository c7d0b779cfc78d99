"""Shape-IoU: hand-worked values (scale 0 and 1), the paper's equations, descent."""

import math

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, centre_offset, descend, enclosing, iou, per_box, sizes

import boxloss


def paper_shape_iou(p, t, scale):
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    ww = 2 * tw**scale / (tw**scale + th**scale)
    hh = 2 * th**scale / (tw**scale + th**scale)
    cw, ch = enclosing(p, t)
    c2 = cw * cw + ch * ch
    dx, dy = centre_offset(p, t)
    distance = hh * dx * dx / c2 + ww * dy * dy / c2
    omega_w = hh * abs(pw - tw) / max(pw, tw)
    omega_h = ww * abs(ph - th) / max(ph, th)
    shape = (1 - math.exp(-omega_w)) ** 4 + (1 - math.exp(-omega_h)) ** 4
    return 1 - iou(p, t) + distance + 0.5 * shape


def test_hand_worked_values():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 4., 2.]])
    want0 = 0.5 + 1 / 20 + 0.5 * (1 - math.exp(-0.5)) ** 4          # ww = hh = 1
    assert boxloss.shape_iou_loss(p, t).item() == pytest.approx(want0, rel=1e-6)
    want1 = 0.5 + (2 / 3) / 20 + 0.5 * (1 - math.exp(-1 / 3)) ** 4   # ww = 4/3, hh = 2/3
    assert boxloss.shape_iou_loss(p, t, scale=1.0).item() == pytest.approx(want1, rel=1e-6)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 1.5, 4.0])  # (the weights are computed as a sigmoid: no powers)
def test_equals_the_papers_equations(scale):
    for p, t in (overlapping_pairs(200, seed=33), disjoint_pairs(200, seed=34)):
        assert_close(boxloss.shape_iou_loss(p, t, reduction="none", scale=scale),
                     per_box(paper_shape_iou, p, t, scale=scale))


def test_descends_from_a_disjoint_start():
    assert descend(lambda p, t: boxloss.shape_iou_loss(p, t), *DISJOINT) > 0.5
