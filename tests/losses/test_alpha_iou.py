"""α-IoU: hand-worked values, the paper's equations for each variant (α = 1 gives the plain losses), descent."""

import pytest
import torch
import torchvision.ops as tvops
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, ciou_v_and_alpha, descend, diou_penalty, giou_penalty, iou, per_box

import boxloss


def paper_alpha(p, t, alpha, variant):
    loss = 1 - iou(p, t) ** alpha
    if variant == "giou":
        loss += max(0.0, giou_penalty(p, t)) ** alpha  # (a rounding-negative 1e-17 would go complex)
    if variant in ("diou", "ciou"):
        loss += diou_penalty(p, t) ** alpha
    if variant == "ciou":
        v, beta = ciou_v_and_alpha(p, t)
        loss += (beta * v) ** alpha
    return loss


def test_hand_worked_values():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[0., 0., 2., 4.]])
    assert boxloss.alpha_iou_loss(p, t, alpha=2.0).item() == pytest.approx(0.75, rel=1e-6)
    # α-DIoU: ρ²/c² = 1/20, squared
    assert boxloss.alpha_iou_loss(p, t, alpha=2.0, variant="diou").item() == pytest.approx(0.75 + 1 / 400, rel=1e-6)


@pytest.mark.parametrize("variant", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_equals_the_papers_equations(variant, alpha):
    for p, t in (overlapping_pairs(150, seed=37), disjoint_pairs(150, seed=38)):
        assert_close(boxloss.alpha_iou_loss(p, t, reduction="none", alpha=alpha, variant=variant),
                     per_box(paper_alpha, p, t, alpha=alpha, variant=variant), rtol=1e-6, atol=1e-7)


def test_alpha_one_is_the_plain_loss():
    p, t = overlapping_pairs(100, seed=39)
    assert_close(boxloss.alpha_iou_loss(p, t, alpha=1.0, variant="giou", reduction="none"),
                 tvops.generalized_box_iou_loss(p, t), rtol=1e-6, atol=1e-7)
    assert_close(boxloss.alpha_iou_loss(p, t, alpha=1.0, variant="ciou", reduction="none"),
                 tvops.complete_box_iou_loss(p, t), rtol=1e-6, atol=1e-7)


def test_descent_from_a_disjoint_start():
    # the penalty's gradient fades as (penalty)^(α−1) once the boxes are close, so α > 1 only just reaches overlap
    # in these steps: the paper's point (α up-weights the high-IoU regime) seen from the other side
    for variant in ("giou", "diou", "ciou"):
        assert descend(lambda p, t, v=variant: boxloss.alpha_iou_loss(p, t, variant=v, alpha=2.0), *DISJOINT) > 0.05, variant
    p = DISJOINT[0].clone().requires_grad_()
    boxloss.alpha_iou_loss(p, DISJOINT[1]).backward()  # "iou": the textbook form, no gradient when disjoint
    assert torch.equal(p.grad, torch.zeros_like(p))
