"""The quantities every IoU-family formula is built from, written once against a math namespace ``m``
(:class:`boxloss.expr.TorchMath` on tensors, :class:`~boxloss.expr.SymbolicMath` when a kernel is
generated). The conventions are those of :mod:`boxloss.boxes` — widths and heights clamped at 0, denominators
clamped at ``eps`` with no gradient below it (``m.safe_div``) — and the tests check these pieces against its
kernels (IoU, GIoU, DIoU and CIoU to rounding).

``p`` and ``t`` are the four columns ``(x1, y1, x2, y2)`` of the predicted and the target boxes.
"""

from __future__ import annotations

import math

from .._lazy import lazy
from ..reference import LOG_IOU_LINEAR_BELOW

FOUR_OVER_PI2 = 4 / math.pi**2


class Pair:
    """Lazily computed geometry of a (prediction, target) pair: each quantity is built on first use only."""

    def __init__(self, p, t, m) -> None:
        self.p, self.t, self.m = p, t, m

    # sizes and centres -----------------------------------------------------------------------------------
    @lazy
    def pw(self):
        return self.m.clamp_min(self.p[2] - self.p[0], 0.0)

    @lazy
    def ph(self):
        return self.m.clamp_min(self.p[3] - self.p[1], 0.0)

    @lazy
    def tw(self):
        return self.m.clamp_min(self.t[2] - self.t[0], 0.0)

    @lazy
    def th(self):
        return self.m.clamp_min(self.t[3] - self.t[1], 0.0)

    @lazy
    def sx(self):
        """Target centre minus predicted centre, x."""
        return (self.t[0] + self.t[2] - self.p[0] - self.p[2]) * 0.5

    @lazy
    def sy(self):
        return (self.t[1] + self.t[3] - self.p[1] - self.p[3]) * 0.5

    @lazy
    def rho2(self):
        """Squared distance between the centres (as ``reference._diou_kernel``: (2Δ)² / 4)."""
        dx = self.p[0] + self.p[2] - self.t[0] - self.t[2]
        dy = self.p[1] + self.p[3] - self.t[1] - self.t[3]
        return (dx * dx + dy * dy) * 0.25

    # overlap ---------------------------------------------------------------------------------------------
    @lazy
    def inter(self):
        m, p, t = self.m, self.p, self.t
        iw = m.clamp_min(m.minimum(p[2], t[2]) - m.maximum(p[0], t[0]), 0.0)
        ih = m.clamp_min(m.minimum(p[3], t[3]) - m.maximum(p[1], t[1]), 0.0)
        return iw * ih

    @lazy
    def union(self):
        return self.pw * self.ph + self.tw * self.th - self.inter

    @lazy
    def iou(self):
        return self.m.safe_div(self.inter, self.union)

    # the enclosing box -----------------------------------------------------------------------------------
    @lazy
    def cw(self):
        m, p, t = self.m, self.p, self.t
        return m.clamp_min(m.maximum(p[2], t[2]) - m.minimum(p[0], t[0]), 0.0)

    @lazy
    def ch(self):
        m, p, t = self.m, self.p, self.t
        return m.clamp_min(m.maximum(p[3], t[3]) - m.minimum(p[1], t[1]), 0.0)

    @lazy
    def c2(self):
        """Squared diagonal of the enclosing box."""
        return self.cw * self.cw + self.ch * self.ch

    # the penalties of the classic losses -----------------------------------------------------------------
    @lazy
    def giou_penalty(self):
        """|C ∖ (A ∪ B)| / |C|."""
        area_c = self.cw * self.ch
        return self.m.safe_div(area_c - self.union, area_c)

    @lazy
    def diou_penalty(self):
        """ρ² / c², with the maximum that keeps it ≤ 1 for inverted boxes (``reference._diou_kernel``)."""
        return self.m.safe_div(self.rho2, self.m.maximum(self.c2, self.rho2))

    @lazy
    def aspect_v(self):
        """CIoU's v = 4/π² (atan(w_t/h_t) − atan(w_p/h_p))²."""
        d = self.m.atan2_safe(self.tw, self.th) - self.m.atan2_safe(self.pw, self.ph)
        return d * d * FOUR_OVER_PI2

    @lazy
    def ciou_alpha(self):
        """CIoU's trade-off weight v / (1 − IoU + v), held constant in backward."""
        v = self.aspect_v
        return self.m.detach(v / (1 - self.iou + v + self.m.eps))

    @lazy
    def gap_term(self):
        """The zero-overlap term (``reference._gap_term``): the distance between the boxes' nearest points over the
        target's diagonal, 0 whenever they overlap or touch; over max(enclosing diagonal, gap) for a point target."""
        m, p, t = self.m, self.p, self.t
        gx = m.clamp_min(m.maximum(p[0], t[0]) - m.minimum(p[2], t[2]), 0.0)
        gy = m.clamp_min(m.maximum(p[1], t[1]) - m.minimum(p[3], t[3]), 0.0)
        gap = m.safe_sqrt(gx * gx + gy * gy)
        t_diag = m.safe_sqrt(self.tw * self.tw + self.th * self.th)
        fallback = m.maximum(m.safe_sqrt(self.c2), gap)
        return m.safe_div(gap, m.where(t_diag > m.eps, t_diag, fallback))

    @lazy
    def smooth_neg_log_iou(self):
        """−ln IoU for IoU ≥ τ, its tangent −ln τ + (τ − IoU)/τ below (Smooth-ln; ``reference._smooth_neg_log``)."""
        m, iou, tau = self.m, self.iou, LOG_IOU_LINEAR_BELOW
        above = iou >= tau
        return m.where(above, -m.log(m.where(above, iou, m.const(1.0, iou))), -math.log(tau) + (tau - iou) / tau)

    def ratio_at_most_one(self, num, den):
        """num / max(den, num): for terms that are ≤ 1 for valid boxes (a centre offset over the enclosing
        size); the maximum only bites for inverted boxes and keeps them bounded."""
        return self.m.safe_div(num, self.m.maximum(den, num))


# the classic losses, as bases for the variants that extend one ("variant=" of Inner-IoU and Focaler-IoU)
def iou_formula(p, t, m):
    """1 − IoU (textbook: no gradient for disjoint boxes)."""
    return 1 - Pair(p, t, m).iou


def iou_distance_formula(p, t, m):
    """1 − IoU + the zero-overlap term (``iou_loss``'s default)."""
    b = Pair(p, t, m)
    return 1 - b.iou + b.gap_term


def log_iou_formula(p, t, m):
    """−ln max(IoU, eps) (textbook UnitBox: ``log_iou_loss(zero_overlap="none")``)."""
    return -m.log(m.clamp_min(Pair(p, t, m).iou, m.eps))


def log_iou_distance_formula(p, t, m):
    """Smooth-ln of IoU + the zero-overlap term (``log_iou_loss``'s default)."""
    b = Pair(p, t, m)
    return b.smooth_neg_log_iou + b.gap_term


def giou_formula(p, t, m):
    b = Pair(p, t, m)
    return 1 - b.iou + b.giou_penalty


def diou_formula(p, t, m):
    b = Pair(p, t, m)
    return 1 - b.iou + b.diou_penalty


def ciou_formula(p, t, m):
    b = Pair(p, t, m)
    return 1 - b.iou + b.diou_penalty + b.ciou_alpha * b.aspect_v
