"""Rotated-box geometry: exact IoU, GIoU and DIoU of two rotated rectangles, in one place.

A rotated box is ``(cx, cy, w, h, θ)`` (torchvision's ``cxcywhr``): centre, width, height and the angle in
degrees, counter-clockwise in the image, so that the width runs along ``u = (cos θ, −sin θ)`` and the height
along ``v = (sin θ, cos θ)``. ``xywhr`` and ``xyxyxyxy`` are converted to it as :func:`torchvision.ops.box_convert`
converts them.

The formulas are written once against the math namespace of ``boxloss.expr``, like the loss variants:
evaluated on tensors they are the reference (differentiated by autograd); traced, they become the compiled CPU
kernels (aligned losses with their gradient in one pass, and the pairwise scores without gradient), the Triton
kernels for CUDA (the same two) and the PyTorch closed form used where neither can run.

How the intersection is computed (exactly, with no polygon clipping loop and no sorting):

* Green's theorem: the area of ``A ∩ B`` is ½ ∮ x dy − y dx along its boundary, which is made of the parts of
  each rectangle's edges that lie inside the other rectangle. For an edge ``P → P + E`` the part inside the
  other box is the parameter interval ``[lo, hi]`` left after clipping against that box's four half-planes
  (Cyrus–Beck), and it contributes ``½ (hi − lo) · (P × E)``. Eight edges, four planes each: straight-line code
  that differentiates like any other formula.
* Everything is computed in the frame of the second box (its axes), relative to the centre of the smaller box
  and divided by the largest half-side (both held constant: every quantity here is a ratio, invariant to them),
  so tiny and huge boxes are computed with the same relative precision — torchvision's kernel uses absolute
  tolerances and is wrong for boxes of size 0.01. The first box's orientation there is the difference of the two
  reduced angles, which is exact in floating point for nearby angles: nearly parallel boxes, where training
  converges, get sin δ to full relative precision.
* Each crossing of an edge line of one box with an edge line of the other is computed once, as a parameter
  along the first box's edge, and the same point is used to clip the second box's edge: the crossing of two
  nearly parallel lines is ill-conditioned along them, and two independent computations of it (one per edge)
  would leave the boundary open by that error, times the box's size (IoU 0.6 for a 0.0004° turn in float32).
* Parallel lines (``|sin|`` below 1e-15) are decided by one signed offset, used by both edges. An edge lying on an
  edge of the other box is counted once when the two boxes are on the same side of it (from the first box only)
  and not at all when they are on opposite sides (touching boxes): without this rule coincident edges, which
  identical boxes, squares and boxes turned by 90° all have, would be counted twice or not at all. There is no
  snapping tolerance.
* For nearly parallel boxes (``|sin δ| < 0.01``) the intersection's gradient is its exact shape derivative at the
  clipped edges, not autograd through the crossing points (see ``RotatedPair.inter``).

GIoU's enclosing region and DIoU's enclosing diagonal use the smallest rectangle enclosing both boxes that is
aligned with the second box (the target, in the losses). It is rotation invariant, continuous, a closed form, and
for two boxes at the same angle (θ = 0 in particular) it is exactly the enclosing box of the axis-aligned GIoU and
DIoU. It makes rotated GIoU and DIoU asymmetric in their two arguments (symmetric at equal angles). The rotated
regression simulation chose it (``benchmarks/RESULTS.md``, "The rotated regression simulation"): against the convex
hull of the eight corners (hull area for GIoU, hull diameter for DIoU), the smaller of the two boxes' aligned
rectangles, and the axis-aligned box of the corners (used by several code bases, not rotation invariant), the
target-aligned rectangle ended with the smallest error for both GIoU and DIoU; a frame that follows the prediction
pays the prediction for turning to shrink its own enclosure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._lazy import lazy
from .kinds import register
from .reference import LOG_IOU_LINEAR_BELOW

FEATURES = 7  # per-box columns of the pairwise kernels: (cx, cy, w/2, h/2, θ in [−45°, 45°), cos θ, sin θ)
DEGREE = math.pi / 180
# edges whose directions differ by less than this (|sin|) count as parallel: a crossing parameter d / sin and its
# derivative d / sin² stay finite in float32 for coordinates up to 1/ulp
PARALLEL_BELOW = 1e-15
# below this |sin δ| the intersection's gradient is the exact shape derivative (RotatedPair.inter)
NEAR_PARALLEL = 0.01

# the edges of a box as corners k → k+1, corners at (σu·w/2, σv·h/2) in the box's frame, counter-clockwise
_CORNER_SIGNS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def canonical(w, h, r, m, centred: bool = False):
    """The same rectangle with its angle in [0°, 90°), or in [−45°, 45°) with ``centred``: ``(w, h, θ)`` →
    ``(h, w, θ − 90°)`` and ``θ − 180°`` are the same box. Reducing first makes the symmetries exact in floating
    point — the box turned by 180°, and ``(h, w, θ + 90°)``, give bitwise the same sides and angle — and keeps
    sin/cos accurate for θ = ±1e4°. ``r − 90k`` is exact in floating point (an integer multiple of 90 taken from
    a number of the same binade or above), so the reduced angle keeps every bit of the given one; the centred
    range keeps the precision of angles near 0° (axis-aligned boxes), where [0°, 90°) would round −1e-4° to
    ulp(90°). The reduction has derivative 1 in θ (``floor`` has none)."""
    low = -45.0 if centred else 0.0
    quarter = m.floor((r - low) * (1.0 / 90.0))
    rr = r - 90.0 * quarter
    # rounding of (r − low) / 90 can land r − 90k just outside [low, low + 90): fold it back
    over = rr >= low + 90.0
    under = rr < low
    rr = m.where(over, rr - 90.0, m.where(under, rr + 90.0, rr))
    quarter = m.where(over, quarter + 1.0, m.where(under, quarter - 1.0, quarter))
    odd = (quarter - 2.0 * m.floor(quarter * 0.5)) == 1.0
    return m.where(odd, h, w), m.where(odd, w, h), rr


def features(box, m):
    """(cx, cy, w/2, h/2, θ, cos θ, sin θ) of the five columns of a cxcywhr box (sizes clamped at 0, the angle
    reduced to [−45°, 45°) by :func:`canonical`)."""
    cx, cy, w, h, r = box
    w, h, r = canonical(w, h, r, m, centred=True)
    rad = r * DEGREE
    return (cx, cy, m.clamp_min(w, 0.0) * 0.5, m.clamp_min(h, 0.0) * 0.5, r, m.cos(rad), m.sin(rad))


def _nan_guard(values):
    """0 for finite inputs, NaN when any input is NaN or infinite (x − x): NaN in, NaN out."""
    total = values[0] - values[0]
    for x in values[1:]:
        total = total + (x - x)
    return total


class RotatedPair:
    """Lazily computed geometry of two rotated boxes given as features (:func:`features`); ``b`` is the target
    (the zero-overlap term is normalised by its diagonal, GIoU's and DIoU's enclosing rectangle is aligned with
    it)."""

    def __init__(self, fa, fb, m) -> None:
        self.fa, self.fb, self.m = fa, fb, m

    # the common frame -------------------------------------------------------------------------------------
    @lazy
    def _frame(self):
        """Both boxes in the frame of ``b``: its axes, the origin at the smaller box's centre, lengths in the
        pair's largest half-side. ``a``'s orientation there is the difference of the two reduced angles (exact
        for nearby angles), turned into [−45°, 45°) by swapping ``a``'s sides: nearly parallel boxes get
        sin δ with full relative precision instead of a difference of nearly equal sines and cosines."""
        m = self.m
        xa, ya, a1, b1, ra = self.fa[:5]
        xb, yb, a2, b2, rb, cb, sb = self.fb
        d = ra - rb
        up, down = d >= 45.0, d < -45.0
        swap = up | down
        d = m.where(up, d - 90.0, m.where(down, d + 90.0, d))
        a1, b1 = m.where(swap, b1, a1), m.where(swap, a1, b1)
        rx, ry = xa - xb, ya - yb
        pu = rx * cb - ry * sb  # a's centre along b's axes
        pv = rx * sb + ry * cb
        spread = m.abs(m.detach(pu)) + m.abs(m.detach(pv))
        half = _fold(m.maximum, [a1, b1, a2, b2])
        # a zero-size pair far apart: the offset sets the unit (keeps squares finite); both zero: any unit
        unit = m.detach(m.clamp_min(m.maximum(half, spread * m.ulp), 1e-30))
        pu, pv = pu / unit, pv / unit
        smaller = a1 * b1 <= a2 * b2
        rad = d * DEGREE
        box_a = (m.where(smaller, 0.0, pu), m.where(smaller, 0.0, pv), a1 / unit, b1 / unit, m.cos(rad), m.sin(rad))
        box_b = (m.where(smaller, -pu, 0.0), m.where(smaller, -pv, 0.0), a2 / unit, b2 / unit)
        return box_a, box_b, rad

    @lazy
    def a(self):
        """``(x, y, w/2, h/2, cos δ, sin δ)`` of the first box in the frame."""
        return self._frame[0]

    @lazy
    def b(self):
        """``(x, y, w/2, h/2)`` of the second box in the frame (axis-aligned there)."""
        return self._frame[1]

    @lazy
    def area_a(self):
        return 4 * self.a[2] * self.a[3]

    @lazy
    def area_b(self):
        return 4 * self.b[2] * self.b[3]

    @lazy
    def _edges_a(self):
        """Corners P_k, unit directions t_k and lengths of the first box's edges k → k+1 (counter-clockwise)."""
        x, y, a, b, c, s = self.a
        corners = [(x + su * a * c + sv * b * s, y - su * a * s + sv * b * c) for su, sv in _CORNER_SIGNS]
        directions = [(c, -s), (s, c), (-c, s), (-s, -c)]
        lengths = [2 * a, 2 * b, 2 * a, 2 * b]
        return corners, directions, lengths

    @lazy
    def _lines_b(self):
        """The second box's edge lines as (axis, outward sign σ, coordinate, range along the edge)."""
        x, y, a, b = self.b
        along_x, along_y = (x - a, x + a), (y - b, y + b)
        return [(0, 1.0, x + a, along_y), (0, -1.0, x - a, along_y), (1, 1.0, y + b, along_x),
                (1, -1.0, y - b, along_x)]

    @lazy
    def _table_ab(self):
        """Signed distances of the first box's corners to the second's edge lines (+u, −u, +v, −v; ≤ 0 inside)."""
        x, y, a, b = self.b
        return [(px - x - a, x - px - a, py - y - b, y - py - b) for px, py in self._edges_a[0]]

    @lazy
    def _table_ba(self):
        """Signed distances of the second box's corners to the first's edge lines (+u, −u, +v, −v)."""
        ax, ay, a1, b1, c, s = self.a
        x, y, a, b = self.b
        rows = []
        for su, sv in _CORNER_SIGNS:
            qx, qy = x + su * a - ax, y + sv * b - ay
            pu = qx * c - qy * s
            pv = qx * s + qy * c
            rows.append((pu - a1, -pu - a1, pv - b1, -pv - b1))
        return rows

    @lazy
    def _clipped(self):
        """Cyrus–Beck clipping of each box's edges against the other's four half-planes, with every crossing of
        an edge line of ``a`` with one of ``b`` computed once and used by both edges (so that near-parallel
        crossings, which are ill-conditioned along the lines, close the boundary exactly). Returns the clipped
        parameter intervals of ``a``'s edges (from their first corner) and lengths of ``b``'s edges."""
        m = self.m
        corners, directions, lengths = self._edges_a
        lines = self._lines_b
        a_lo = [[] for _ in range(4)]
        a_hi = [[] for _ in range(4)]
        a_out = [None] * 4
        b_lo = [[rng[0]] for *_, rng in lines]
        b_hi = [[rng[1]] for *_, rng in lines]
        b_out = [None] * 4
        for i in range(4):
            p, t = corners[i], directions[i]
            for j, (axis, sign, line, _) in enumerate(lines):
                other = 1 - axis
                t_ax = t[axis]
                par = m.abs(t_ax) < PARALLEL_BELOW
                diff = p[axis] - line
                lam = (line - p[axis]) / m.where(par, 1.0, t_ax)  # the crossing, along a's edge
                cross = p[other] + lam * t[other]  # the same crossing, along b's edge
                comp = t_ax if sign > 0 else -t_ax  # b's outward normal · a's direction
                a_lo[i].append(m.where(~par & (comp < 0), lam, 0.0))
                a_hi[i].append(m.where(~par & (comp > 0), lam, lengths[i]))
                # a's outward normal n = (t_y, −t_x) along b's edge: an upper or a lower bound there
                n_other = -t_ax if axis == 0 else t_ax
                b_hi[j].append(m.where(~par & (n_other > 0), cross, b_hi[j][0]))
                b_lo[j].append(m.where(~par & (n_other < 0), cross, b_lo[j][0]))
                # parallel lines: one signed offset decides both edges; a coincident edge is kept once (from a)
                # when both boxes lie on one side of it, and not at all when they touch
                d = diff if sign > 0 else -diff
                n_axis = t[1] if axis == 0 else -t[0]
                same = (n_axis > 0) if sign > 0 else (n_axis < 0)
                out_a = par & ((d > 0) | ((d == 0) & ~same))
                out_b = par & ((same & (d <= 0)) | (~same & (d >= 0)))
                a_out[i] = out_a if a_out[i] is None else a_out[i] | out_a
                b_out[j] = out_b if b_out[j] is None else b_out[j] | out_b
        lo_a = [_fold(m.maximum, v) for v in a_lo]
        hi_a = [_fold(m.minimum, v) for v in a_hi]
        len_a = [m.where(a_out[i], 0.0, m.clamp_min(hi_a[i] - lo_a[i], 0.0)) for i in range(4)]
        len_b = [m.where(b_out[j], 0.0, m.clamp_min(_fold(m.minimum, b_hi[j]) - _fold(m.maximum, b_lo[j]), 0.0))
                 for j in range(4)]
        return lo_a, hi_a, len_a, len_b

    # scores -----------------------------------------------------------------------------------------------
    @lazy
    def inter(self):
        """Area of the intersection by Green's theorem: ½ Σ (length inside the other box) × (distance of the
        edge's line from the origin), over both boxes' edges.

        Near-parallel boxes (|sin δ| < ``NEAR_PARALLEL``): the value is the same sum, the gradient the exact
        shape derivative of the area at the clipped edges (how far each boundary piece moves along its normal:
        translation, side lengths, and τ dδ for a turn, τ measured from the edge's midpoint), instead of
        autograd through the crossing points, whose positions move as 1/sin δ and whose large derivatives
        cancel only to rounding (the second derivatives there hold the clipped edges fixed)."""
        m = self.m
        corners, directions, lengths = self._edges_a
        lo_a, hi_a, len_a, len_b = self._clipped
        lines = self._lines_b
        arm_a = [p[0] * t[1] - p[1] * t[0] for p, t in zip(corners, directions)]
        arm_b = [line if sign > 0 else -line for _, sign, line, _ in lines]
        sa = [len_a[i] * arm_a[i] for i in range(4)]
        sb = [len_b[j] * arm_b[j] for j in range(4)]
        # opposite edges first: an unclipped rectangle sums to 4ab exactly
        green = (((sa[0] + sa[2]) + (sa[1] + sa[3])) + ((sb[0] + sb[2]) + (sb[1] + sb[3]))) * 0.5
        ax, ay, a1, b1, c, s = self.a
        rad = self._frame[2]
        halves = [b1, a1, b1, a1]
        shape = rad * m.detach(sum(len_a[i] * (hi_a[i] + lo_a[i] - lengths[i]) for i in range(4)) * 0.5)
        for i, t in enumerate(directions):
            nx, ny = m.detach(t[1]), m.detach(-t[0])
            shape = shape + m.detach(len_a[i]) * (nx * ax + ny * ay + halves[i])
        for j in range(4):
            shape = shape + m.detach(len_b[j]) * arm_b[j]
        near = m.abs(s) < NEAR_PARALLEL
        area = m.where(near, m.detach(green) + (shape - m.detach(shape)), green)
        # the value kept in [0, min(areas)] against rounding, the gradient the area's own: a box inside the other
        # has the derivative of its own area there anyway, and a near-identical pair keeps the shape derivative
        # (its turning direction) where rounding puts the sum a hair above the smaller area
        bounded = m.minimum(m.clamp_min(area, 0.0), m.minimum(self.area_a, self.area_b))
        return area + m.detach(bounded - area)

    @lazy
    def union(self):
        return self.area_a + self.area_b - self.inter

    @lazy
    def iou(self):
        return _ratio(self.inter, self.union, self.m)

    @lazy
    def enclosing(self):
        """Width and height of the smallest rectangle aligned with the second box (the target) enclosing both,
        from the first box's corner distances to the second's edge lines."""
        m = self.m
        a, b = self.b[2], self.b[3]
        far = [m.clamp_min(_fold(m.maximum, [r[j] for r in self._table_ab]), 0.0) for j in range(4)]
        return 2 * a + far[0] + far[1], 2 * b + far[2] + far[3]

    @lazy
    def enclosing_area(self):
        w, h = self.enclosing
        return w * h

    @lazy
    def enclosing_diagonal2(self):
        w, h = self.enclosing
        return w * w + h * h

    @lazy
    def rho2(self):
        dx, dy = self.a[0] - self.b[0], self.a[1] - self.b[1]
        return dx * dx + dy * dy

    @lazy
    def giou(self):
        c = self.enclosing_area
        return self.iou - _ratio(c - self.union, c, self.m)

    @lazy
    def diou(self):
        m = self.m
        return self.iou - m.safe_div(self.rho2, m.maximum(self.enclosing_diagonal2, self.rho2))

    @lazy
    def gap_term(self):
        """Zero-overlap term: the distance between the boxes' nearest points over the target's diagonal (0 when
        they overlap), as ``boxloss.reference._gap_term`` for axis-aligned boxes. The nearest points of two
        disjoint convex polygons include a corner of one of them, so the distance is the smallest of the eight
        corner-to-rectangle distances."""
        m = self.m
        best = None
        for rows in (self._table_ab, self._table_ba):
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
        return m.where(self.separated, term, 0.0)

    @lazy
    def separated(self):
        """Whether one box's edge line separates the two (the separating-axis test on the four edge directions:
        every corner of one box strictly beyond an edge line of the other): the boxes are then disjoint, and the
        zero-overlap term applies. Boxes that overlap or touch are not separated. The test needs none of the
        intersection (which the zero-overlap term's kernel then need not compute: tests/backends/
        test_triton_compile.py checks that no kernel spills registers)."""
        m = self.m
        sides = [_fold(m.minimum, [r[k] for r in rows]) for rows in (self._table_ab, self._table_ba) for k in range(4)]
        return _fold(m.maximum, sides) > 0


