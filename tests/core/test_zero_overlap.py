"""The zero-overlap handling of iou_loss and log_iou_loss, and gradient descent from disjoint starts."""

import math

import pytest
import torch
from conftest import disjoint_pairs, overlapping_pairs

import boxloss
from boxloss import box_iou, iou_loss, log_iou_loss

EPS = 1e-7


SMOOTH_LN_AT_ZERO = 1 - math.log(0.7)  # log_iou_loss at IoU 0: the tangent of −ln at 0.7


@pytest.mark.parametrize("fn", [iou_loss, log_iou_loss])
def test_zero_overlap_term_is_exactly_zero_wherever_boxes_overlap(fn):
    pred, target = overlapping_pairs(200, seed=1)
    iou = box_iou(pred, target, aligned=True)
    assert (iou > 0).all()
    loss = fn(pred, target, reduction="none")
    if fn is iou_loss:
        # the textbook value, exactly: the zero-overlap term is an exact 0 on overlapping pairs
        assert torch.equal(loss, fn(pred, target, reduction="none", zero_overlap="none"))
        torch.testing.assert_close(loss, 1 - iou)
    else:
        # Smooth-ln: −ln IoU (the textbook value) above 0.7, its tangent below, nothing added
        above = iou >= 0.7
        assert torch.equal(loss[above], fn(pred, target, reduction="none", zero_overlap="none")[above])
        torch.testing.assert_close(loss, torch.where(above, -torch.log(iou), -math.log(0.7) + (0.7 - iou) / 0.7))


def test_hand_worked_disjoint_values():
    pred = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1], [0.0, 0, 1, 1], [0.0, 0, 1, 1]], dtype=torch.float64)
    # right by a gap of 1, target 1 × 1: d = 1, target diagonal √2
    # diagonal gaps (1, 2): d = √5, target 1 × 2: diagonal √5
    # touching at x = 1: d = 0 -> exactly the textbook 1
    # a point target at (3, 0): gaps (2, 0), no diagonal: the enclosing one, 3 × 1 -> d/c = 2/√10
    target = torch.tensor([[2.0, 0, 3, 1], [2.0, 3, 3, 5], [1.0, 0, 2, 1], [3.0, 0, 3, 0]], dtype=torch.float64)
    gap = torch.tensor([1 / math.sqrt(2), 1.0, 0.0, 2 / math.sqrt(10)], dtype=torch.float64)
    torch.testing.assert_close(iou_loss(pred, target, reduction="none"), 1 + gap)
    torch.testing.assert_close(log_iou_loss(pred, target, reduction="none"), SMOOTH_LN_AT_ZERO + gap)


@pytest.mark.parametrize("fn", [iou_loss, log_iou_loss])
def test_continuous_across_the_touching_boundary(fn):
    # slide the prediction through contact: the loss must not jump
    target = torch.tensor([[0.0, 0, 1, 1]], dtype=torch.float64)
    shifts = torch.linspace(1 - 1e-9, 1 + 1e-9, 21, dtype=torch.float64)
    pred = torch.stack([shifts, torch.zeros_like(shifts), shifts + 1, torch.ones_like(shifts)], -1)
    loss = fn(pred, target.expand_as(pred), reduction="none")
    assert (loss.diff().abs() < 1e-8).all()
    assert loss[10].item() == pytest.approx(1.0 if fn is iou_loss else SMOOTH_LN_AT_ZERO, abs=1e-9)


@pytest.mark.parametrize("fn", [iou_loss, log_iou_loss])
def test_disjoint_gradient_is_nonzero_and_points_towards_the_target(fn):
    pred, target = disjoint_pairs(300, seed=2)
    pred.requires_grad_()
    fn(pred, target, reduction="sum").backward()
    assert (pred.grad.abs().sum(-1) > 0).all()
    # a small step against the gradient shrinks the gap between every pair
    def gap(p):
        gx = (torch.maximum(p[:, 0], target[:, 0]) - torch.minimum(p[:, 2], target[:, 2])).clamp_min(0)
        gy = (torch.maximum(p[:, 1], target[:, 1]) - torch.minimum(p[:, 3], target[:, 3])).clamp_min(0)
        return torch.hypot(gx, gy)
    stepped = pred.detach() - 1e-3 * pred.grad
    assert (gap(stepped) < gap(pred.detach())).all()


