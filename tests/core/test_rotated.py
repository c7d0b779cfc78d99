"""Rotated boxes (boxloss/rotated.py and the rotated formats of the box functions and losses).

Values against an independent polygon computation (shapely, float64) and against torchvision's rotated
``box_iou``; the edge cases geometry promises (identical boxes, 180° turns, (w, h, θ) = (h, w, θ + 90°),
squares, coincident edges and vertices, touching boxes, tiny and huge boxes, huge angles); gradients
(gradcheck, zero-overlap handling); the compiled kernels against the formula; no NaN/Inf on a fuzz in every
dtype; formats, errors, operators under torch.compile / jit.trace / torch.func.
"""

import math

import pytest
import torch
from conftest import assert_close

import boxloss
from boxloss import kinds, rotated
from boxloss._utils import _reduce
from boxloss.backends import generated, ops
from boxloss.kinds import VARIANTS

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402

ROTATED_FUNCTIONS = {"iou": boxloss.box_iou, "giou": boxloss.generalized_box_iou,
                     "diou": boxloss.distance_box_iou}

# (public function, options) per registered rotated kind
CALLS = {
    "rotated_iou": (boxloss.iou_loss, {"zero_overlap": "none"}),
    "rotated_iou_distance": (boxloss.iou_loss, {}),
    "rotated_log_iou": (boxloss.log_iou_loss, {"zero_overlap": "none"}),
    "rotated_log_iou_distance": (boxloss.log_iou_loss, {}),
    "rotated_giou": (boxloss.giou_loss, {}),
    "rotated_diou": (boxloss.diou_loss, {}),
    "probiou_l1": (boxloss.probiou_loss, {}),
    "probiou_l2": (boxloss.probiou_loss, {"mode": "l2"}),
    **{f"gwd_{f}": (boxloss.gwd_loss, {"fun": f, "tau": 2.0}) for f in ("log1p", "sqrt", "none")},
    **{f"kld_{f}": (boxloss.kld_loss, {"fun": f, "tau": 1.5}) for f in ("log1p", "sqrt", "none")},
    **{f"kfiou_{f}": (boxloss.kfiou_loss, {"fun": f, "beta": 0.2}) for f in ("none", "ln", "exp")},
}
NAMES = sorted(CALLS)
GEOMETRIC = ["rotated_iou", "rotated_iou_distance", "rotated_log_iou", "rotated_log_iou_distance", "rotated_giou",
             "rotated_diou"]


def call(name, p, t, **kw):
    fn, options = CALLS[name]
    return fn(p, t, fmt="cxcywhr", **{**options, **kw})


def test_every_rotated_kind_is_tested():
    assert set(CALLS) == {name for name, v in VARIANTS.items() if v.columns == 5}


# ----------------------------------------------------------------------------------------------------------
# independent reference: shapely polygons in float64
# ----------------------------------------------------------------------------------------------------------
def polygon(box):
    cx, cy, w, h, r = (float(x) for x in box)
    c, s = math.cos(math.radians(r)), math.sin(math.radians(r))
    return Polygon([(cx + su * w / 2 * c + sv * h / 2 * s, cy - su * w / 2 * s + sv * h / 2 * c)
                    for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def shapely_iou(a, b):
    pa, pb = polygon(a), polygon(b)
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return inter / union if union > 0 else 0.0


def rotated_boxes(n, seed=0, spread=20.0, size=(1.0, 8.0), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * spread
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * (size[1] - size[0]) + size[0]
    r = torch.rand(n, 1, generator=g, dtype=torch.float64) * 360 - 180
    return torch.cat([xy, wh, r], 1).to(dtype)


def near_pairs(n, seed=0, dtype=torch.float64):
    """Overlapping pairs: the target moved, resized and turned a little."""
    g = torch.Generator().manual_seed(seed + 100)
    p = rotated_boxes(n, seed)
    t = p.clone()
    t[:, :2] += (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * p[:, 2:4] * 0.5
    t[:, 2:4] *= torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.7
    t[:, 4] += (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 60
    return p.to(dtype), t.to(dtype)


def far_pairs(n, seed=0, dtype=torch.float64):
    p = rotated_boxes(n, seed)
    t = rotated_boxes(n, seed + 1)
    t[:, 0] += 40
    return p.to(dtype), t.to(dtype)


# the cases the kernel has to get exactly right: (box a, box b)
SPECIAL = [
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, 0]),          # identical
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, 90]),         # a square turned by 90°
    ([1, 2, 4, 2, 30], [1, 2, 4, 2, 210]),       # turned by 180°
    ([1, 2, 4, 2, 30], [1, 2, 2, 4, 120]),       # (w, h, θ) = (h, w, θ + 90°)
    ([0, 0, 2, 2, 0], [2, 0, 2, 2, 0]),          # touching along an edge
    ([0, 0, 2, 2, 0], [2, 2, 2, 2, 0]),          # touching at a corner
    ([0, 0, 2, 2, 0], [1, 0, 2, 2, 0]),          # two coincident edges
    ([0, 0, 2, 2, 0], [1, 1, 2, 2, 0]),          # coincident vertex and crossing edges
    ([0, 0, 2, 2, 0], [0.5, 0.5, 1, 1, 0]),      # inside, touching at a corner
    ([0, 0, 4, 4, 0], [0, 0, 2, 2, 0]),          # concentric
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, 45]),         # a star
    ([0, 0, 4, 1, 0], [0, 0, 4, 1, 90]),         # a cross: no corner inside the other box
    ([0, 0, 2, 2, 30], [0, 0, 2, 2, 120]),
    ([0, 0, 2, 2, 10], [1e-9, 0, 2, 2, 10]),     # nearly identical
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, 1e-6]),       # nearly identical, turned
    ([1e4, -1e4, 3, 2, 1e4], [1e4 + 1, -1e4, 3, 2, -1e4]),  # far from the origin, huge angles
    ([0, 0, 10, 10, 0], [1, 1, 1e-3, 1e-3, 20]),  # tiny inside large
    ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),          # points
    ([0, 0, 0, 2, 0], [0, 0, 2, 2, 0]),          # zero width
    ([0, 0, 2, 2, 0], [5, 5, 1, 1, 0]),          # apart
]


def special_pairs(dtype=torch.float64):
    p = torch.tensor([a for a, _ in SPECIAL], dtype=dtype)
    t = torch.tensor([b for _, b in SPECIAL], dtype=dtype)
    return p, t


