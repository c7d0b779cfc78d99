"""Rotated-box geometry: exact IoU, GIoU and DIoU of two rotated rectangles, in one place.

A rotated box is ``(cx, cy, w, h, θ)`` (torchvision's ``cxcywhr``): centre, width, height and the angle in
degrees, counter-clockwise in the image, so that the width runs along ``u = (cos θ, −sin θ)`` and the height
along ``v = (sin θ, cos θ)``. ``xywhr`` and ``xyxyxyxy`` are converted to it as ``torchvision.ops.box_convert``
converts them.

The formulas are written once against the math namespace of :mod:`boxloss._fast.expr`, like the loss variants:
evaluated on tensors they are the reference (differentiated by autograd); traced, they become the compiled CPU
kernels (aligned losses with their gradient in one pass, and the pairwise scores without gradient), the Triton
kernels for CUDA (the same two) and the PyTorch closed form used where neither can run.

How the intersection is computed (exactly, with no polygon clipping loop and no sorting):

* Green's theorem: the area of ``A ∩ B`` is ½ ∮ x dy − y dx along its boundary, which is made of the parts of
  each rectangle's edges that lie inside the other rectangle. For an edge ``P → P + E`` the part inside the
  other box is the parameter interval ``[lo, hi]`` left after clipping against that box's four half-planes
  (Cyrus–Beck), and it contributes ``½ (hi − lo) · (P × E)``. Eight edges, four planes each: straight-line code
  that differentiates like any other formula.
* Coordinates are taken relative to the centre of the smaller box and divided by the largest half-side (both
  held constant: every quantity here is a ratio, invariant to them), so tiny and huge boxes are computed with the
  same relative precision — torchvision's kernel uses absolute tolerances and is wrong for boxes of size 0.01.
* Signed distances within ``64 ulp`` of a plane count as on it. An edge lying on an edge of the other box is
  counted once when the two boxes are on the same side of it (from the first box only) and not at all when they
  are on opposite sides (touching boxes): without this rule coincident edges, which identical boxes, squares and
  boxes turned by 90° all have, would be counted twice or not at all.

GIoU's enclosing region and DIoU's enclosing diagonal use the smallest rectangle enclosing both boxes that is
aligned with the second box (the target, in the losses). It is rotation invariant, continuous, a closed form,
and for two boxes at the same angle (θ = 0 in particular) it is exactly the enclosing box of the axis-aligned GIoU
and DIoU. It makes rotated GIoU and DIoU asymmetric in their two arguments (symmetric at equal angles). The
rotated regression simulation chose it (``benchmarks/RESULTS.md``, "Rotated boxes"): against the convex hull of
the eight corners (hull area for GIoU, hull diameter for DIoU), the smaller of the two boxes' aligned rectangles,
and the axis-aligned box of the corners (used by several code bases, not rotation invariant), the target-aligned
rectangle ended with the smallest error for both GIoU and DIoU; a frame that follows the prediction pays the
prediction for turning to shrink its own enclosure.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor

from .boxes import LOG_IOU_LINEAR_BELOW

FEATURES = 6  # per-box columns of the pairwise kernels: (cx, cy, w/2, h/2, cos θ, sin θ)
DEGREE = math.pi / 180
SNAP_ULPS = 64  # distances this many ulps (of the pair's coordinate scale) from a plane count as on it

# the edges of a box as corners k → k+1, corners at (σu·w/2, σv·h/2) in the box's frame, counter-clockwise
_CORNER_SIGNS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def canonical(w, h, r, m):
    """The same rectangle with its angle in [0°, 90°): ``(w, h, θ)`` → ``(h, w, θ − 90°)`` and ``θ − 180°`` are
    the same box. Reducing first makes the symmetries exact in floating point — the box turned by 180°, and
    ``(h, w, θ + 90°)``, give bitwise the same sides and angle — and keeps sin/cos accurate for θ = ±1e4°.
    The reduction has derivative 1 in θ (``floor`` has none)."""
    quarter = m.floor(r * (1.0 / 90.0))
    rr = r - 90.0 * quarter
    # rounding can land r − 90k on 90 (r just under a multiple of 90): fold it back
    over = rr >= 90.0
    rr = m.where(over, rr - 90.0, rr)
    quarter = m.where(over, quarter + 1.0, quarter)
    odd = (quarter - 2.0 * m.floor(quarter * 0.5)) == 1.0
    return m.where(odd, h, w), m.where(odd, w, h), rr


def features(box, m):
    """(cx, cy, w/2, h/2, cos θ, sin θ) of the five columns of a cxcywhr box (sizes clamped at 0, the angle
    reduced by :func:`canonical`)."""
    cx, cy, w, h, r = box
    w, h, r = canonical(w, h, r, m)
    rad = r * DEGREE
    return (cx, cy, m.clamp_min(w, 0.0) * 0.5, m.clamp_min(h, 0.0) * 0.5, m.cos(rad), m.sin(rad))


def _nan_guard(values):
    """0 for finite inputs, NaN when any input is NaN or infinite (x − x): NaN in, NaN out."""
    total = values[0] - values[0]
    for x in values[1:]:
        total = total + (x - x)
    return total


class RotatedPair:
    """Lazily computed geometry of two rotated boxes given as features (:func:`features`); ``b`` is the target
    (the zero-overlap term is normalised by its diagonal)."""

    def __init__(self, fa, fb, m) -> None:
        self.fa, self.fb, self.m = fa, fb, m

    # the common frame -------------------------------------------------------------------------------------
    @cached_property
    def _frame(self):
        m = self.m
        xa, ya, aa, ba = self.fa[:4]
        xb, yb, ab, bb = self.fb[:4]
        smaller = aa * ba <= ab * bb
        ox = m.detach(m.where(smaller, xa, xb))
        oy = m.detach(m.where(smaller, ya, yb))
        dx, dy = xa - xb, ya - yb
        spread = m.abs(m.detach(dx)) + m.abs(m.detach(dy))
        half = m.maximum(m.maximum(aa, ba), m.maximum(ab, bb))
        # a zero-size pair far apart: the offset sets the unit (keeps squares finite); both zero: any unit
        unit = m.detach(m.clamp_min(m.maximum(half, spread * m.ulp), 1e-30))
        return ox, oy, unit

    def _box(self, f):
        x, y, a, b, c, s = f
        ox, oy, unit = self._frame
        return (x - ox) / unit, (y - oy) / unit, a / unit, b / unit, c, s

    @cached_property
    def a(self):
        return self._box(self.fa)

    @cached_property
    def b(self):
        return self._box(self.fb)

    @cached_property
    def area_a(self):
        return 4 * self.a[2] * self.a[3]

    @cached_property
    def area_b(self):
        return 4 * self.b[2] * self.b[3]

    @staticmethod
    def _corners(box):
        x, y, a, b, c, s = box
        # u = (c, −s), v = (s, c)
        return [(x + su * a * c + sv * b * s, y - su * a * s + sv * b * c) for su, sv in _CORNER_SIGNS]

    @staticmethod
    def _distances(box, other):
        """Signed distances of ``box``'s corners to ``other``'s four edge lines (outward normals +u, −u, +v, −v;
        ≤ 0 inside), as a 4 × 4 table, from the frame-to-frame dot products (no corner coordinates needed)."""
        x, y, a, b, c, s = box
        xo, yo, ao, bo, co, so = other
        rx, ry = x - xo, y - yo
        pu = rx * co - ry * so  # u_o · r
        pv = rx * so + ry * co  # v_o · r
        uu = c * co + s * so  # u_o · u
        uv = s * co - c * so  # u_o · v
        vu = c * so - s * co  # v_o · u
        vv = s * so + c * co  # v_o · v
        rows = []
        for su, sv in _CORNER_SIGNS:
            proj_u = pu + su * a * uu + sv * b * uv
            proj_v = pv + su * a * vu + sv * b * vv
            rows.append((proj_u - ao, -proj_u - ao, proj_v - bo, -proj_v - bo))
        return rows, (uu, uv, vu, vv)

    @cached_property
    def _table_ab(self):
        return self._distances(self.a, self.b)  # corners of a against the edges of b

    @cached_property
    def _table_ba(self):
        return self._distances(self.b, self.a)

    @cached_property
    def _tolerance(self):
        ax, ay = self.a[:2]
        bx, by = self.b[:2]
        m = self.m
        scale = 1 + m.abs(ax) + m.abs(ay) + m.abs(bx) + m.abs(by)
        return m.detach(scale * (SNAP_ULPS * m.ulp))

    def _edge_sum(self, box, table, dots, first: bool):
        """½ Σ over ``box``'s edges of (hi − lo)·(P × E): its boundary's share of the intersection's area."""
        m = self.m
        tol = self._tolerance
        d = [[m.where(m.abs(x) <= tol, 0.0, x) for x in row] for row in table]
        uu, uv, vu, vv = dots
        # outward normals of this box's edges k (−v, +u, +v, −u) dotted with the other's planes (+u, −u, +v, −v)
        normal_dots = ((-uv, uv, -vv, vv), (uu, -uu, vu, -vu), (uv, -uv, vv, -vv), (-uu, uu, -vu, vu))
        corners = self._corners(box)
        total = None
        for k in range(4):
            p0, p1 = corners[k], corners[(k + 1) % 4]
            lo = hi = None
            for j in range(4):
                d0, d1 = d[k][j], d[(k + 1) % 4][j]
                out0, out1 = d0 > 0, d1 > 0
                crossing = out0 != out1
                t = d0 / m.where(crossing, d0 - d1, 1.0)
                lo_j = m.where(out0, m.where(out1, 1.0, t), 0.0)
                hi_j = m.where(out1, m.where(out0, 0.0, t), 1.0)
                # an edge on the other's edge line: kept once, from the first box, when both lie on one side
                on_line = (d0 == 0) & (d1 == 0)
                drop = on_line & ~(normal_dots[k][j] > 0) if first else on_line
                hi_j = m.where(drop, 0.0, hi_j)
                lo = lo_j if lo is None else m.maximum(lo, lo_j)
                hi = hi_j if hi is None else m.minimum(hi, hi_j)
            ex, ey = p1[0] - p0[0], p1[1] - p0[1]
            term = m.clamp_min(hi - lo, 0.0) * (p0[0] * ey - p0[1] * ex)
            total = term if total is None else total + term
        return total * 0.5

    # scores -----------------------------------------------------------------------------------------------
    @cached_property
    def inter(self):
        m = self.m
        rows_ab, dots_ab = self._table_ab
        rows_ba, dots_ba = self._table_ba
        area = self._edge_sum(self.a, rows_ab, dots_ab, True) + self._edge_sum(self.b, rows_ba, dots_ba, False)
        return m.minimum(m.clamp_min(area, 0.0), m.minimum(self.area_a, self.area_b))

    @cached_property
    def union(self):
        return self.area_a + self.area_b - self.inter

    @cached_property
    def iou(self):
        return self.m.safe_div(self.inter, self.union)

    def _enclosing(self, rows, own):
        """Width and height of the smallest rectangle aligned with box ``own`` enclosing both boxes, from the
        other box's corner distances to ``own``'s edge lines."""
        m = self.m
        a, b = own[2], own[3]
        far = [m.clamp_min(_max4([r[j] for r in rows], m), 0.0) for j in range(4)]
        return 2 * a + far[0] + far[1], 2 * b + far[2] + far[3]

    @cached_property
    def enclosing(self):
        """Width and height of the smallest rectangle aligned with the second box (the target) enclosing both."""
        return self._enclosing(self._table_ab[0], self.b)

    @cached_property
    def enclosing_area(self):
        w, h = self.enclosing
        return w * h

    @cached_property
    def enclosing_diagonal2(self):
        w, h = self.enclosing
        return w * w + h * h

    @cached_property
    def rho2(self):
        dx, dy = self.a[0] - self.b[0], self.a[1] - self.b[1]
        return dx * dx + dy * dy

    @cached_property
    def giou(self):
        c = self.enclosing_area
        return self.iou - self.m.safe_div(c - self.union, c)

    @cached_property
    def diou(self):
        m = self.m
        return self.iou - m.safe_div(self.rho2, m.maximum(self.enclosing_diagonal2, self.rho2))

    @cached_property
    def gap_term(self):
        """Zero-overlap term: the distance between the boxes' nearest points over the target's diagonal (0 when
        they overlap), as :func:`boxloss.boxes._gap_term` for axis-aligned boxes. The nearest points of two
        disjoint convex polygons include a corner of one of them, so the distance is the smallest of the eight
        corner-to-rectangle distances."""
        m = self.m
        best = None
        for rows in (self._table_ab[0], self._table_ba[0]):
            for r in rows:
                gx = m.clamp_min(m.maximum(r[0], r[1]), 0.0)
                gy = m.clamp_min(m.maximum(r[2], r[3]), 0.0)
                g2 = gx * gx + gy * gy
                best = g2 if best is None else m.minimum(best, g2)
        gap = m.safe_sqrt(best)
        a, b = self.b[2], self.b[3]
        t_diag = m.safe_sqrt(4 * (a * a + b * b))
        fallback = m.maximum(m.safe_sqrt(self.enclosing_diagonal2), gap)
        term = m.safe_div(gap, m.where(t_diag > m.eps, t_diag, fallback))
        return m.where(self.inter > 0, 0.0, term)


