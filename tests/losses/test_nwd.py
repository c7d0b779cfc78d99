"""NWD: hand-worked value, the Gaussian Wasserstein distance in closed form, descent, zero gradient at W₂ = 0."""

import math

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, centre, descend, per_box, sizes

import boxloss


def paper_nwd(p, t, constant):
    (px, py), (tx, ty) = centre(p), centre(t)
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    w2 = (px - tx) ** 2 + (py - ty) ** 2 + (pw / 2 - tw / 2) ** 2 + (ph / 2 - th / 2) ** 2
    return 1 - math.exp(-math.sqrt(w2) / constant)


def test_hand_worked_value_and_paper():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]])
    assert boxloss.nwd_loss(p, t, constant=2.0).item() == pytest.approx(1 - math.exp(-0.5), rel=1e-6)
    for p, t in (overlapping_pairs(200, seed=35), disjoint_pairs(200, seed=36)):
        assert_close(boxloss.nwd_loss(p, t, reduction="none"), per_box(paper_nwd, p, t, constant=12.8))


def test_identical_boxes_have_a_zero_not_a_nan_gradient():
    p = torch.tensor([[1., 2., 5., 7.]], requires_grad=True)
    boxloss.nwd_loss(p, p.detach()).backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_descends_from_a_disjoint_start():
    assert descend(lambda p, t: boxloss.nwd_loss(p, t, constant=4.0), *DISJOINT, lr=5.0) > 0.5