class TestIoUValues:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_pairwise_equals_shapely(self, dtype):
        a, b = rotated_boxes(40, 1, dtype=dtype), rotated_boxes(50, 2, dtype=dtype)
        got = boxloss.box_iou(a, b, fmt="cxcywhr")
        want = torch.tensor([[shapely_iou(x, y) for y in b.double()] for x in a.double()], dtype=torch.float64)
        assert (want > 0).float().mean() > 0.05  # the test sees overlapping pairs
        assert_close(got, want, dtype, atol=1e-12 if dtype == torch.float64 else 2e-6)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_special_cases_equal_shapely_pairwise_and_aligned(self, dtype):
        p, t = special_pairs(dtype)
        want = torch.tensor([shapely_iou(a, b) for a, b in zip(p.double(), t.double())], dtype=torch.float64)
        aligned = boxloss.box_iou(p, t, aligned=True, fmt="cxcywhr")
        pairwise = boxloss.box_iou(p, t, fmt="cxcywhr").diagonal()
        atol = 1e-12 if dtype == torch.float64 else 1e-6
        assert_close(aligned, want, dtype, atol=atol)
        assert_close(pairwise, want, dtype, atol=atol)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_equals_torchvision_for_ordinary_boxes(self, dtype):
        from torchvision.ops import box_iou

        a, b = rotated_boxes(60, 3, dtype=dtype), rotated_boxes(70, 4, dtype=dtype)
        assert_close(boxloss.box_iou(a, b, fmt="cxcywhr"), box_iou(a, b, fmt="cxcywhr"), dtype, atol=1e-5)

    @pytest.mark.parametrize("scale", [1e-2, 1e-3, 1e-5, 1e3, 1e5])
    def test_scale_invariant_where_torchvision_is_not(self, scale):
        # torchvision's kernel uses absolute tolerances (measured: 0.01 off at size 0.01, IoU 1.0 for 0.41 at
        # 0.001); boxloss measures in the pair's own scale, so scaled boxes give the same IoU
        a, b = near_pairs(30, 5)
        s = torch.tensor([scale, scale, scale, scale, 1.0], dtype=torch.float64)
        for dtype in (torch.float64, torch.float32):
            want = torch.tensor([shapely_iou(x, y) for x, y in zip(a, b)], dtype=torch.float64)
            got = boxloss.box_iou((a * s).to(dtype), (b * s).to(dtype), aligned=True, fmt="cxcywhr")
            assert_close(got, want, dtype, atol=1e-9 if dtype == torch.float64 else 2e-6)

    def test_symmetries(self):
        p = rotated_boxes(50, 6)
        p[:, 4] = torch.round(p[:, 4] * 64) / 64  # angles whose turned copies are exact
        turned = p + torch.tensor([0, 0, 0, 0, 180.0], dtype=torch.float64)
        swapped = p[:, [0, 1, 3, 2, 4]] + torch.tensor([0, 0, 0, 0, 90.0], dtype=torch.float64)
        wound = p + torch.tensor([0, 0, 0, 0, 360.0 * 27], dtype=torch.float64)
        for dtype in (torch.float64, torch.float32):
            x = p.to(dtype)
            itself = boxloss.box_iou(x, x, aligned=True, fmt="cxcywhr")
            assert_close(itself, torch.ones_like(itself), dtype, atol=1e-15 if dtype == torch.float64 else 1e-7)
            for other in (turned, swapped, wound):
                # the angle is reduced (exactly) before any trig: bit for bit the box against itself
                iou = boxloss.box_iou(x, other.to(dtype), aligned=True, fmt="cxcywhr")
                assert torch.equal(iou, itself), (dtype, (iou - itself).abs().max())

    def test_box_with_itself_is_one_and_area_zero_is_zero(self):
        p = rotated_boxes(20, 7)
        assert_close(boxloss.box_iou(p, p, aligned=True, fmt="cxcywhr"), torch.ones(20, dtype=torch.float64),
                     atol=1e-15)
        z = p.clone()
        z[:, 2] = 0
        assert torch.equal(boxloss.box_iou(z, z, aligned=True, fmt="cxcywhr"), torch.zeros(20, dtype=torch.float64))


class TestFormats:
    @pytest.mark.parametrize("fmt", ["xywhr", "xyxyxyxy"])
    @pytest.mark.parametrize("name", ["iou", "giou", "diou"])
    def test_other_formats_equal_cxcywhr(self, fmt, name):
        from torchvision.ops import box_convert

        fn = ROTATED_FUNCTIONS[name]
        a, b = rotated_boxes(20, 8), rotated_boxes(25, 9)
        a[:, 4] = a[:, 4] % 90  # torchvision's xyxyxyxy → cxcywhr gives angles in (−180, 180]
        b[:, 4] = b[:, 4] % 90
        want = fn(a, b, fmt="cxcywhr")
        got = fn(box_convert(a, "cxcywhr", fmt), box_convert(b, "cxcywhr", fmt), fmt=fmt)
        assert_close(got, want, atol=1e-10)

    def test_losses_accept_every_rotated_format(self):
        from torchvision.ops import box_convert

        p, t = near_pairs(10, 10)
        for name in ("rotated_iou_distance", "rotated_giou", "rotated_diou", "probiou_l1", "kld_log1p"):
            fn, options = CALLS[name]
            want = fn(p, t, fmt="cxcywhr", reduction="none", **options)
            for fmt in ("xywhr", "xyxyxyxy"):
                got = fn(box_convert(p, "cxcywhr", fmt), box_convert(t, "cxcywhr", fmt), fmt=fmt,
                         reduction="none", **options)
                assert_close(got, want, atol=1e-9)

    def test_leading_dimensions(self):
        p, t = near_pairs(24, 11)
        for name in ("rotated_giou", "gwd_log1p"):
            want = call(name, p, t, reduction="none")
            got = call(name, p.reshape(2, 3, 4, 5), t.reshape(2, 3, 4, 5), reduction="none")
            assert got.shape == (2, 3, 4)
            assert_close(got.reshape(-1), want)
        a, b = rotated_boxes(6, 12), rotated_boxes(5, 13)
        batched = boxloss.box_iou(torch.stack([a, a]), b[None], fmt="cxcywhr")
        assert batched.shape == (2, 6, 5)
        assert_close(batched[1], boxloss.box_iou(a, b, fmt="cxcywhr"))