def _max4(values, m):
    out = values[0]
    for v in values[1:]:
        out = m.maximum(out, v)
    return out


# ----------------------------------------------------------------------------------------------------------
# formulas: aligned losses on the five cxcywhr columns (registered in boxloss.losses.registry) and pairwise
# scores on the features
# ----------------------------------------------------------------------------------------------------------
def _pair(p, t, m) -> RotatedPair:
    return RotatedPair(features(p, m), features(t, m), m)


def _guarded(value, p, t):
    return value + _nan_guard(list(p) + list(t))


def rotated_iou_formula(p, t, m):
    return _guarded(1 - _pair(p, t, m).iou, p, t)


def rotated_iou_distance_formula(p, t, m):
    b = _pair(p, t, m)
    return _guarded(1 - b.iou + b.gap_term, p, t)


def rotated_log_iou_formula(p, t, m):
    return _guarded(-m.log(m.clamp_min(_pair(p, t, m).iou, m.eps)), p, t)


def _smooth_neg_log(iou, m, tau=LOG_IOU_LINEAR_BELOW):
    """boxes._smooth_neg_log in the formula namespace: −ln IoU above τ, its tangent below."""
    above = iou >= tau
    return m.where(above, -m.log(m.where(above, iou, 1.0)), -math.log(tau) + (tau - iou) / tau)