def _ratio(num, den, m):
    """num / den, and 0 with no gradient where den is 0. Areas here are in units of the pair's largest half-side,
    so a positive area is never small because the boxes are small, only because one is thin (1e-7 for a 1e7 : 1
    box): no ``eps`` clamp, which would take such a box's IoU with itself below 1."""
    ok = den > 0
    return m.where(ok, num / m.where(ok, den, 1.0), 0.0)


def _fold(op, values):
    """op(…op(op(v0, v1), v2)…): a left fold, in the order the kernels are generated in."""
    out = values[0]
    for v in values[1:]:
        out = op(out, v)
    return out


# ----------------------------------------------------------------------------------------------------------
# formulas: aligned losses on the five cxcywhr columns (registered in boxloss.kinds) and pairwise
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
    """reference._smooth_neg_log in the formula namespace: −ln IoU above τ, its tangent below."""
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
for _kind, _formula in ROTATED_LOSS_FORMULAS.items():  # their registration (boxloss.kinds)
    register(_kind, _formula, columns=5)


def _score(name):
    def score(fa, fb, m):
        return getattr(RotatedPair(fa, fb, m), name) + _nan_guard(list(fa) + list(fb))

    score.__name__ = f"rotated_{name}_score"
    return score


# pairwise kind -> score formula on the features (the pairwise kernels' reference; the CPU kernel of the IoU is
# written by hand, boxloss/backends/rotated_iou.c, and skips pairs whose bounding boxes are apart)
PAIRWISE_SCORES = {"rotated_iou": _score("iou"), "rotated_giou": _score("giou"), "rotated_diou": _score("diou")}


