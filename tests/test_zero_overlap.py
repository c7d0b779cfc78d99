"""The zero-overlap handling of iou_loss and log_iou_loss, and gradient descent from disjoint starts."""

import math

import pytest
import torch
from conftest import disjoint_pairs, overlapping_pairs

import boxloss
from boxloss import box_iou, iou_loss, log_iou_loss

EPS = 1e-7


@pytest.mark.parametrize("fn", [iou_loss, log_iou_loss])
def test_textbook_value_wherever_boxes_overlap(fn):
    pred, target = overlapping_pairs(200, seed=1)
    iou = box_iou(pred, target, aligned=True)
    assert (iou > 0).all()
    textbook = 1 - iou if fn is iou_loss else -torch.log(iou)
    # exactly: the zero-overlap term is an exact 0 on overlapping pairs
    assert torch.equal(fn(pred, target, reduction="none"), fn(pred, target, reduction="none", zero_overlap="none"))
    torch.testing.assert_close(fn(pred, target, reduction="none"), textbook)


def test_hand_worked_disjoint_values():
    pred = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1], [0.0, 0, 1, 1]], dtype=torch.float64)
    # right by a gap of 1: d = 1, enclosing 3 × 1 -> c = √10
    # diagonal: gaps (1, 2): d = √5, enclosing 3 × 5 -> c = √34
    # touching at x = 1: d = 0 -> exactly the textbook 1
    target = torch.tensor([[2.0, 0, 3, 1], [2.0, 3, 3, 5], [1.0, 0, 2, 1]], dtype=torch.float64)
    expected = torch.tensor([1 + 1 / math.sqrt(10), 1 + math.sqrt(5 / 34), 1.0], dtype=torch.float64)
    torch.testing.assert_close(iou_loss(pred, target, reduction="none"), expected)
    torch.testing.assert_close(log_iou_loss(pred, target, reduction="none"), expected - 1 - math.log(EPS))


@pytest.mark.parametrize("fn", [iou_loss, log_iou_loss])
def test_continuous_across_the_touching_boundary(fn):
    # slide the prediction through contact: the loss must not jump
    target = torch.tensor([[0.0, 0, 1, 1]], dtype=torch.float64)
    shifts = torch.linspace(1 - 1e-9, 1 + 1e-9, 21, dtype=torch.float64)
    pred = torch.stack([shifts, torch.zeros_like(shifts), shifts + 1, torch.ones_like(shifts)], -1)
    loss = fn(pred, target.expand_as(pred), reduction="none")
    if fn is log_iou_loss:
        # on the overlapping side IoU < eps here, so the clamp holds it at -ln(eps) up to the boundary
        assert loss.max() - loss.min() < 1e-6
    else:
        assert (loss.diff().abs() < 1e-8).all()
        assert loss[10].item() == pytest.approx(1.0, abs=1e-9)


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


def test_disjoint_loss_grows_with_distance_and_stays_below_two():
    target = torch.tensor([[0.0, 0, 1, 1]], dtype=torch.float64)
    xs = torch.tensor([1.5, 2.0, 5.0, 50.0, 1e4], dtype=torch.float64)
    pred = torch.stack([xs, torch.zeros_like(xs), xs + 1, torch.ones_like(xs)], -1)
    loss = iou_loss(pred, target.expand_as(pred), reduction="none")
    assert (loss.diff() > 0).all() and (loss < 2).all() and (loss > 1).all()


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
