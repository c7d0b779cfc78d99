"""SIoU: hand-worked values, the paper's form (arcsin and the α/β switch, as YOLOv6 writes it), descent."""

import math

import pytest
import torch
from conftest import assert_close, overlapping_pairs
from variant_checks import DISJOINT, centre_offset, descend, enclosing, iou, per_box, sizes

import boxloss


def paper_siou(p, t, theta=4.0):
    sx, sy = centre_offset(p, t)
    sigma = math.hypot(sx, sy)
    sin_alpha = abs(sx) / sigma if sigma > 0 else 0.0
    if sin_alpha > math.sqrt(2) / 2:  # α > 45°: minimise β = π/2 − α instead
        sin_alpha = abs(sy) / sigma
    angle = 1 - 2 * math.sin(math.asin(sin_alpha) - math.pi / 4) ** 2
    cw, ch = enclosing(p, t)
    gamma = 2 - angle
    distance = (1 - math.exp(-gamma * (sx / cw) ** 2)) + (1 - math.exp(-gamma * (sy / ch) ** 2))
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    shape = sum((1 - math.exp(-abs(a - b) / max(a, b))) ** theta for a, b in ((pw, tw), (ph, th)))
    return 1 - iou(p, t) + (distance + shape) / 2


def test_hand_worked_values():
    f = lambda p, t, **kw: boxloss.siou_loss(torch.tensor([p]), torch.tensor([t]), **kw).item()  # noqa: E731
    # diagonal offset: Λ = 1 (45°), γ = 1; 3 × 3 enclosing box: ρ_x = ρ_y = 1/9; equal shapes
    assert f([0., 0., 2., 2.], [1., 1., 3., 3.]) == pytest.approx(1 - 1 / 7 + (1 - math.exp(-1 / 9)), rel=1e-6)
    # horizontal offset: Λ = 0, γ = 2; ρ_x = 1/9
    assert f([0., 0., 2., 2.], [1., 0., 3., 2.]) == pytest.approx(2 / 3 + (1 - math.exp(-2 / 9)) / 2, rel=1e-6)
    # a wider target: ω_w = 1/2, θ = 2
    want = 0.5 + ((1 - math.exp(-1 / 8)) + (1 - math.exp(-0.5)) ** 2) / 2
    assert f([0., 0., 2., 2.], [0., 0., 4., 2.], theta=2.0) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("theta", [2.0, 4.0, 6.0])
def test_equals_the_papers_form(theta):
    p, t = overlapping_pairs(200, seed=21)
    assert_close(boxloss.siou_loss(p, t, reduction="none", theta=theta), per_box(paper_siou, p, t, theta=theta))


def test_descends_from_a_disjoint_start():
    assert descend(lambda p, t: boxloss.siou_loss(p, t), *DISJOINT) > 0.5
