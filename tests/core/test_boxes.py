"""boxloss.boxes: the four box functions, pairwise and aligned, against torchvision and hand-worked values."""

import math

import pytest
import torch
import torchvision.ops as tvops
from conftest import DEVICES, assert_close, random_boxes, requires_cuda

from boxloss import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou

FUNCTIONS = {
    "box_iou": (box_iou, tvops.box_iou),
    "generalized_box_iou": (generalized_box_iou, tvops.generalized_box_iou),
    "distance_box_iou": (distance_box_iou, tvops.distance_box_iou),
    "complete_box_iou": (complete_box_iou, tvops.complete_box_iou),
}
NAMES = list(FUNCTIONS)

# Hand-worked cases: a = [0,0,2,2] (area 4) against b.
#   b = [1,1,3,3]: I = 1, U = 7, C = [0,0,3,3] area 9, centres (1,1),(2,2): ρ² = 2, c² = 18
#   b = [2,0,4,2] (touching): I = 0, U = 8, C area 8, ρ² = 4, c² = 16 + 4 = 20
#   b = [0,0,2,4]: I = 4, U = 8, C area 8, ρ² = 1, c² = 4 + 16 = 20; v = 4/π² (atan(1/2) - atan(1))²
_v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(1.0)) ** 2
_alpha = _v / (1 - 0.5 + _v)
HAND = [
    ([1, 1, 3, 3], {"box_iou": 1 / 7, "generalized_box_iou": 1 / 7 - 2 / 9,
                    "distance_box_iou": 1 / 7 - 2 / 18, "complete_box_iou": 1 / 7 - 2 / 18}),
    ([2, 0, 4, 2], {"box_iou": 0.0, "generalized_box_iou": 0.0,
                    "distance_box_iou": -4 / 20, "complete_box_iou": -4 / 20}),
    ([0, 0, 2, 4], {"box_iou": 0.5, "generalized_box_iou": 0.5,
                    "distance_box_iou": 0.5 - 1 / 20, "complete_box_iou": 0.5 - 1 / 20 - _alpha * _v}),
]