def rotated_log_iou_distance_formula(p, t, m):
    b = _pair(p, t, m)
    return _guarded(_smooth_neg_log(b.iou, m) + b.gap_term, p, t)


def rotated_giou_formula(p, t, m):
    return _guarded(1 - _pair(p, t, m).giou, p, t)


def rotated_diou_formula(p, t, m):
    return _guarded(1 - _pair(p, t, m).diou, p, t)


# kind used by the public functions -> formula; each is registered as a 5-column variant
ROTATED_LOSS_FORMULAS = {
    "rotated_iou": rotated_iou_formula,
    "rotated_iou_distance": rotated_iou_distance_formula,
    "rotated_log_iou": rotated_log_iou_formula,
    "rotated_log_iou_distance": rotated_log_iou_distance_formula,
    "rotated_giou": rotated_giou_formula,
    "rotated_diou": rotated_diou_formula,
}


def _score(name):
    def score(fa, fb, m):
        return getattr(RotatedPair(fa, fb, m), name) + _nan_guard(list(fa) + list(fb))

    score.__name__ = f"rotated_{name}_score"
    return score


# pairwise kind -> score formula on the features (the pairwise kernels' reference; the CPU kernel of the IoU is
# written by hand, boxloss/_fast/rotated_iou.c, and skips pairs whose bounding boxes are apart)
PAIRWISE_SCORES = {"rotated_iou": _score("iou"), "rotated_giou": _score("giou"), "rotated_diou": _score("diou")}