@pytest.mark.parametrize("fn", [iou_loss, log_iou_loss])
def test_zero_overlap_none_is_the_textbook_loss(fn):
    pred, target = disjoint_pairs(50, seed=3)
    pred.requires_grad_()
    loss = fn(pred, target, reduction="none", zero_overlap="none")
    expected = 1.0 if fn is iou_loss else -math.log(EPS)
    torch.testing.assert_close(loss, torch.full_like(loss, expected))
    loss.sum().backward()
    assert torch.count_nonzero(pred.grad) == 0


def test_zero_overlap_rejects_unknown_value():
    p = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="zero_overlap must be one of 'distance', 'none'; got 'giou'"):
        iou_loss(p, p, zero_overlap="giou")
    with pytest.raises(ValueError, match="zero_overlap"):
        boxloss.LogIoULoss(zero_overlap=None)


def test_disjoint_loss_grows_linearly_with_the_gap():
    """The pull does not fade with distance: the term is the gap over the target's diagonal (here √2)."""
    target = torch.tensor([[0.0, 0, 1, 1]], dtype=torch.float64)
    xs = torch.tensor([1.5, 2.0, 5.0, 50.0, 1e4], dtype=torch.float64)
    pred = torch.stack([xs, torch.zeros_like(xs), xs + 1, torch.ones_like(xs)], -1).requires_grad_()
    loss = iou_loss(pred, target.expand_as(pred), reduction="none")
    torch.testing.assert_close(loss, 1 + (xs - 1) / math.sqrt(2))
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    torch.testing.assert_close(grad[:, 0], torch.full_like(xs, 1 / math.sqrt(2)))  # same pull at every distance


def test_inverted_prediction_gets_a_gradient_that_un_inverts_it():
    pred = torch.tensor([[2.0, 2, 1, 1]], requires_grad=True)  # x2 < x1, y2 < y1, inside the target
    target = torch.tensor([[0.0, 0, 3, 3]])
    iou_loss(pred, target).backward()
    assert pred.grad[0, 0] > 0 and pred.grad[0, 2] < 0  # descent lowers x1, raises x2


def _disjoint_starts(n, seed):
    """Predictions all around a unit target, 3 to 23 target sizes away, of varied shapes."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    dist = torch.rand(n, generator=g, dtype=torch.float64) * 20 + 3  # > both half-diagonals: disjoint
    centre = torch.stack([0.5 + dist * angle.cos(), 0.5 + dist * angle.sin()], -1)
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 + 0.2
    pred = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    target = torch.tensor([[0.0, 0, 1, 1]], dtype=torch.float64).expand(n, 4)
    return pred, target


@pytest.mark.parametrize("name", ["iou", "log_iou", "giou", "diou", "ciou"])
def test_gradient_descent_brings_disjoint_boxes_to_overlap(name):
    fn = getattr(boxloss, f"{name}_loss")
    pred, target = _disjoint_starts(200, seed=4)
    assert (box_iou(pred, target, aligned=True) == 0).all()
    pred.requires_grad_()
    for _ in range(3000):
        (grad,) = torch.autograd.grad(fn(pred, target, reduction="sum"), pred)
        with torch.no_grad():
            pred -= 0.5 * grad
        if (box_iou(pred.detach(), target, aligned=True) > 0).all():
            break
    assert (box_iou(pred.detach(), target, aligned=True) > 0).all()


def test_textbook_iou_loss_does_not_move_disjoint_boxes():
    pred, target = _disjoint_starts(20, seed=5)
    pred.requires_grad_()
    (grad,) = torch.autograd.grad(iou_loss(pred, target, reduction="sum", zero_overlap="none"), pred)
    assert torch.count_nonzero(grad) == 0