@pytest.mark.parametrize("name", NAMES)
class TestBoxFunctions:
    def test_pairwise_matches_torchvision_float64(self, name):
        fn, ref = FUNCTIONS[name]
        a, b = random_boxes(37, seed=1), random_boxes(23, seed=2)
        assert_close(fn(a, b), ref(a, b), atol=1e-8)

    @pytest.mark.parametrize("box", HAND, ids=["overlap", "touching", "nested"])
    def test_hand_worked_value(self, name, box):
        fn, _ = FUNCTIONS[name]
        a = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float64)
        b = torch.tensor([box[0]], dtype=torch.float64)
        # 1e-9: CIoU's α has ``+ eps`` in its denominator, as in torchvision
        assert fn(a, b).item() == pytest.approx(box[1][name], abs=1e-9)

    def test_box_against_itself_is_one(self, name):
        fn, _ = FUNCTIONS[name]
        a = random_boxes(50, seed=3)
        torch.testing.assert_close(fn(a, a, aligned=True), torch.ones(50, dtype=torch.float64))

    def test_symmetric(self, name):
        fn, _ = FUNCTIONS[name]
        a, b = random_boxes(20, seed=4), random_boxes(30, seed=5)
        torch.testing.assert_close(fn(a, b), fn(b, a).T)

    def test_aligned_equals_diagonal_of_pairwise(self, name):
        fn, _ = FUNCTIONS[name]
        a, b = random_boxes(25, seed=6), random_boxes(25, seed=7)
        torch.testing.assert_close(fn(a, b, aligned=True), fn(a, b).diagonal())

    def test_aligned_broadcasts_leading_dims(self, name):
        fn, _ = FUNCTIONS[name]
        a = random_boxes(6, seed=8).reshape(2, 3, 4)
        b = random_boxes(3, seed=9)  # broadcasts over the first dimension
        out = fn(a, b, aligned=True)
        assert out.shape == (2, 3)
        slow = torch.stack([fn(a[i], b, aligned=True) for i in range(2)])
        torch.testing.assert_close(out, slow)

    def test_batched_pairwise_equals_loop(self, name):
        fn, _ = FUNCTIONS[name]
        a = random_boxes(3 * 5, seed=10).reshape(3, 5, 4)
        b = random_boxes(3 * 4, seed=11).reshape(3, 4, 4)
        out = fn(a, b)
        assert out.shape == (3, 5, 4)
        torch.testing.assert_close(out, torch.stack([fn(a[i], b[i]) for i in range(3)]))

    def test_pairwise_equals_slow_loop_over_aligned_pairs(self, name):
        fn, _ = FUNCTIONS[name]
        a, b = random_boxes(6, seed=12), random_boxes(5, seed=13)
        slow = torch.tensor([[fn(a[i], b[j], aligned=True).item() for j in range(5)] for i in range(6)],
                            dtype=torch.float64)
        torch.testing.assert_close(fn(a, b), slow)

    @pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
    def test_formats_match_torchvision_box_convert(self, name, fmt):
        fn, _ = FUNCTIONS[name]
        a, b = random_boxes(10, seed=14), random_boxes(8, seed=15)
        ca, cb = tvops.box_convert(a, "xyxy", fmt), tvops.box_convert(b, "xyxy", fmt)
        torch.testing.assert_close(fn(ca, cb, fmt=fmt), fn(a, b))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    def test_low_precision_computed_in_float32(self, name, dtype):
        fn, _ = FUNCTIONS[name]
        a, b = random_boxes(40, seed=16, scale=50), random_boxes(30, seed=17, scale=50)
        a_low, b_low = a.to(dtype), b.to(dtype)
        out = fn(a_low, b_low)
        assert out.dtype == torch.float32
        # the reference sees the same rounded inputs: what is left is the float32 math
        assert_close(out, fn(a_low.double(), b_low.double()), torch.float32)

    def test_half_boxes_of_3000_pixels_do_not_overflow(self, name):
        fn, _ = FUNCTIONS[name]
        a = torch.tensor([[0.0, 0.0, 3000.0, 3000.0]], dtype=torch.float16)
        b = torch.tensor([[1000.0, 0.0, 4000.0, 3000.0]], dtype=torch.float16)
        out = fn(a, b)
        assert torch.isfinite(out).all()
        assert box_iou(a, b).item() == pytest.approx(2 / 4, rel=1e-6)

    def test_integer_boxes_give_float32(self, name):
        fn, _ = FUNCTIONS[name]
        a = torch.tensor([[0, 0, 2, 2]], dtype=torch.int64)
        b = torch.tensor([[1, 1, 3, 3]], dtype=torch.int32)
        out = fn(a, b)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(a.float(), b.float()))

    def test_empty_inputs_give_empty_outputs(self, name):
        fn, _ = FUNCTIONS[name]
        a = random_boxes(4, seed=18)
        assert fn(a[:0], a).shape == (0, 4)
        assert fn(a, a[:0]).shape == (4, 0)
        assert fn(a[:0], a[:0], aligned=True).shape == (0,)

    def test_degenerate_boxes_are_finite_with_finite_gradients(self, name):
        fn, _ = FUNCTIONS[name]
        a = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 5], [3, 3, 1, 1], [2, 2, 2, 2], [0, 0, 1e8, 1e8]],
                         requires_grad=True)
        b = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 5], [0, 0, 4, 4], [2, 2, 3, 3], [5, 5, 6, 6]],
                         requires_grad=True)
        for out in (fn(a, b), fn(a, b, aligned=True)):
            assert torch.isfinite(out).all()
            a.grad = b.grad = None
            out.sum().backward()
            assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()

    def test_inverted_box_has_zero_area(self, name):
        fn, _ = FUNCTIONS[name]
        inverted = torch.tensor([[2.0, 2, 0, 0]])
        target = torch.tensor([[0.0, 0, 2, 2]])
        assert box_iou(inverted, target).item() == 0.0
        assert torch.isfinite(fn(inverted, target)).all()

    def test_rejects_last_dim_other_than_4(self, name):
        fn, _ = FUNCTIONS[name]
        with pytest.raises(ValueError, match=r"boxes1 must have shape \(\.\.\., 4\).*\(3, 5\)"):
            fn(torch.zeros(3, 5), torch.zeros(2, 4))
        with pytest.raises(ValueError, match="boxes2"):
            fn(torch.zeros(3, 4), torch.zeros(4))

    def test_rejects_non_tensor_and_bool(self, name):
        fn, _ = FUNCTIONS[name]
        with pytest.raises(TypeError, match="boxes1 must be a torch.Tensor.*list"):
            fn([[0, 0, 1, 1]], torch.zeros(1, 4))
        with pytest.raises(TypeError, match="boxes2 must have a real floating or integer dtype"):
            fn(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.bool))

    def test_rejects_shapes_that_do_not_broadcast(self, name):
        fn, _ = FUNCTIONS[name]
        with pytest.raises(ValueError, match="aligned=True.*must broadcast.*\\(3, 4\\).*\\(2, 4\\)"):
            fn(torch.zeros(3, 4), torch.zeros(2, 4), aligned=True)
        with pytest.raises(ValueError, match="aligned=False.*\\(..., N, 4\\)"):
            fn(torch.zeros(4), torch.zeros(2, 4))
        with pytest.raises(ValueError, match="batch dimensions"):
            fn(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))

    def test_rejects_unknown_fmt_and_bad_eps(self, name):
        fn, _ = FUNCTIONS[name]
        with pytest.raises(ValueError, match="fmt must be one of 'xyxy', 'xywh', 'cxcywh'.*; got 'xyhw'"):
            fn(torch.zeros(1, 4), torch.zeros(1, 4), fmt="xyhw")
        with pytest.raises(ValueError, match="eps must be a positive number"):
            fn(torch.zeros(1, 4), torch.zeros(1, 4), eps=0.0)
        with pytest.raises(TypeError, match="aligned must be a bool"):
            fn(torch.zeros(1, 4), torch.zeros(1, 4), aligned="yes")

    @requires_cuda
    def test_cuda_matches_cpu(self, name):
        fn, _ = FUNCTIONS[name]
        a, b = random_boxes(64, seed=21, dtype=torch.float32), random_boxes(48, seed=22, dtype=torch.float32)
        assert_close(fn(a.cuda(), b.cuda()).cpu(), fn(a, b), torch.float32)