# ----------------------------------------------------------------------------------------------------------
# tensors: formats and features
# ----------------------------------------------------------------------------------------------------------
def box_features(boxes: Tensor) -> Tensor:
    """``(..., 5)`` cxcywhr → ``(..., 6)`` features (the pairwise kernels' input)."""
    from .expr import TorchMath

    m = TorchMath(1e-7, torch.finfo(boxes.dtype).eps)
    return torch.stack(features(boxes.unbind(-1), m), -1)


def score_reference(kind: str, boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    """The pairwise score ``kind`` (``"rotated_iou"``, …) of broadcastable cxcywhr tensors, from its formula on
    tensors: the reference of the pairwise kernels, differentiable by autograd and ``torch.func``."""
    from .expr import TorchMath

    fa = box_features(boxes1).unbind(-1)
    fb = box_features(boxes2).unbind(-1)
    return PAIRWISE_SCORES[kind](fa, fb, TorchMath(eps, torch.finfo(boxes1.dtype).eps))


def _safe_norm(x: Tensor, y: Tensor) -> Tensor:
    r2 = x * x + y * y
    ok = r2 > 0
    return torch.where(ok, torch.where(ok, r2, 1.0).sqrt(), 0.0)


def to_cxcywhr(boxes: Tensor, fmt: str) -> Tensor:
    """Convert rotated boxes to ``cxcywhr`` as :func:`torchvision.ops.box_convert` does, differentiably (a corner
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

