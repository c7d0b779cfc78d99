"""boxloss.segmentation: soft IoU and Lovász losses against hand-worked cases and independent references."""

import itertools

import pytest
import torch

from boxloss.segmentation import (
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    SoftIoULoss,
    lovasz_hinge_loss,
    lovasz_softmax_loss,
    soft_iou_loss,
)


def _reference_soft_iou(probs, onehot, smooth=0.0, log=False, valid=None):
    """Per-class loss from explicit Python loops in float64: probs, onehot (N, C, P); valid (N, P) or None."""
    n, c, p = probs.shape
    out = []
    for k in range(c):
        inter = union_p = union_y = 0.0
        for i in range(n):
            for j in range(p):
                if valid is not None and not valid[i, j]:
                    continue
                inter += float(probs[i, k, j] * onehot[i, k, j])
                union_p += float(probs[i, k, j])
                union_y += float(onehot[i, k, j])
        jac = (inter + smooth) / (union_p + union_y - inter + smooth)
        out.append(-torch.log(torch.tensor(jac)).item() if log else 1 - jac)
    return torch.tensor(out, dtype=torch.float64)


def _multiclass_case(seed=0, n=2, c=3, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, 0, :c] = torch.arange(c)  # every class present
    return logits, target


class TestSoftIoU:
    def test_hand_worked_binary(self):
        probs = torch.tensor([[[0.9, 0.8, 0.1, 0.0]]], dtype=torch.float64)
        target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
        # I = 0.9 + 0.8 = 1.7; U = (0.9+0.8+0.1) + 2 - 1.7 = 2.1
        assert soft_iou_loss(probs, target, from_logits=False).item() == pytest.approx(1 - 1.7 / 2.1)
        assert soft_iou_loss(probs, target, from_logits=False, log=True).item() == pytest.approx(
            -torch.log(torch.tensor(1.7 / 2.1, dtype=torch.float64)).item())
        # smooth 1: (1.7 + 1) / (2.1 + 1)
        assert soft_iou_loss(probs, target, from_logits=False, smooth=1.0).item() == pytest.approx(1 - 2.7 / 3.1)

    @pytest.mark.parametrize("log", [False, True])
    @pytest.mark.parametrize("smooth", [0.0, 1.0])
    def test_multiclass_matches_loop_reference(self, log, smooth):
        logits, target = _multiclass_case()
        probs = logits.softmax(1).reshape(2, 3, -1)
        onehot = torch.nn.functional.one_hot(target.reshape(2, -1), 3).permute(0, 2, 1).double()
        expected = _reference_soft_iou(probs, onehot, smooth=smooth, log=log)
        got = soft_iou_loss(logits, target, mode="multiclass", reduction="none", smooth=smooth, log=log)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(soft_iou_loss(logits, target, mode="multiclass", smooth=smooth, log=log),
                                   expected.mean())
        torch.testing.assert_close(soft_iou_loss(logits, target, mode="multiclass", smooth=smooth, log=log,
                                                 reduction="sum"), expected.sum())

    def test_multilabel_and_per_image(self):
        g = torch.Generator().manual_seed(1)
        logits = torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
        target = (torch.rand(3, 2, 6, generator=g) > 0.5).double()
        target[:, :, 0] = 1
        per_image = soft_iou_loss(logits, target, mode="multilabel", per_image=True, reduction="none")
        assert per_image.shape == (3, 2)
        for i in range(3):
            expected = _reference_soft_iou(logits[i:i + 1].sigmoid(), target[i:i + 1])
            torch.testing.assert_close(per_image[i], expected)
        torch.testing.assert_close(soft_iou_loss(logits, target, mode="multilabel", per_image=True),
                                   per_image.mean())

    def test_class_weights(self):
        logits, target = _multiclass_case(seed=2)
        per_class = soft_iou_loss(logits, target, mode="multiclass", reduction="none")
        w = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
        torch.testing.assert_close(soft_iou_loss(logits, target, mode="multiclass", class_weights=w),
                                   (per_class * w).sum() / w.sum())

    def test_binary_two_class_weights_score_background_too(self):
        g = torch.Generator().manual_seed(3)
        logits = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
        target = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).double()
        p = logits.sigmoid().reshape(2, 1, -1)
        y = target.reshape(2, 1, -1)
        ref = _reference_soft_iou(torch.cat([1 - p, p], 1), torch.cat([1 - y, y], 1), log=True)
        got = soft_iou_loss(logits, target, log=True, class_weights=[0.3, 0.7], reduction="none")
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(soft_iou_loss(logits, target, log=True, class_weights=[0.3, 0.7]),
                                   (ref * torch.tensor([0.3, 0.7], dtype=torch.float64)).sum())

    def test_ignore_index_invariance(self):
        logits, target = _multiclass_case(seed=4)
        ignored = target.clone()
        ignored[1, 2:] = 255
        changed = logits.clone()
        changed[1, :, 2:] = torch.randn_like(changed[1, :, 2:]) * 10  # whatever is predicted there
        a = soft_iou_loss(logits, ignored, mode="multiclass", ignore_index=255, reduction="none")
        b = soft_iou_loss(changed, ignored, mode="multiclass", ignore_index=255, reduction="none")
        torch.testing.assert_close(a, b)
        valid = (ignored != 255).reshape(2, -1)
        probs = logits.softmax(1).reshape(2, 3, -1)
        onehot = torch.nn.functional.one_hot(target.reshape(2, -1), 3).permute(0, 2, 1).double()
        torch.testing.assert_close(a, _reference_soft_iou(probs, onehot, valid=valid))

    def test_binary_ignore_index(self):
        logits = torch.tensor([[2.0, -1.0, 5.0, 0.5]], dtype=torch.float64)
        target = torch.tensor([[1.0, 0.0, 255.0, 1.0]], dtype=torch.float64)
        got = soft_iou_loss(logits, target, ignore_index=255)
        expected = soft_iou_loss(logits[:, [0, 1, 3]], target[:, [0, 1, 3]])
        torch.testing.assert_close(got, expected)

    def test_gradcheck(self):
        logits, target = _multiclass_case(seed=5, h=2, w=3)
        logits.requires_grad_()
        for log in (False, True):
            assert torch.autograd.gradcheck(
                lambda x, log=log: soft_iou_loss(x, target, mode="multiclass", log=log, reduction="none"), (logits,))
        b_logits = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        b_target = (torch.rand(2, 1, 3, 3) > 0.5).double()
        assert torch.autograd.gradcheck(lambda x: soft_iou_loss(x, b_target, class_weights=[1.0, 2.0]), (b_logits,))

    def test_gradient_is_nonzero_at_every_logit(self):
        # the argmax pitfall: a loss built on argmax would give zero gradients everywhere
        logits, target = _multiclass_case(seed=6)
        logits.requires_grad_()
        soft_iou_loss(logits, target, mode="multiclass").backward()
        assert (logits.grad.abs() > 0).all()

    def test_perfect_prediction_costs_zero_and_confidently_wrong_costs_one(self):
        _, target = _multiclass_case(seed=7)
        perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double() * 40 - 20
        assert soft_iou_loss(perfect, target, mode="multiclass").item() == pytest.approx(0, abs=1e-6)
        wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).double() * 40 - 20
        assert soft_iou_loss(wrong, target, mode="multiclass").item() == pytest.approx(1, abs=1e-6)
        assert soft_iou_loss(wrong, target, mode="multiclass", log=True).item() > 10

    def test_absent_classes_are_left_out_of_the_mean(self):
        logits, target = _multiclass_case(seed=8)
        target = target.clamp(max=1)  # class 2 absent
        per_class = soft_iou_loss(logits, target, mode="multiclass", reduction="none")
        assert per_class[2].item() == pytest.approx(1.0)
        torch.testing.assert_close(soft_iou_loss(logits, target, mode="multiclass"), per_class[:2].mean())

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_logits_computed_in_float32(self, dtype):
        logits, target = _multiclass_case(seed=9)
        out = soft_iou_loss(logits.to(dtype), target, mode="multiclass")
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, soft_iou_loss(logits.to(dtype).double(), target, mode="multiclass").float())

    def test_any_number_of_spatial_dims(self):
        logits = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
        target = torch.randint(0, 3, (2, 2, 3, 4))
        flat = soft_iou_loss(logits.reshape(2, 3, -1), target.reshape(2, -1), mode="multiclass", reduction="none")
        torch.testing.assert_close(soft_iou_loss(logits, target, mode="multiclass", reduction="none"), flat)
        x = torch.randn(4, 7, dtype=torch.float64)  # binary (N, ...) without channel
        y = (torch.rand(4, 7) > 0.5).double()
        torch.testing.assert_close(soft_iou_loss(x, y), soft_iou_loss(x[:, None], y[:, None]))

    def test_bad_arguments(self):
        logits, target = _multiclass_case()
        with pytest.raises(ValueError, match="mode must be one of 'binary', 'multiclass', 'multilabel'; got 'multi'"):
            soft_iou_loss(logits, target, mode="multi")
        with pytest.raises(ValueError, match=r"target must have shape \(N, \.\.\.\)"):
            soft_iou_loss(logits, target[:, :2], mode="multiclass")
        with pytest.raises(ValueError, match="class_weights must have length 3"):
            soft_iou_loss(logits, target, mode="multiclass", class_weights=[1.0, 2.0])
        with pytest.raises(ValueError, match=r"class_weights must have length 1 or 2 \(background, foreground\)"):
            soft_iou_loss(torch.randn(2, 1, 3), torch.ones(2, 1, 3), class_weights=[1.0, 2.0, 3.0])
        with pytest.raises(TypeError, match="integer class indices"):
            soft_iou_loss(logits, target.double(), mode="multiclass")
        with pytest.raises(ValueError, match="reduction must be one of"):
            soft_iou_loss(logits, target, mode="multiclass", reduction="avg")
        with pytest.raises(ValueError, match="target must have the shape of input"):
            soft_iou_loss(torch.randn(2, 1, 3), torch.ones(2, 1, 4))
        with pytest.raises(TypeError, match="input must be a floating tensor"):
            soft_iou_loss(torch.ones(2, 1, 3, dtype=torch.long), torch.ones(2, 1, 3))
        with pytest.raises(ValueError, match="smooth must be a non-negative number"):
            soft_iou_loss(torch.randn(2, 1, 3), torch.ones(2, 1, 3), smooth=-1)

    def test_module_equals_function(self):
        logits, target = _multiclass_case(seed=10)
        m = SoftIoULoss(mode="multiclass", log=True, class_weights=[1.0, 2.0, 3.0])
        torch.testing.assert_close(m(logits, target), soft_iou_loss(logits, target, mode="multiclass", log=True,
                                                                    class_weights=[1.0, 2.0, 3.0]))
        with pytest.raises(ValueError, match="mode"):
            SoftIoULoss(mode="binray")