# CIoU holds α constant in backward by design, so gradcheck does not apply; test_losses checks its gradient
# against autograd through an independent formula.
@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(name, device):
    fn, _ = FUNCTIONS[name]
    a = random_boxes(4, seed=19, device=device).requires_grad_()
    b = random_boxes(3, seed=20, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, aligned=True), (a[:3], b))


def test_giou_and_diou_never_exceed_iou_and_ciou_never_exceeds_diou():
    a, b = random_boxes(60, seed=23), random_boxes(70, seed=24)
    iou = box_iou(a, b)
    assert (generalized_box_iou(a, b) <= iou + 1e-12).all()
    assert (distance_box_iou(a, b) <= iou + 1e-12).all()
    assert (complete_box_iou(a, b) <= distance_box_iou(a, b) + 1e-12).all()


def test_ciou_equals_diou_when_aspect_ratios_match():
    a = random_boxes(30, seed=25)
    centre = (a[:, :2] + a[:, 2:]) / 2 + 0.7
    half = (a[:, 2:] - a[:, :2]) * 0.8  # same aspect ratio, other size and place
    b = torch.cat([centre - half, centre + half], -1)
    torch.testing.assert_close(complete_box_iou(a, b, aligned=True), distance_box_iou(a, b, aligned=True))


def test_iou_of_disjoint_boxes_is_zero_whatever_the_distance():
    a = torch.tensor([[0.0, 0, 1, 1]])
    b = torch.tensor([[2.0, 0, 3, 1], [50.0, 50, 51, 51]])
    assert box_iou(a, b).tolist() == [[0.0, 0.0]]
    g = generalized_box_iou(a, b)[0]
    assert g[1] < g[0] < 0  # GIoU keeps falling with distance