class TestGIoUAndDIoU:
    def test_at_one_angle_they_equal_the_axis_aligned_ones(self):
        from torchvision.ops import box_convert

        a, b = rotated_boxes(30, 14), rotated_boxes(30, 15)
        for angle in (0.0, 90.0, 180.0):
            a[:, 4], b[:, 4] = angle, angle
            xa = box_convert(a[:, :4], "cxcywh", "xyxy")
            xb = box_convert(b[:, :4], "cxcywh", "xyxy")
            if angle == 90.0:  # the same boxes with width and height exchanged
                xa = box_convert(a[:, [0, 1, 3, 2]], "cxcywh", "xyxy")
                xb = box_convert(b[:, [0, 1, 3, 2]], "cxcywh", "xyxy")
            for name in ("iou", "giou", "diou"):
                fn = ROTATED_FUNCTIONS[name]
                assert_close(fn(a, b, fmt="cxcywhr"), fn(xa, xb), atol=1e-12)

    @pytest.mark.parametrize("name", ["iou", "giou", "diou"])
    def test_invariant_to_rotating_and_translating_the_image(self, name):
        fn = ROTATED_FUNCTIONS[name]
        a, b = near_pairs(30, 16)
        want = fn(a, b, aligned=True, fmt="cxcywhr")
        for phi in (17.0, 90.0, 133.0):
            c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))

            def turn(x, c=c, s=s, phi=phi):
                # the image turned by phi counter-clockwise (y points down): centres by (c, s; −s, c), angles + phi
                cx, cy = x[:, 0] * c + x[:, 1] * s + 5, -x[:, 0] * s + x[:, 1] * c - 3
                return torch.stack([cx, cy, x[:, 2], x[:, 3], x[:, 4] + phi], 1)

            assert_close(fn(turn(a), turn(b), aligned=True, fmt="cxcywhr"), want, atol=1e-10)

    def test_bounds_and_disjoint_values(self):
        a, b = far_pairs(40, 17)
        giou = boxloss.generalized_box_iou(a, b, aligned=True, fmt="cxcywhr")
        diou = boxloss.distance_box_iou(a, b, aligned=True, fmt="cxcywhr")
        assert (giou < 0).all() and (giou > -1).all() and (diou < 0).all() and (diou > -1).all()
        # farther apart along the line through the centres: lower
        a2 = a.clone()
        away = a[:, :2] - b[:, :2]
        a2[:, :2] += 10 * away / away.norm(dim=1, keepdim=True)
        assert (boxloss.generalized_box_iou(a2, b, aligned=True, fmt="cxcywhr") < giou).all()
        assert (boxloss.distance_box_iou(a2, b, aligned=True, fmt="cxcywhr") < diou).all()

    def test_enclosing_rectangle_hand_worked(self):
        # a 2×2 square at the origin and, as the target, the same square turned 45° centred at (3, 0). In the
        # target's frame (u, v) = ((1, −1), (1, 1))/√2 the square's corners project to u, v ∈ [−5/√2, −1/√2] and
        # the target spans [−1, 1]: the enclosing rectangle is (1 + 5/√2)² (the square's own frame would give
        # (4 + √2)·2√2: a different, smaller rectangle; not the one used)
        a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
        b = torch.tensor([[3.0, 0.0, 2.0, 2.0, 45.0]], dtype=torch.float64)
        side = 1 + 5 / math.sqrt(2)
        # the diamond's left corner is at x = 3 − √2 ≈ 1.586 > 1: disjoint, IoU 0
        want_giou = 0 - (side * side - 8) / (side * side)
        got = boxloss.generalized_box_iou(a, b, aligned=True, fmt="cxcywhr")
        assert_close(got, torch.tensor([want_giou], dtype=torch.float64), atol=1e-12)
        want_diou = -9 / (2 * side * side)
        got = boxloss.distance_box_iou(a, b, aligned=True, fmt="cxcywhr")
        assert_close(got, torch.tensor([want_diou], dtype=torch.float64), atol=1e-12)
        # the second argument's frame: swapping the boxes changes the value (the square's frame)
        swapped = boxloss.generalized_box_iou(b, a, aligned=True, fmt="cxcywhr")
        area = (4 + math.sqrt(2)) * 2 * math.sqrt(2)
        assert_close(swapped, torch.tensor([-(area - 8) / area], dtype=torch.float64), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# the losses and the kernels: one checklist for every rotated kind
# ----------------------------------------------------------------------------------------------------------
def mixed_pairs(dtype=torch.float64):
    a, b = near_pairs(200, 20)
    c, d = far_pairs(100, 21)
    e, f = special_pairs()
    g = rotated_boxes(30, 22)
    return torch.cat([a, c, e, g]).to(dtype), torch.cat([b, d, f, g]).to(dtype)


def _reference_and_grads(kind, p, t, eps=1e-7):
    pr = p.detach().clone().requires_grad_()
    tr = t.detach().clone().requires_grad_()
    loss = generated.reference(kind, pr, tr, eps)
    gp, gt = torch.autograd.grad(loss.sum(), (pr, tr), allow_unused=True)
    return loss.detach(), gp, gt


def _kind(name):
    fn, options = CALLS[name]
    params = VARIANTS[name].params
    return kinds.kind_of(name, *[options[k] for k in params])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_formula_and_its_autograd(backend, name, dtype):
    p, t = mixed_pairs(dtype)
    kind = _kind(name)
    loss, gp, gt = ops.aligned_loss_op(p, t, None, None, kind, 1e-7, False, 1.0, True, True)
    ref, rgp, rgt = _reference_and_grads(kind, p, t)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-3}
    assert_close(loss, ref, dtype, **tol)
    # gradients on the generic pairs: the special ones (identical, coincident edges, touching) sit on kinks where
    # the two implementations' roundings may pick different one-sided derivatives; there they must be finite
    generic = torch.ones(len(p), dtype=torch.bool)
    generic[300:] = False
    assert_close(gp[generic], rgp[generic], dtype, **tol)
    assert_close(gt[generic], rgt[generic], dtype, **tol)
    assert gp.isfinite().all() and gt.isfinite().all()


def test_the_hand_written_pairwise_iou_equals_the_formula():
    for dtype in (torch.float64, torch.float32):
        p, t = mixed_pairs(dtype)
        fast = ops.pairwise_score_op(p[None], t[None], "rotated_iou", 1e-7)[0]
        ref = ops.reference_pairwise("rotated_iou", p[None], t[None], 1e-7)[0]
        assert_close(fast, ref, dtype, atol=1e-12 if dtype == torch.float64 else 1e-6)
    assert "boxloss_rotated_iou_pairwise" == generated.pairwise_symbol("rotated_iou")


def test_pairwise_without_compiled_kernel_equals_the_kernel(monkeypatch):
    a, b = rotated_boxes(30, 23), rotated_boxes(20, 24)
    want = {n: f(a, b, fmt="cxcywhr") for n, f in ROTATED_FUNCTIONS.items()}
    monkeypatch.setattr(ops, "USE_COMPILED_CPU", False)
    monkeypatch.setattr(ops, "PAIRWISE_CHUNK_BYTES", 4096)
    for n, f in ROTATED_FUNCTIONS.items():
        assert_close(f(a, b, fmt="cxcywhr"), want[n])


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(backend, name):
    p, t = near_pairs(5, 25)
    a, b = far_pairs(3, 26)
    p, t = torch.cat([p, a]).requires_grad_(), torch.cat([t, b]).requires_grad_()
    if name.startswith("kfiou"):
        # the centre term's anchor (the target's sides, at least the prediction's) is held constant by
        # definition: the gradient is autograd's of the formula; finite differences apply to the prediction's
        # offset and angle where the target is the larger box (the anchor does not move with them)
        got = torch.autograd.grad(call(name, p, t, reduction="sum"), (p, t))
        with boxloss.backends.reference_path():
            want = torch.autograd.grad(call(name, p, t, reduction="sum"), (p, t))
        for g, w in zip(got, want):
            assert_close(g, w)
        big = t.detach().clone()
        big[:, 2:4] = p.detach()[:, 2:4] * 1.5
        big[:, 4] = p.detach()[:, 4] + 7.0
        assert torch.autograd.gradcheck(
            lambda xy, r: call(name, torch.cat([xy, p.detach()[:, 2:4], r], 1), big, reduction="none"),
            (p.detach()[:, :2].clone().requires_grad_(), p.detach()[:, 4:].clone().requires_grad_()))
        return
    assert torch.autograd.gradcheck(lambda x, y: call(name, x, y, reduction="none"), (p, t))
    assert torch.autograd.gradgradcheck(lambda x, y: call(name, x, y, reduction="sum"), (p[:3], t[:3]))


