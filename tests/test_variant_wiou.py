"""Wise-IoU: v1 values against the paper, the detached enclosing size, the v2/v3 module and its running mean."""

import math

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, centre_offset, descend, enclosing, iou, per_box

import boxloss


def paper_wiou_v1(p, t):
    dx, dy = centre_offset(p, t)
    cw, ch = enclosing(p, t)
    return math.exp((dx * dx + dy * dy) / (cw * cw + ch * ch)) * (1 - iou(p, t))


def test_hand_worked_value_and_paper():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]])
    assert boxloss.wiou_loss(p, t).item() == pytest.approx(math.exp(1 / 13) * 2 / 3, rel=1e-6)
    for p, t in (overlapping_pairs(200, seed=25), disjoint_pairs(200, seed=26)):
        assert_close(boxloss.wiou_loss(p, t, reduction="none"), per_box(paper_wiou_v1, p, t))


def test_the_enclosing_size_is_detached():
    # moving the prediction's far edge outwards changes the enclosing box but not the centre distance term's
    # gradient through it: d/dx2 of R·(1 − IoU) with W_g held fixed
    p, t = overlapping_pairs(5, seed=27)
    p.requires_grad_()
    boxloss.wiou_loss(p, t, reduction="sum").backward()
    q = p.detach().clone().requires_grad_()
    cw = torch.maximum(q[:, 2], t[:, 2]) - torch.minimum(q[:, 0], t[:, 0])
    ch = torch.maximum(q[:, 3], t[:, 3]) - torch.minimum(q[:, 1], t[:, 1])
    rho2 = (((q[:, :2] + q[:, 2:]) - (t[:, :2] + t[:, 2:])) / 2).pow(2).sum(-1)
    iou_ = boxloss.box_iou(q, t, aligned=True)
    (torch.exp(rho2 / (cw**2 + ch**2).detach()) * (1 - iou_)).sum().backward()
    assert_close(p.grad, q.grad)


def test_module_v2_v3_focus_with_the_running_mean():
    p, t = overlapping_pairs(30, seed=28)
    for version in (2, 3):
        m = boxloss.WIoULoss(version=version, momentum=0.1)
        v1 = boxloss.wiou_loss(p, t, reduction="none")
        l_iou = 1 - boxloss.box_iou(p, t, aligned=True)
        mean = 0.9 * 1.0 + 0.1 * l_iou.mean()           # updated before use, from the start value 1
        beta = l_iou / mean
        factor = beta.sqrt() if version == 2 else beta / (3.0 * 1.9 ** (beta - 3.0))
        assert_close(m(p, t), (v1 * factor).mean())
        assert m.iou_mean.item() == pytest.approx(mean.item(), rel=1e-6)
        m.eval()
        before = m.iou_mean.clone()
        m(p, t)
        assert torch.equal(m.iou_mean, before)           # evaluation does not move the mean
        state = m.state_dict()
        assert "iou_mean" in state
        fresh = boxloss.WIoULoss(version=version)
        fresh.load_state_dict(state)
        assert fresh.iou_mean.item() == pytest.approx(mean.item(), rel=1e-6)
    default = boxloss.WIoULoss()
    assert default.momentum == pytest.approx(1 - 0.05 ** (1 / 7000))
    with pytest.raises(ValueError, match="version"):
        boxloss.WIoULoss(version=4)
    with pytest.raises(ValueError, match="momentum"):
        boxloss.WIoULoss(momentum=0.0)


def test_descends_from_a_disjoint_start():
    assert descend(lambda p, t: boxloss.wiou_loss(p, t), *DISJOINT) > 0.5
    m = boxloss.WIoULoss(version=3)
    assert descend(lambda p, t: m(p, t), *DISJOINT) > 0.5