# ----------------------------------------------------------------------------------------------------------
# tensors: formats and features
# ----------------------------------------------------------------------------------------------------------
def box_features(boxes: Tensor) -> Tensor:
    """``(..., 5)`` cxcywhr → ``(..., 6)`` features (the pairwise kernels' input)."""
    from ._fast.expr import TorchMath

    m = TorchMath(1e-7, torch.finfo(boxes.dtype).eps)
    return torch.stack(features(boxes.unbind(-1), m), -1)


def score_reference(kind: str, boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    """The pairwise score ``kind`` (``"rotated_iou"``, …) of broadcastable cxcywhr tensors, from its formula on
    tensors: the reference of the pairwise kernels, differentiable by autograd and ``torch.func``."""
    from ._fast.expr import TorchMath

    fa = box_features(boxes1).unbind(-1)
    fb = box_features(boxes2).unbind(-1)
    return PAIRWISE_SCORES[kind](fa, fb, TorchMath(eps, torch.finfo(boxes1.dtype).eps))


def _safe_norm(x: Tensor, y: Tensor) -> Tensor:
    r2 = x * x + y * y
    ok = r2 > 0
    return torch.where(ok, torch.where(ok, r2, 1.0).sqrt(), 0.0)


def to_cxcywhr(boxes: Tensor, fmt: str) -> Tensor:
    """Convert rotated boxes to ``cxcywhr`` as ``torchvision.ops.box_convert`` does, differentiably (a corner
    polygon with a zero-length first side gets the angle 0, with no gradient, instead of NaN)."""
    if fmt == "cxcywhr":
        return boxes
    if fmt == "xywhr":
        x1, y1, w, h, r = boxes.unbind(-1)
        rad = r * DEGREE
        c, s = torch.cos(rad), torch.sin(rad)
        return torch.stack((x1 + 0.5 * w * c + 0.5 * h * s, y1 - 0.5 * w * s + 0.5 * h * c, w, h, r), -1)
    # xyxyxyxy: corners top-left, top-right, bottom-right, bottom-left; the angle of the first side
    x1, y1, x2, y2, x3, y3, _, _ = boxes.unbind(-1)
    ex, ey = x2 - x1, y1 - y2
    w = _safe_norm(ex, ey)
    h = _safe_norm(x3 - x2, y3 - y2)
    ok = w > 0
    rad = torch.where(ok, torch.atan2(torch.where(ok, ey, 0.0), torch.where(ok, ex, 1.0)), 0.0)
    c, s = torch.cos(rad), torch.sin(rad)
    return torch.stack((x1 + 0.5 * w * c + 0.5 * h * s, y1 - 0.5 * w * s + 0.5 * h * c, w, h, rad / DEGREE), -1)