# ------------------------------------------------------------------------------------------------ Lovász
def _jaccard_set_loss(mistakes, fg):
    """Δ_J(M) = |M| / |fg ∪ M| for boolean vectors; 0 for an empty union."""
    union = (mistakes | fg).sum()
    return float(mistakes.sum()) / float(union) if union > 0 else 0.0


def _lovasz_by_integration(errors, fg):
    """The Lovász extension from its definition as ∫₀^∞ Δ({i : m_i ≥ t}) dt, for m ≥ 0, no sorting trick."""
    levels = sorted(set(errors.tolist()) | {0.0})
    total, prev = 0.0, 0.0
    for t in levels:
        if t <= 0:
            continue
        total += (t - prev) * _jaccard_set_loss(errors >= t, fg)
        prev = t
    return total


class TestLovasz:
    def test_softmax_matches_integral_definition(self):
        logits, target = _multiclass_case(seed=11, n=1, h=3, w=3)
        probs = logits.softmax(1).reshape(3, -1)
        per_class = []
        for c in range(3):
            fg = target.reshape(-1) == c
            per_class.append(_lovasz_by_integration((fg.double() - probs[c]).abs(), fg))
        got = lovasz_softmax_loss(logits, target, classes="all")
        assert got.item() == pytest.approx(sum(per_class) / 3, abs=1e-12)

    def test_hinge_matches_integral_definition(self):
        g = torch.Generator().manual_seed(12)
        logits = torch.randn(1, 10, generator=g, dtype=torch.float64) * 2
        target = (torch.rand(1, 10, generator=g) > 0.4).long()
        fg = target.reshape(-1) == 1
        errors = (1 - logits.reshape(-1) * (2 * fg.double() - 1)).clamp_min(0)
        assert lovasz_hinge_loss(logits, target).item() == pytest.approx(_lovasz_by_integration(errors, fg), abs=1e-12)

    def test_on_binary_errors_it_equals_one_minus_discrete_iou(self):
        # with 0/1 errors the extension is the set function itself: 1 - IoU of the hard prediction
        fg = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
        pred = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
        errors = (fg != pred).double()
        from boxloss.segmentation.lovasz import _lovasz_extension
        got = _lovasz_extension(errors[None], fg.double()[None]).item()
        iou = (fg & pred).sum().item() / (fg | pred).sum().item()
        assert got == pytest.approx(1 - iou)

    def test_brute_force_small_cases_every_labelling(self):
        # every 0/1 labelling of 5 pixels against fixed errors: the sorted formula equals the integral
        from boxloss.segmentation.lovasz import _lovasz_extension
        errors = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7], dtype=torch.float64)
        for bits in itertools.product([0, 1], repeat=5):
            fg = torch.tensor(bits, dtype=torch.bool)
            got = _lovasz_extension(errors[None], fg.double()[None]).item()
            assert got == pytest.approx(_lovasz_by_integration(errors, fg), abs=1e-12), bits

    def test_ignore_index_invariance_and_per_image(self):
        logits, target = _multiclass_case(seed=13)
        ignored = target.clone()
        ignored[:, 0, :] = 255
        changed = logits.clone()
        changed[:, :, 0, :] = torch.randn_like(changed[:, :, 0, :]) * 5
        for per_image in (False, True):
            a = lovasz_softmax_loss(logits, ignored, ignore_index=255, per_image=per_image)
            b = lovasz_softmax_loss(changed, ignored, ignore_index=255, per_image=per_image)
            torch.testing.assert_close(a, b)
        # per image: the mean of single-image losses
        per = [lovasz_softmax_loss(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
        torch.testing.assert_close(lovasz_softmax_loss(logits, target, per_image=True), sum(per) / 2)
        # ignored pixels removed equals the loss on the kept pixels alone
        kept = lovasz_softmax_loss(logits[:, :, 1:, :], target[:, 1:, :])
        torch.testing.assert_close(lovasz_softmax_loss(logits, ignored, ignore_index=255), kept)
        hinge_kept = lovasz_hinge_loss(logits[:, 0, 1:, :], (target[:, 1:, :] == 1).long())
        hinge_ign = lovasz_hinge_loss(logits[:, 0], torch.where(ignored == 255, 255, (target == 1).long()),
                                      ignore_index=255)
        torch.testing.assert_close(hinge_ign, hinge_kept)

    def test_classes_option(self):
        logits, target = _multiclass_case(seed=14)
        target = target.clamp(max=1)  # class 2 absent
        present = lovasz_softmax_loss(logits, target)
        only = lovasz_softmax_loss(logits, target, classes=[0, 1])
        torch.testing.assert_close(present, only)
        assert lovasz_softmax_loss(logits, target, classes="all") != present
        with pytest.raises(ValueError, match="classes must be 'present', 'all' or a list"):
            lovasz_softmax_loss(logits, target, classes=[5])

    def test_perfect_prediction_costs_zero_and_gradients_flow(self):
        _, target = _multiclass_case(seed=15)
        perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double() * 40 - 20
        assert lovasz_softmax_loss(perfect, target).item() == pytest.approx(0, abs=1e-6)
        logits, _ = _multiclass_case(seed=15)
        logits.requires_grad_()
        lovasz_softmax_loss(logits, target).backward()
        assert logits.grad.abs().sum() > 0
        assert torch.autograd.gradcheck(lambda x: lovasz_softmax_loss(x, target), (logits,))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_logits_computed_in_float32(self, dtype):
        logits, target = _multiclass_case(seed=16)
        assert lovasz_softmax_loss(logits.to(dtype), target).dtype == torch.float32
        assert lovasz_hinge_loss(logits[:, 0].to(dtype), (target == 1).long()).dtype == torch.float32

    def test_modules_and_errors(self):
        logits, target = _multiclass_case(seed=17)
        torch.testing.assert_close(LovaszSoftmaxLoss(per_image=True)(logits, target),
                                   lovasz_softmax_loss(logits, target, per_image=True))
        binary = (target == 1).long()
        torch.testing.assert_close(LovaszHingeLoss()(logits[:, 0], binary), lovasz_hinge_loss(logits[:, 0], binary))
        with pytest.raises(ValueError, match=r"target must have shape \(N, \.\.\.\)"):
            lovasz_softmax_loss(logits, target[:, :1])
        with pytest.raises(TypeError, match="integer class indices"):
            lovasz_softmax_loss(logits, target.double())
        with pytest.raises(ValueError, match="target must have the shape of logits"):
            lovasz_hinge_loss(logits[:, 0], binary[:, :1])


# ---------------------------------------------------------------------------------------------- review fixes
@pytest.mark.parametrize("label", [255, -1, 3])
def test_out_of_range_multiclass_labels_are_an_error_like_cross_entropy(label):
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1, 2, 3] = label
    with pytest.raises((IndexError, RuntimeError)):
        torch.nn.functional.cross_entropy(logits, target)  # the behaviour users know
    for fn in (lambda: soft_iou_loss(logits, target, mode="multiclass"), lambda: lovasz_softmax_loss(logits, target)):
        with pytest.raises(ValueError, match=r"target class indices must be in \[0, 2\]"):
            fn()
    # the same label named as ignore_index is fine, and another out-of-range one still is not
    assert torch.isfinite(soft_iou_loss(logits, target, mode="multiclass", ignore_index=label))
    assert torch.isfinite(lovasz_softmax_loss(logits, target, ignore_index=label))
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match=f"or equal ignore_index={label}"):
        soft_iou_loss(logits, target, mode="multiclass", ignore_index=label)


@pytest.mark.parametrize("case", ["binary", "multiclass", "multilabel", "lovasz_softmax", "lovasz_hinge"])
def test_empty_batch_gives_a_graph_attached_zero(case):
    c = 1 if case in ("binary", "lovasz_hinge") else 3
    logits = torch.zeros(0, c, 5, 6, requires_grad=True)
    if case in ("multiclass", "lovasz_softmax"):
        target = torch.zeros(0, 5, 6, dtype=torch.long)
    else:
        target = torch.zeros(0, c, 5, 6)
    if case == "lovasz_softmax":
        loss = lovasz_softmax_loss(logits, target)
    elif case == "lovasz_hinge":
        loss = lovasz_hinge_loss(logits, target)
    else:
        loss = soft_iou_loss(logits, target, mode=case)
    assert loss.shape == () and loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert logits.grad.shape == logits.shape