@pytest.mark.parametrize("name", ["iou", "giou", "diou"])
def test_box_functions_gradcheck_pairwise_and_aligned(name):
    fn = ROTATED_FUNCTIONS[name]
    a, b = near_pairs(4, 27)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, fmt="cxcywhr"), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, aligned=True, fmt="cxcywhr"), (a, b))


@pytest.mark.parametrize("name", NAMES)
def test_identical_and_equivalent_boxes(name):
    p = rotated_boxes(20, 28)
    p[:, 4] = torch.round(p[:, 4] * 64) / 64  # angles whose turned copies are exact in float32
    swapped = p[:, [0, 1, 3, 2, 4]] + torch.tensor([0, 0, 0, 0, 90.0], dtype=torch.float64)
    turned = p + torch.tensor([0, 0, 0, 0, -180.0], dtype=torch.float64)
    zero = 2 / 3 if name.startswith("kfiou") else 0.0  # KFIoU is at most 1/3 (the authors' loss, documented)
    tau = CALLS[name][1].get("tau")
    if tau is not None:  # GWD and KLD at distance 0: 1 − 1/τ
        zero = 1 - 1 / tau
    for dtype in (torch.float64, torch.float32):
        for other in (p, swapped, turned):
            loss = call(name, p.to(dtype), other.to(dtype), reduction="none")
            if name.startswith("kfiou_ln"):
                want = torch.full_like(loss, -math.log(1 / 3 + 1e-7))
            elif name.startswith("kfiou_exp"):
                want = torch.full_like(loss, math.exp(2 / 3) - 1)
            else:
                want = torch.full_like(loss, zero)
            # (KFIoU: its ε enters the denominator)
            atol = 2e-6 if dtype == torch.float32 or name.startswith("kfiou") else 1e-12
            assert_close(loss, want, dtype, atol=atol)
    # geometric losses: exactly 0, bit for bit, in float32 too (the angle is reduced before any trig)
    if not name.startswith("kfiou"):
        sq = torch.tensor([[3.0, 4.0, 2.5, 2.5, 17.0]])
        turned = call(name, sq, sq + torch.tensor([0, 0, 0, 0, 90.0]), reduction="sum")
        assert torch.equal(turned, call(name, sq, sq, reduction="sum"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_nan_in_nan_out(backend, name, dtype):
    p, t = near_pairs(8, 29, dtype=dtype)
    p[2, 4] = math.nan
    t[5, 0] = math.nan
    p.requires_grad_()
    loss = call(name, p, t, reduction="none")
    loss.sum().backward()
    nan = torch.zeros(8, dtype=torch.bool)
    nan[[2, 5]] = True
    assert torch.equal(loss.isnan(), nan)
    assert p.grad[nan].isnan().all() and p.grad[~nan].isfinite().all()


def _fuzz(n, seed, dtype):
    """Centres to 1e4, sides from 0 to 1e4 (a tenth zero, a tenth tiny), angles to ±1e4 degrees, and a fifth of
    the targets exactly equal or equivalent (coincident edges and vertices)."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * 1e4
    wh = 10 ** (torch.rand(n, 2, generator=g) * 6 - 2)
    kind = torch.randint(0, 10, (n, 1), generator=g)
    wh = torch.where(kind == 0, torch.zeros_like(wh), wh)
    wh = torch.where(kind == 1, wh * 1e-6, wh)
    r = (torch.rand(n, 1, generator=g) * 2 - 1) * 1e4
    r = torch.where(kind == 2, torch.round(r / 90) * 90, r)
    return torch.cat([xy, wh, r], 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fuzz_gives_no_nan_or_inf(dtype):
    n = 200_000
    p = _fuzz(n, 30, dtype)
    t = _fuzz(n, 31, dtype)
    q = n // 5
    t[:q] = (p[:q].float() + torch.tensor([0.3, -0.2, 0.5, 0.1, 3.0])).to(dtype)   # near
    t[q:2 * q] = p[q:2 * q]                                                           # identical
    t[2 * q:3 * q] = p[2 * q:3 * q][:, [0, 1, 3, 2, 4]] + torch.tensor([0, 0, 0, 0, 90.0]).to(dtype)
    p.requires_grad_()
    for name in NAMES:
        p.grad = None
        loss = call(name, p, t, reduction="none")
        assert loss.isfinite().all(), name
        loss.sum().backward()
        assert p.grad.isfinite().all(), name
    for fn in ROTATED_FUNCTIONS.values():
        assert fn(p.detach()[:300], t[:200], fmt="cxcywhr").isfinite().all()


@pytest.mark.parametrize("name", ["rotated_iou_distance", "rotated_giou", "probiou_l1", "kfiou_none"])
@pytest.mark.parametrize("reduction, avg_factor, weighted", [
    ("mean", None, False), ("sum", None, True), ("mean", 7.5, True), ("mean", torch.tensor(3.0), False),
    ("none", None, True)])
def test_reductions_weights_and_avg_factor(backend, name, reduction, avg_factor, weighted):
    p, t = mixed_pairs()
    weight = torch.rand(p.shape[0], dtype=torch.float64) if weighted else None
    per_box = call(name, p, t, reduction="none")
    got = call(name, p, t, reduction=reduction, weight=weight, avg_factor=avg_factor)
    assert_close(got, _reduce(per_box, reduction, weight, avg_factor, 1e-7))


class TestZeroOverlap:
    def test_disjoint_boxes_are_pulled_together(self):
        p, t = far_pairs(20, 32)
        for name in ("rotated_iou_distance", "rotated_log_iou_distance", "rotated_giou", "rotated_diou"):
            x = p.clone().requires_grad_()
            call(name, x, t, reduction="sum").backward()
            towards = (t[:, :2] - p[:, :2])
            assert ((-x.grad[:, :2] * towards).sum(1) > 0).all(), name

    def test_textbook_losses_have_no_gradient_when_disjoint(self):
        p, t = far_pairs(10, 33)
        for name in ("rotated_iou", "rotated_log_iou"):
            x = p.clone().requires_grad_()
            call(name, x, t, reduction="sum").backward()
            assert torch.equal(x.grad, torch.zeros_like(x.grad)), name

    def test_distance_term_hand_worked_and_continuous_at_contact(self):
        # a 2×2 square, and the same square turned 45° with its left corner 0.5 to the right of the square's edge
        r2 = math.sqrt(2)
        p = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
        t = torch.tensor([[1.5 + r2, 0.0, 2.0, 2.0, 45.0]], dtype=torch.float64)
        got = boxloss.iou_loss(p, t, fmt="cxcywhr")
        assert_close(got, torch.tensor(1 + 0.5 / (2 * r2), dtype=torch.float64), atol=1e-12)
        touching = torch.tensor([[1.0 + r2, 0.0, 2.0, 2.0, 45.0]], dtype=torch.float64)
        assert_close(boxloss.iou_loss(p, touching, fmt="cxcywhr"), torch.tensor(1.0, dtype=torch.float64))

    def test_descent_from_a_disjoint_start(self):
        # the IoU losses with the distance term pull with a constant force: every pair reaches overlap; GIoU,
        # DIoU, KLD and GWD pull more weakly from far away (their penalties saturate): the centres come closer
        # for every pair. (ProbIoU saturates completely: its Bhattacharyya distance is clamped at 100, as in the
        # authors' code, and 1 − e^−B is flat long before that; documented.)
        p, t = far_pairs(16, 34)
        for name in ("rotated_iou_distance", "rotated_log_iou_distance", "rotated_giou", "rotated_diou",
                     "kld_log1p", "gwd_log1p"):
            x = p.clone().requires_grad_()
            opt = torch.optim.SGD([x], lr=2.0)
            for _ in range(300):
                opt.zero_grad()
                call(name, x, t, reduction="sum").backward()
                opt.step()
            gap_before = (p[:, :2] - t[:, :2]).norm(dim=1)
            gap_after = (x.detach()[:, :2] - t[:, :2]).norm(dim=1)
            assert (gap_after < gap_before).all(), name
            if name.endswith("_distance"):
                assert (boxloss.box_iou(x.detach(), t, aligned=True, fmt="cxcywhr") > 0).all(), name


# ----------------------------------------------------------------------------------------------------------
# the Gaussian losses against the matrix formulas
# ----------------------------------------------------------------------------------------------------------
def _gaussian(box, k):
    cx, cy, w, h, r = (float(x) for x in box)
    th = math.radians(r)
    u = torch.tensor([math.cos(th), -math.sin(th)], dtype=torch.float64)
    v = torch.tensor([math.sin(th), math.cos(th)], dtype=torch.float64)
    return torch.tensor([cx, cy], dtype=torch.float64), w * w / k * torch.outer(u, u) + h * h / k * torch.outer(v, v)


def _matrix_losses(p, t):
    """The authors' formulas with 2 × 2 matrices (torch.linalg), float64."""
    mp, sp = _gaussian(p, 12)
    mt, st = _gaussian(t, 12)
    d = mp - mt
    s = (sp + st) / 2
    bd = d @ torch.linalg.inv(s) @ d / 8 + 0.5 * torch.log(torch.det(s) / torch.sqrt(torch.det(sp) * torch.det(st)))
    bd = min(bd.item(), 100.0)  # the authors' clamp
    out = {"probiou_l1": math.sqrt(1 - math.exp(-bd)), "probiou_l2": bd}
    mp, sp = _gaussian(p, 4)
    mt, st = _gaussian(t, 4)
    d = mp - mt
    w2 = d @ d + torch.trace(sp) + torch.trace(st) - 2 * torch.sqrt(
        torch.trace(sp @ st) + 2 * torch.sqrt(torch.det(sp) * torch.det(st)))
    dist = math.sqrt(w2) / (2 * (torch.det(sp) * torch.det(st)) ** 0.125)
    inv = torch.linalg.inv(sp)
    kl = 0.5 * (d @ inv @ d + torch.trace(inv @ st) + torch.log(torch.det(sp) / torch.det(st)) - 2)
    for fun, f in (("log1p", math.log1p), ("sqrt", math.sqrt), ("none", lambda x: x)):
        out[f"gwd_{fun}"] = 1 - 1 / (2.0 + f(dist))
        out[f"kld_{fun}"] = 1 - 1 / (1.5 + f(math.sqrt(kl)))
    sig = sp - sp @ torch.linalg.inv(sp + st) @ sp
    vb, vp, vt = (4 * torch.sqrt(torch.det(x)) for x in (sig, sp, st))
    kf = (vb / (vp + vt - vb)).item()
    th = math.radians(float(t[4]))
    du = abs(d[0] * math.cos(th) - d[1] * math.sin(th)) / float(t[2])
    dv = abs(d[0] * math.sin(th) + d[1] * math.cos(th)) / float(t[3])
    xy = sum(0.5 * x * x / 0.2 if x < 0.2 else x - 0.1 for x in (float(du), float(dv)))
    out["kfiou_none"] = xy + 1 - kf
    out["kfiou_ln"] = xy - math.log(kf)
    out["kfiou_exp"] = xy + math.exp(1 - kf) - 1
    return out


@pytest.mark.parametrize("seed", [40, 41])
def test_gaussian_losses_equal_the_matrix_formulas(seed):
    p, t = near_pairs(15, seed)
    a, b = far_pairs(5, seed)
    p, t = torch.cat([p, a]), torch.cat([t, b])
    want = [_matrix_losses(x, y) for x, y in zip(p, t)]
    for name in NAMES:
        if name.startswith("rotated"):
            continue
        got = call(name, p, t, reduction="none")
        expected = torch.tensor([w[name] for w in want], dtype=torch.float64)
        assert_close(got, expected, rtol=1e-6, atol=1e-6)  # (KFIoU's ε enters in the pair's scale)


def test_gaussian_hand_worked_values():
    box = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    moved = torch.tensor([[1.0, 0.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    # same covariance diag(16, 4)/12: B = ⅛ Δᵀ Σ⁻¹ Δ = ⅛ · 1 · 12/16 = 3/32
    assert_close(boxloss.probiou_loss(box, moved, mode="l2"), torch.tensor(3 / 32, dtype=torch.float64))
    # KL with equal covariances diag(4, 1): ½ Δᵀ Σ⁻¹ Δ = 1/8; loss = 1 − 1/(1 + ln(1 + √(1/8)))
    want = 1 - 1 / (1 + math.log1p(math.sqrt(1 / 8)))
    assert_close(boxloss.kld_loss(box, moved), torch.tensor(want, dtype=torch.float64))
    # GWD with equal covariances: d = 1, normalised by 2 (4 · 4)^⅛ · ... = 2 · (det diag(4,1))^¼ = 2√2
    want = 1 - 1 / (1 + math.log1p(1 / (2 * math.sqrt(2))))
    assert_close(boxloss.gwd_loss(box, moved), torch.tensor(want, dtype=torch.float64))


def test_gaussian_modules_and_options():
    p, t = near_pairs(10, 42)
    for module, fn, options in [
        (boxloss.ProbIoULoss(mode="l2"), boxloss.probiou_loss, {"mode": "l2"}),
        (boxloss.GWDLoss(fun="sqrt", tau=2.0), boxloss.gwd_loss, {"fun": "sqrt", "tau": 2.0}),
        (boxloss.KLDLoss(tau=0.0), boxloss.kld_loss, {"tau": 0.0}),
        (boxloss.KFIoULoss(fun="ln"), boxloss.kfiou_loss, {"fun": "ln"}),
    ]:
        assert_close(module(p, t), fn(p, t, **options))
        assert "fmt='cxcywhr'" in repr(module)
    # tau < 1: the distance itself (the authors' convention)
    d = boxloss.kld_loss(p, t, tau=0.0, fun="none", reduction="none")
    assert_close(boxloss.kld_loss(p, t, tau=1.0, fun="none", reduction="none"), 1 - 1 / (1 + d))
    with pytest.raises(ValueError, match="mode must be one of"):
        boxloss.ProbIoULoss(mode="l3")
    with pytest.raises(ValueError, match="fun must be one of"):
        boxloss.gwd_loss(p, t, fun="log")
    with pytest.raises(ValueError, match="tau"):
        boxloss.kld_loss(p, t, tau=-1.0)
    with pytest.raises(ValueError, match="beta"):
        boxloss.kfiou_loss(p, t, beta=0.0)


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    p = torch.rand(3, 5)
    with pytest.raises(ValueError, match="CIoU's aspect term"):
        boxloss.complete_box_iou(p, p, fmt="cxcywhr")
    with pytest.raises(ValueError, match="rotated boxes are supported by"):
        boxloss.ciou_loss(p, p, fmt="cxcywhr")
    with pytest.raises(ValueError, match="rotated boxes are supported by"):
        boxloss.siou_loss(p, p, fmt="xywhr")
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(\.\.\., 5\)"):
        boxloss.box_iou(torch.rand(3, 4), p, fmt="cxcywhr")
    with pytest.raises(ValueError, match=r"pred must have shape \(\.\.\., 8\)"):
        boxloss.giou_loss(p, p, fmt="xyxyxyxy")
    with pytest.raises(ValueError, match="fmt must be one of 'cxcywhr'"):
        boxloss.probiou_loss(p, p, fmt="xyxy")
    with pytest.raises(ValueError, match="fmt must be one of 'cxcywhr'"):
        boxloss.GWDLoss(fmt="xyxy")
    assert boxloss.GIoULoss(fmt="cxcywhr")(p, p).shape == ()
    with pytest.raises(TypeError, match="boxes2 must be a torch.Tensor of shape"):
        boxloss.box_iou(p, [[0, 0, 1, 1, 0]], fmt="cxcywhr")


def test_empty_inputs():
    e = torch.zeros(0, 5)
    assert boxloss.box_iou(e, torch.rand(3, 5), fmt="cxcywhr").shape == (0, 3)
    for name in NAMES:
        x = e.clone().requires_grad_()
        loss = call(name, x, e)
        loss.backward()
        assert loss.item() == 0 and x.grad.shape == (0, 5)


# ----------------------------------------------------------------------------------------------------------
# operators: torch.compile, jit.trace, torch.func
# ----------------------------------------------------------------------------------------------------------
def test_compile_trace_and_func():
    p, t = near_pairs(12, 43, dtype=torch.float32)
    p.requires_grad_()

    def f(a, b):
        return boxloss.giou_loss(a, b, fmt="cxcywhr") + boxloss.kld_loss(a, b)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(p, t)
    (g,) = torch.autograd.grad(got, p)
    want = f(p, t)
    (wg,) = torch.autograd.grad(want, p)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, wg)
    traced = torch.jit.trace(lambda a, b: boxloss.iou_loss(a, b, fmt="cxcywhr", reduction="none"), (p.detach(), t))
    assert "boxloss::aligned_loss" in str(traced.graph)
    pd = p.detach().double()
    td = t.double()
    h = torch.func.hessian(lambda a: boxloss.probiou_loss(a, td[:3], reduction="sum"))(pd[:3])
    with boxloss.backends.reference_path():
        assert_close(h, torch.func.hessian(lambda a: boxloss.probiou_loss(a, td[:3], reduction="sum"))(pd[:3]))
    v = torch.func.vmap(lambda a: boxloss.diou_loss(a, td, fmt="cxcywhr", reduction="none"))(pd[None].expand(2, -1, -1))
    assert_close(v[1], boxloss.diou_loss(pd, td, fmt="cxcywhr", reduction="none"))


def test_opcheck_on_a_rotated_kind(backend):
    p, t = near_pairs(12, 44, dtype=torch.float32)
    torch.library.opcheck(torch.ops.boxloss.aligned_loss.default,
                          (p.requires_grad_(), t, None, None, "rotated_giou", 1e-7, False, 1.0, True, False))
    a, b = rotated_boxes(4, 45, dtype=torch.float32), rotated_boxes(3, 46, dtype=torch.float32)
    torch.library.opcheck(torch.ops.boxloss.pairwise_score.default, (a[None], b[None], "rotated_iou", 1e-7))


def test_the_rotated_library_is_generated_and_built():
    source = generated.c_source("rotated")
    for name in CALLS:
        assert f"void {generated.symbol(name)}_f32(" in source
    assert "boxloss_rotated_iou_pairwise" in source and "boxloss_pw_rotated_giou_f64" in source
    from boxloss.backends import cpu

    if cpu.load() is not None:
        assert cpu.load_variants("rotated") is not None
        assert cpu.variants_status("rotated")["backend"] == "compiled C kernel"


def test_features_and_canonical_angle():
    from boxloss.expr import TorchMath

    m = TorchMath(1e-7)
    r = torch.tensor([0.0, 89.999, 90.0, 179.0, 180.0, -90.0, -1e4, 1e4])
    w, h = torch.full_like(r, 3.0), torch.full_like(r, 1.0)
    cw, ch, cr = rotated.canonical(w, h, r, m)
    assert ((cr >= 0) & (cr < 90)).all()
    # same rectangle: the corners as a set
    for i in range(len(r)):
        a = rotated_boxes(1, 47)
        x = torch.tensor([[0.0, 0.0, 3.0, 1.0, float(r[i])]], dtype=torch.float64)
        y = torch.tensor([[0.0, 0.0, float(cw[i]), float(ch[i]), float(cr[i])]], dtype=torch.float64)
        assert_close(boxloss.box_iou(x, y, aligned=True, fmt="cxcywhr"), torch.ones(1, dtype=torch.float64),
                     atol=1e-6)
        del a


def test_pairwise_backward_runs_in_bounded_row_chunks(monkeypatch):
    # the backward of the pairwise scores recomputes the reference; for rotated boxes (~400 temporaries per
    # pair) it runs in row chunks: the gradients equal the unchunked ones, first and second order
    a, b = rotated_boxes(9, 48), rotated_boxes(7, 49)
    a.requires_grad_()
    b.requires_grad_()
    want = torch.autograd.grad(boxloss.generalized_box_iou(a, b, fmt="cxcywhr").square().sum(), (a, b))
    monkeypatch.setattr(ops, "PAIRWISE_CHUNK_BYTES", 400 * 7 * 8 * 2)  # two rows per chunk
    got = torch.autograd.grad(boxloss.generalized_box_iou(a, b, fmt="cxcywhr").square().sum(), (a, b),
                              create_graph=True)
    for x, y in zip(got, want):
        assert_close(x, y)
    assert torch.autograd.gradcheck(lambda x, y: boxloss.box_iou(x, y, fmt="cxcywhr"), (a[:3], b[:2]))


def test_closed_form_chunks_bound_the_graph_memory_on_accelerators():
    # on CUDA the aligned rotated losses run the generated closed form, which keeps one value per graph node and
    # box until the reverse pass: the chunk keeps that under CLOSED_FORM_BYTES
    for kind in ("rotated_iou_distance", "rotated_giou", _kind("kld_log1p"), _kind("kfiou_none")):
        rows = generated.closed_form_rows(kind, 4)
        nodes = len(generated._program(kinds.parse(kind)[0])[0])
        assert 1024 <= rows and 2 * nodes * rows * 4 <= generated.CLOSED_FORM_BYTES


def test_every_kind_takes_the_devices_kernel(monkeypatch):
    # on CUDA, _ops_for gives the Triton operators: the rotated kinds and the axis-aligned variants (kernels
    # generated from their formulas) go there, as the classic losses do
    from boxloss.backends import dispatch

    calls = []

    def fake_op(*args):
        calls.append(args[4])
        return ops.aligned_loss_op(*args)

    monkeypatch.setattr(dispatch, "_ops_for", lambda x: (fake_op, ops.pairwise_score_op))
    monkeypatch.setattr(dispatch, "_run_guarded", lambda x, call, op, fallback, *args: call(op, *args))
    p, t = near_pairs(4, 50)
    boxloss.giou_loss(p, t, fmt="cxcywhr")
    boxloss.kld_loss(p, t)
    boxloss.siou_loss(p[:, :4], p[:, :4] + 1)
    assert calls == ["rotated_giou", kinds.kind_of("kld_log1p", 1.0), kinds.kind_of("siou", 4.0)]


# ----------------------------------------------------------------------------------------------------------
# precision where training converges: nearly parallel, nearly identical boxes (float32 against float64)
# ----------------------------------------------------------------------------------------------------------
def converged_pairs(n, seed, lo, hi):
    """Targets 40–200 px anywhere in ±500 px at any angle; predictions equal but turned by |Δθ| in [lo, hi]
    degrees (log-uniform, either sign), a third also moved and resized by up to 5e-4 px. float32."""
    g = torch.Generator().manual_seed(seed)
    t = torch.cat([(torch.rand(n, 2, generator=g) * 2 - 1) * 500, 40 + torch.rand(n, 2, generator=g) * 160,
                   (torch.rand(n, 1, generator=g) * 2 - 1) * 180], 1)
    err = 10 ** (math.log10(lo) + torch.rand(n, generator=g, dtype=torch.float64) * math.log10(hi / lo))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    p = t.clone()
    p[:, 4] = (t[:, 4].double() + sign * err).float()
    moved = torch.rand(n, 1, generator=g) < 1 / 3
    p[:, :4] += (torch.rand(n, 4, generator=g) - 0.5) * 1e-3 * moved
    return p, t


def _loss_and_angle_gradient(p, t, dtype):
    x = p.to(dtype).detach().clone().requires_grad_()
    loss = boxloss.iou_loss(x, t.to(dtype), fmt="cxcywhr", reduction="none")
    loss.sum().backward()
    return loss.detach().double(), x.grad[:, 4].double()


@pytest.mark.parametrize("lo, hi", [(1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1)])
def test_float32_near_parallel_losses_and_angle_gradients_match_float64(backend, lo, hi):
    # before the frame of the target, shared crossings and the shape derivative: 1 − IoU off by up to 0.67 and
    # 41 % of the angle gradients of the wrong sign for angle errors below 0.01°
    p, t = converged_pairs(20_000, 60, lo, hi)
    l32, g32 = _loss_and_angle_gradient(p, t, torch.float32)
    l64, g64 = _loss_and_angle_gradient(p, t, torch.float64)  # the same float32 boxes, computed in float64
    assert (l32 - l64).abs().max() < 1e-5
    wrong = ((g32 * g64) < 0).double().mean()
    assert wrong <= 1e-3, f"{float(wrong):.2%} of the angle gradients have the wrong sign"
    # and the gradients stay of the size of the true ones (the crossings' 1/sin δ derivatives do not leak)
    assert g32.abs().max() <= 2 * g64.abs().max()


def test_near_parallel_pairwise_iou_matches_float64():
    p, t = converged_pairs(300, 61, 1e-4, 1e-1)
    want = boxloss.box_iou(p.double(), t.double(), fmt="cxcywhr")
    got = boxloss.box_iou(p, t, fmt="cxcywhr")  # the hand-written C kernel on the diagonal, the skip elsewhere
    assert (got.double() - want).abs().max() < 1e-5
    with boxloss.backends.reference_path():
        ref = boxloss.box_iou(p, t, fmt="cxcywhr")
    assert (ref.double() - want).abs().max() < 1e-5


def test_review_reproducers_near_parallel():
    a = torch.tensor([[184.48805, -166.29189, 80.465729, 46.270382, -135.69545]])
    b = a.clone()
    b[0, 4] = -135.69501
    want = boxloss.box_iou(a.double(), b.double(), fmt="cxcywhr")  # 1 − 1.2e-5
    for fn in (lambda: boxloss.box_iou(a, b, fmt="cxcywhr"), lambda: boxloss.box_iou(a, b, aligned=True,
                                                                                             fmt="cxcywhr")):
        assert abs(float(fn().reshape(())) - float(want)) < 1e-6  # was 0.59999
    for path in ("fast", "reference"):
        p = torch.tensor([[0.0, 0.0, 40.0, 20.0, 60.001]], requires_grad=True)
        t = torch.tensor([[0.0, 0.0, 40.0, 20.0, 60.0]])
        if path == "fast":
            loss = boxloss.iou_loss(p, t, fmt="cxcywhr")
        else:
            with boxloss.backends.reference_path():
                loss = boxloss.iou_loss(p, t, fmt="cxcywhr")
        loss.backward()
        # true: 1 − IoU = 2.18e-5 and dθ = +0.0218 (was 0.0170 and −16.9 on the fast path)
        assert abs(loss.item() - 2.1816e-5) < 2e-7, path
        assert abs(p.grad[0, 4].item() - 0.021816) < 1e-4, path


def test_float64_tiny_turn_equals_shapely():
    t = torch.tensor([[0.0, 0.0, 40.0, 20.0, 60.0]], dtype=torch.float64)
    for turn in (1e-6, 1e-4, 1e-2):
        p = t.clone()
        p[0, 4] += turn
        want = 1 - shapely_iou(p[0], t[0])
        got = 1 - boxloss.box_iou(p, t, aligned=True, fmt="cxcywhr").item()
        assert abs(got - want) <= 1e-6 * want, (turn, got, want)  # was 1.02e-8 against 2.18e-8 at 1e-6°


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_thin_boxes_have_iou_one(backend, dtype):
    # before: the 64-ulp snapping dropped both long edges of a 1e6:1 box, IoU 0
    sides = [(1000, 1e-3), (1e-3, 1000), (1e4, 1e-4), (1, 1e-7), (3e7, 2.0)]
    b = torch.tensor([[5.0, -7.0, w, h, r] for w, h in sides for r in (0.0, 10.0, 90.0, -33.3, 1e4)], dtype=dtype)
    ones = torch.ones(len(b), dtype=dtype)
    assert torch.equal(boxloss.box_iou(b, b, aligned=True, fmt="cxcywhr"), ones)
    assert torch.equal(boxloss.box_iou(b, b, fmt="cxcywhr").diagonal(), ones)
    for fn in (boxloss.iou_loss, boxloss.giou_loss, boxloss.diou_loss, boxloss.log_iou_loss):
        assert torch.equal(fn(b, b, fmt="cxcywhr", reduction="none"), torch.zeros_like(ones)), fn.__name__


def test_identical_boxes_cost_exactly_zero_with_zero_gradient_on_every_path(backend):
    # before (FMA contraction in the C kernels): giou_loss 0.01275 for a 1e6:1 box at 10°, identical boxes at
    # 1e4° cost 6e-8, and a float64 identical-box gradient of (−63.4, −11.2) in w, h
    b = torch.tensor([[0.0, 0.0, 1000.0, 1e-3, 10.0], [3.0, 4.0, 5.0, 2.0, 1e4], [1.0, 1.0, 7.0, 3.0, -1e4]])
    for dtype in (torch.float32, torch.float64):
        for fn in (boxloss.iou_loss, boxloss.giou_loss, boxloss.diou_loss):
            p = b.to(dtype).detach().clone().requires_grad_()
            loss = fn(p, b.to(dtype), fmt="cxcywhr", reduction="none")
            assert torch.equal(loss, torch.zeros(3, dtype=dtype)), (fn.__name__, dtype, loss)
            loss.sum().backward()
            # a kink: any one-sided derivative of the sides, bounded by that of the box's own area
            assert (p.grad[:, 2:4].abs() * b[:, 2:4].to(dtype) <= 1.0 + 1e-6).all(), (fn.__name__, p.grad)


def test_float32_iou_of_ordinary_boxes_is_as_accurate_as_torchvisions():
    # before: 5.5e-6 (torchvision: 5.3e-7); the exact reference is shapely on the float32-rounded boxes
    from torchvision.ops import box_iou as tv_box_iou

    for a, b in ((rotated_boxes(300, 1), rotated_boxes(300, 2)), near_pairs(300, 3)):
        a32, b32 = a.float(), b.float()
        want = torch.tensor([shapely_iou(x, y) for x, y in zip(a32.double(), b32.double())], dtype=torch.float64)
        ours = (boxloss.box_iou(a32, b32, aligned=True, fmt="cxcywhr").double() - want).abs().max()
        theirs = (tv_box_iou(a32, b32, fmt="cxcywhr").diagonal().double() - want).abs().max()
        assert ours < 1e-6 and ours <= 2 * theirs, (float(ours), float(theirs))


# ----------------------------------------------------------------------------------------------------------
# Gaussian losses at the edges
# ----------------------------------------------------------------------------------------------------------
def test_kfiou_is_bounded_for_a_point_target():
    # before: 8.4e10 (float32) and 4.5e19 (float64) with a point target, gradients to 4.5e22; 5e3 for a 1 × 1
    # prediction 0.5 px from a point
    near = boxloss.kfiou_loss(torch.tensor([[0.5, 0.0, 1.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]]))
    # smooth-L1(0.5 / (1 · 16/1000)) + (1 − KFIoU ≈ 0): the anchor is 16/1000 of the prediction
    assert near.item() == pytest.approx((0.5 / 0.016 - 0.5 / 9) + 1.0, abs=1e-3)
    g = torch.Generator().manual_seed(70)
    n = 2000
    p = torch.cat([(torch.rand(n, 2, generator=g) * 2 - 1) * 1e3, torch.rand(n, 2, generator=g) * 100,
                   torch.rand(n, 1, generator=g) * 360], 1)
    t = p.clone()
    t[:, :2] += torch.randn(n, 2, generator=g) * 50
    t[:, 2:4] = 0  # point targets
    t[n // 2:, :2] = p[n // 2:, :2] + 1e3  # far
    for dtype in (torch.float32, torch.float64):
        x = p.to(dtype).detach().clone().requires_grad_()
        loss = boxloss.kfiou_loss(x, t.to(dtype), reduction="none")
        loss.sum().backward()
        distance = (p[:, :2] - t[:, :2]).norm(dim=1).to(dtype)
        side = p[:, 2:4].min(1).values.to(dtype)
        # the centre term: at most 62.5 |offset| / the prediction's smaller side per axis, 1 − KFIoU ≤ 1
        assert (loss <= 2 * 62.5 * distance / side.clamp_min(1e-3) + 1.0).all()
        assert x.grad.isfinite().all() and x.grad.abs().max() < 1e5
    both = boxloss.kfiou_loss(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]]))
    assert both.item() <= 2e4 + 1  # two points: 1e4 per axis at most


@pytest.mark.parametrize("fun", ["log1p", "sqrt", "none"])
def test_gwd_and_kld_with_tau_zero_have_finite_gradients_on_identical_boxes(backend, fun):
    # before: GWD with τ = 0 (documented as valid) gave NaN gradients in w, h on the fast path
    b = torch.tensor([[3.0, 4.0, 5.0, 2.0, 17.0], [0.0, 0.0, 3.0, 3.0, 0.0]], dtype=torch.float64)
    for fn in (boxloss.gwd_loss, boxloss.kld_loss):
        for tau in (0.0, 0.5):
            p = b.clone().requires_grad_()
            loss = fn(p, b, tau=tau, fun=fun)
            loss.backward()
            assert loss.item() == 0.0 and p.grad.isfinite().all(), (fn.__name__, tau)


def test_probiou_of_two_points_apart_has_finite_gradients_on_the_reference_path():
    # before: NaN angle gradients on the reference path (the quadratic form of two points ~1e23 overflowed in
    # its derivatives, under the clamp at 100)
    a = torch.tensor([[1.0, 2.0, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, 1e-3, 10.0]])
    b = torch.tensor([[3.0, 2.0, 0.0, 0.0, 10.0], [40.0, 0.0, 1e-3, 0.0, 80.0]])
    for mode in ("l1", "l2"):
        for path in ("fast", "reference"):
            x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
            if path == "reference":
                with boxloss.backends.reference_path():
                    loss = boxloss.probiou_loss(x, y, mode=mode, reduction="sum")
            else:
                loss = boxloss.probiou_loss(x, y, mode=mode, reduction="sum")
            loss.backward()
            assert loss.isfinite() and x.grad.isfinite().all() and y.grad.isfinite().all(), (mode, path)
            assert loss.item() == pytest.approx(2.0 if mode == "l1" else 200.0, rel=1e-6)


def test_pairwise_rotated_iou_propagates_nan_to_far_apart_pairs():
    # the hand-written C kernel skips pairs whose extents are apart; a NaN coordinate must still give NaN there,
    # as the reference gives (found by python -m boxloss.info --check)
    a = torch.tensor([[float("nan"), 0.0, 10.0, 10.0, 0.0], [0.0, 0.0, 10.0, 10.0, 30.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 500.0, 10.0, 10.0, 0.0], [1.0, 1.0, 10.0, 10.0, 0.0]], dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        got = boxloss.box_iou(a.to(dtype), b.to(dtype), fmt="cxcywhr")
        with boxloss.backends.reference_path():
            ref = boxloss.box_iou(a.to(dtype), b.to(dtype), fmt="cxcywhr")
        assert torch.isnan(got[0]).all() and torch.isnan(ref[0]).all()
        assert got[1, 0] == 0 and torch.isfinite(got[1]).all()

