"""EIoU and Focal-EIoU: hand-worked values, the paper's equations, descent (and why Focal-EIoU has none)."""

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, descend, diou_penalty, enclosing, iou, per_box, sizes

import boxloss


def paper_eiou(p, t):
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    cw, ch = enclosing(p, t)
    return 1 - iou(p, t) + diou_penalty(p, t) + (pw - tw) ** 2 / cw**2 + (ph - th) ** 2 / ch**2


def test_hand_worked_values():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 4.]])
    # 1 − 1/2 + ρ²/c² = 1/20 + (w − w')²/C_w² = 0 + (h − h')²/C_h² = 4/16
    assert boxloss.eiou_loss(p, t).item() == pytest.approx(0.8, rel=1e-6)
    assert boxloss.focal_eiou_loss(p, t, gamma=0.5).item() == pytest.approx(0.5 ** 0.5 * 0.8, rel=1e-6)
    assert boxloss.focal_eiou_loss(p, t, gamma=0.0).item() == pytest.approx(0.8, rel=1e-6)


def test_equals_the_papers_equations():
    for p, t in (overlapping_pairs(200, seed=22), disjoint_pairs(200, seed=23)):
        want = per_box(paper_eiou, p, t)
        assert_close(boxloss.eiou_loss(p, t, reduction="none"), want)
        focal = torch.tensor([iou(a, b) for a, b in zip(p.tolist(), t.tolist())], dtype=torch.float64) ** 1.5 * want
        assert_close(boxloss.focal_eiou_loss(p, t, reduction="none", gamma=1.5), focal)


def test_the_focal_factor_carries_no_gradient():
    p, t = overlapping_pairs(10, seed=24)
    p.requires_grad_()
    boxloss.focal_eiou_loss(p, t, reduction="sum", gamma=0.5).backward()
    p2 = p.detach().clone().requires_grad_()
    factor = torch.tensor([iou(a, b) for a, b in zip(p.tolist(), t.tolist())], dtype=torch.float64) ** 0.5
    (boxloss.eiou_loss(p2, t, reduction="none") * factor).sum().backward()
    assert_close(p.grad, p2.grad)


def test_descent_eiou_reaches_overlap_focal_eiou_has_no_gradient_when_disjoint():
    assert descend(lambda p, t: boxloss.eiou_loss(p, t), *DISJOINT) > 0.5
    p = DISJOINT[0].clone().requires_grad_()
    boxloss.focal_eiou_loss(p, DISJOINT[1]).backward()  # IoU = 0: loss 0·L, gradient 0 (documented)
    assert torch.equal(p.grad, torch.zeros_like(p))
