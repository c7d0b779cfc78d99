"""Edges: degenerate, inverted, huge and random boxes never give NaN or Inf, in values or gradients."""

import math

import pytest
import torch

import boxloss

LOSS_NAMES = ["iou_loss", "log_iou_loss", "giou_loss", "diou_loss", "ciou_loss"]
BOX_NAMES = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]

DEGENERATE = torch.tensor([
    [0.0, 0, 0, 0],        # point at the origin
    [5, 5, 5, 5],          # point
    [1, 1, 1, 4],          # zero width
    [1, 1, 4, 1],          # zero height
    [3, 3, 1, 1],          # inverted in both
    [3, 0, 1, 2],          # inverted in x
    [0, 0, 1e5, 1e5],      # huge
    [-1e5, -1e5, 1e5, 1e5],
    [1e5, 1e5, 1e5 + 1e-3, 1e5 + 1e-3],  # tiny, far away
    [0, 0, 1, 1],
])


def _all_pairs():
    n = len(DEGENERATE)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return DEGENERATE[i.flatten()], DEGENERATE[j.flatten()]


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_finite_on_every_pair_of_degenerate_boxes(name, dtype):
    pred, target = (b.to(dtype).requires_grad_() for b in _all_pairs())
    loss = getattr(boxloss, name)(pred, target, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


@pytest.mark.parametrize("name", BOX_NAMES)
def test_box_functions_finite_on_degenerate_boxes(name):
    b = DEGENERATE.clone().requires_grad_()
    out = getattr(boxloss, name)(b, b)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(b.grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_identical_degenerate_boxes_are_finite_and_point_boxes_cost_at_most_one(name):
    b = DEGENERATE[:4]
    loss = getattr(boxloss, name)(b, b.clone(), reduction="none")
    assert torch.isfinite(loss).all()
    # zero-area boxes have IoU 0 by convention (torchvision's losses agree), and every penalty term is 0
    expected = 1.0 if name != "log_iou_loss" else 1 - math.log(0.7)  # Smooth-ln at IoU 0: −ln 0.7 + 1
    torch.testing.assert_close(loss, torch.full_like(loss, expected))


def _fuzz_boxes(n, dtype, seed):
    """n random boxes: 80% ordinary, 20% degenerate (zero width, points, inverted) or at coordinates up to 1e5."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + wh], -1)
    kind = torch.randint(0, 10, (n,), generator=g)
    zero_w = boxes.clone()
    zero_w[:, 2] = zero_w[:, 0]
    point = torch.cat([xy, xy], -1)
    inverted = torch.cat([xy + wh, xy], -1)
    big = (torch.rand(n, 4, generator=g) - 0.5) * 2e5
    boxes = torch.where((kind == 0)[:, None], zero_w, boxes)
    boxes = torch.where((kind == 1)[:, None], point, boxes)
    boxes = torch.where((kind == 8)[:, None], inverted, boxes)
    boxes = torch.where((kind == 9)[:, None], big, boxes)
    if dtype == torch.float16:
        boxes = boxes.clamp(-6e4, 6e4)  # the largest finite float16 is 65504
    return boxes.to(dtype)


def _gap_bound(pred, target):
    """Distance between the nearest points over the target's diagonal (1 where the target is a point), float64."""
    p, t = pred.detach().double(), target.double()
    gx = (torch.maximum(p[:, 0], t[:, 0]) - torch.minimum(p[:, 2], t[:, 2])).clamp_min(0)
    gy = (torch.maximum(p[:, 1], t[:, 1]) - torch.minimum(p[:, 3], t[:, 3])).clamp_min(0)
    t_diag = torch.hypot((t[:, 2] - t[:, 0]).clamp_min(0), (t[:, 3] - t[:, 1]).clamp_min(0))
    return torch.where(t_diag > 1e-7, torch.hypot(gx, gy) / t_diag.clamp_min(1e-7), torch.ones_like(t_diag))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fuzz_a_million_boxes_per_dtype_gives_no_nan_or_inf(dtype):
    n = 1_000_000
    pred = _fuzz_boxes(n, dtype, seed=1).requires_grad_()
    target = _fuzz_boxes(n, dtype, seed=2)
    # every loss within its stated bound: [0, 2] for GIoU and DIoU; CIoU adds αv ≤ 1; 1 − IoU and Smooth-ln −ln IoU
    # (≤ 1 − ln 0.7) plus the zero-overlap term, at most the gap over the target's diagonal (≤ 1 for point targets)
    upper = {"giou_loss": 2.0, "diou_loss": 2.0, "ciou_loss": 3.0, "iou_loss": 1.0 + _gap_bound(pred, target),
             "log_iou_loss": 1.0 - math.log(0.7) + _gap_bound(pred, target)}
    for name in LOSS_NAMES:
        loss = getattr(boxloss, name)(pred, target, reduction="none")
        assert torch.isfinite(loss).all(), name
        slack = 1e-6 + 1e-5 * upper[name] if name in ("iou_loss", "log_iou_loss") else 1e-6
        assert loss.min() >= -1e-6 and (loss <= upper[name] + slack).all(), name
        (grad,) = torch.autograd.grad(loss.sum(), pred)
        assert torch.isfinite(grad.float()).all(), name
    for name in BOX_NAMES:
        assert torch.isfinite(getattr(boxloss, name)(pred.detach(), target, aligned=True)).all(), name
