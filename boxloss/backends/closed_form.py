"""The aligned losses in closed form: value and local gradient in one pass, chunked to stay in cache.

This is the same math as the reference kernels of :mod:`boxloss.boxes` (which stay the source of truth and
are what the tests compare against), with the derivatives written out, including the reference's
conventions at the kinks: ``clamp_min`` passes no gradient at its bound, ``torch.maximum``/``minimum`` split it
evenly on ties, and a denominator at or under ``eps`` passes none.

Layout: a chunk of boxes is held as two ``(2, c)`` tensors per box set, (x1, y1) and (x2, y2), so that every x/y
pair of operations is one tensor op.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import LOG_IOU_LINEAR_BELOW

KINDS = ("iou", "iou_distance", "log_iou", "log_iou_distance", "giou", "diou", "ciou")
# the integer each kernel (classic.c, the Triton kernels) knows a kind by: its place in KINDS
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}
PAIRWISE_CODES = {kind: KIND_CODES[kind] for kind in ("iou", "giou", "diou", "ciou")}
_FOUR_OVER_PI2 = 4 / math.pi**2
_TAU = LOG_IOU_LINEAR_BELOW  # the Smooth-ln threshold, defined once in the reference
_NEG_LOG_TAU = -math.log(_TAU)


def _sel(a: Tensor, b: Tensor) -> Tensor:
    """d max(a, b) / da: 1 where a > b, 1/2 on ties, 0 where a < b (torch.maximum's convention)."""
    return (a > b).to(a.dtype) + 0.5 * (a == b).to(a.dtype)


def _over_max(num: Tensor, other: Tensor, eps: float, need_grad: bool):
    """num / max(other, num) with the reference's conventions, and its derivatives in num and in other.

    DIoU's ρ²/c² and the zero-overlap term of a point target (gap / enclosing diagonal) take this form (the
    maximum keeps the ratio ≤ 1 for inverted boxes): the maximum's share s goes to ``other`` and 1 − s back to
    ``num``; no gradient where the denominator is at or under eps.
    """
    den = torch.maximum(other, num)
    den_ok = den > eps
    inv_den = 1 / den.clamp_min(eps)
    value = num * inv_den
    if not need_grad:
        return value, None, None
    s = _sel(other, num)
    q = num * inv_den * inv_den * den_ok
    return value, inv_den * den_ok - q * (1 - s), -q * s


def _safe_sqrt(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.ones_like(x)).sqrt() * (x > 0)


def fused_loss_and_grad(kind: str, p: Tensor, t: Tensor, eps: float, need_grad: bool):
    """Per-box loss ``(n,)`` and, with ``need_grad``, d loss / d p and d loss / d t, both ``(n, 4)``.

    ``p`` and ``t``: ``(n, 4)`` xyxy, same floating dtype.
    """
    pt = p.t()
    tt = t.t()
    p_lo, p_hi, t_lo, t_hi = pt[:2], pt[2:], tt[:2], tt[2:]
    dtype = p.dtype

    p_wh_raw = p_hi - p_lo
    t_wh_raw = t_hi - t_lo
    p_wh = p_wh_raw.clamp_min(0)
    t_wh = t_wh_raw.clamp_min(0)
    lo = torch.maximum(p_lo, t_lo)
    hi = torch.minimum(p_hi, t_hi)
    i_raw = hi - lo
    iwh = i_raw.clamp_min(0)
    inter = iwh[0] * iwh[1]
    area_p = p_wh[0] * p_wh[1]
    area_t = t_wh[0] * t_wh[1]
    union = area_p + area_t - inter
    u_ok = union > eps
    inv_u = 1 / union.clamp_min(eps)
    iou = inter * inv_u

    need_enclosing = kind in ("giou", "diou", "ciou") or kind.endswith("_distance")
    if need_enclosing:
        c_lo = torch.minimum(p_lo, t_lo)
        c_hi = torch.maximum(p_hi, t_hi)
        c_raw = c_hi - c_lo
        cwh = c_raw.clamp_min(0)

    # dL/dIoU, and the loss, for the IoU part
    if kind == "log_iou":
        iou_ok = iou > eps
        loss = -iou.clamp_min(eps).log()
        g_iou = -(iou_ok / iou.clamp_min(eps)) if need_grad else None
    elif kind == "log_iou_distance":  # Smooth-ln: −ln IoU above τ, its tangent below (reference._smooth_neg_log)
        above = iou >= _TAU
        loss = torch.where(above, -iou.clamp_min(_TAU).log(), _NEG_LOG_TAU + (_TAU - iou) / _TAU)
        g_iou = -torch.where(above, 1 / iou.clamp_min(_TAU), torch.full_like(iou, 1 / _TAU)) if need_grad else None
    else:
        loss = 1 - iou
        g_iou = torch.full_like(iou, -1.0) if need_grad else None

    g_u = g_c = g_c2 = g_d = g_cdiag_wh = None
    if kind == "giou":
        area_c = cwh[0] * cwh[1]
        c_ok = area_c > eps
        inv_c = 1 / area_c.clamp_min(eps)
        loss = loss + (area_c - union) * inv_c
        if need_grad:
            g_c = (union * inv_c * inv_c) * c_ok       # d pen / d area_c
            g_u = -inv_c * c_ok                         # d pen / d union
    elif kind in ("diou", "ciou"):
        d = (p_lo + p_hi) - (t_lo + t_hi)              # twice the centre offsets, (2, c)
        rho2 = (d * d).sum(0) * 0.25
        c2 = (cwh * cwh).sum(0)
        term, g_rho2, g_c2 = _over_max(rho2, c2, eps, need_grad)
        loss = loss + term
        if need_grad:
            g_d = g_rho2 * 0.5 * d                      # d rho2 / d d = d / 2
        if kind == "ciou":
            wp, hp, wt, ht = p_wh[0], p_wh[1], t_wh[0], t_wh[1]
            okp = (wp + hp) > eps
            okt = (wt + ht) > eps
            theta_p = torch.atan2(wp, torch.where(okp, hp, torch.ones_like(hp))) * okp
            theta_t = torch.atan2(wt, torch.where(okt, ht, torch.ones_like(ht))) * okt
            diff = theta_t - theta_p
            v = _FOUR_OVER_PI2 * diff * diff
            alpha = v / (1 - iou + v + eps)             # held constant in backward, as in the paper
            loss = loss + alpha * v
            if need_grad:
                g_theta_p = -(alpha * _FOUR_OVER_PI2 * 2) * diff * okp
                g_theta_t = (alpha * _FOUR_OVER_PI2 * 2) * diff * okt
                rp = 1 / torch.where(okp, wp * wp + hp * hp, torch.ones_like(wp))
                rt = 1 / torch.where(okt, wt * wt + ht * ht, torch.ones_like(wt))
                # dθ/dw = h / (w² + h²), dθ/dh = −w / (w² + h²)
                g_pwh_ciou = torch.stack((g_theta_p * hp * rp, -g_theta_p * wp * rp))
                g_twh_ciou = torch.stack((g_theta_t * ht * rt, -g_theta_t * wt * rt))
    g_twh_gap = None
    if kind.endswith("_distance"):
        # gap / the target's diagonal; / max(enclosing diagonal, gap) for a point target (reference._gap_term)
        gap_raw = -i_raw
        gap_xy = gap_raw.clamp_min(0)
        g2 = (gap_xy * gap_xy).sum(0)
        gap = _safe_sqrt(g2)
        cdiag = _safe_sqrt((cwh * cwh).sum(0))
        tdiag = _safe_sqrt((t_wh * t_wh).sum(0))
        use_t = tdiag > eps
        inv_t = 1 / torch.where(use_t, tdiag, torch.ones_like(tdiag))
        term_c, g_gap_c, g_cdiag_c = _over_max(gap, cdiag, eps, need_grad)
        loss = loss + torch.where(use_t, gap * inv_t, term_c)
        if need_grad:
            g_gap = torch.where(use_t, inv_t, g_gap_c) * (gap > 0)
            g_cdiag = torch.where(use_t, torch.zeros_like(g_cdiag_c), g_cdiag_c) * (cdiag > 0)
            g_tdiag = -gap * inv_t * inv_t * use_t
            inv_gap = 1 / torch.where(gap > 0, gap, torch.ones_like(gap))
            inv_cdiag = 1 / torch.where(cdiag > 0, cdiag, torch.ones_like(cdiag))
            g_gap_xy = (g_gap * inv_gap) * gap_xy * (gap_raw > 0)
            g_cdiag_wh = (g_cdiag * inv_cdiag) * cwh
            g_twh_gap = (g_tdiag * inv_t) * t_wh

    if not need_grad:
        return loss, None, None

    # IoU = inter / union, with no gradient where union <= eps
    g_inter = g_iou * inv_u * u_ok
    g_union = -(g_iou * iou * inv_u) * u_ok
    if g_u is not None:
        g_union = g_union + g_u
    g_inter = g_inter - g_union                        # union = area_p + area_t − inter
    g_iwh = g_inter * torch.stack((iwh[1], iwh[0])) * (i_raw > 0)
    g_pwh = g_union * torch.stack((p_wh[1], p_wh[0])) * (p_wh_raw > 0)
    g_twh = g_union * torch.stack((t_wh[1], t_wh[0])) * (t_wh_raw > 0)
    if kind == "ciou":
        g_pwh = g_pwh + g_pwh_ciou * (p_wh_raw > 0)
        g_twh = g_twh + g_twh_ciou * (t_wh_raw > 0)
    if g_twh_gap is not None:
        g_twh = g_twh + g_twh_gap * (t_wh_raw > 0)
    g_i_raw = g_iwh
    if kind.endswith("_distance"):
        g_i_raw = g_i_raw - g_gap_xy                   # gap = −i_raw
    # hi = min(p_hi, t_hi), lo = max(p_lo, t_lo), i_raw = hi − lo
    sel_hi = _sel(t_hi, p_hi)                          # share of d min(p_hi, t_hi) going to p_hi
    sel_lo = _sel(p_lo, t_lo)                          # share of d max(p_lo, t_lo) going to p_lo
    g_p_hi = g_i_raw * sel_hi + g_pwh
    g_t_hi = g_i_raw * (1 - sel_hi) + g_twh
    g_p_lo = -g_i_raw * sel_lo - g_pwh
    g_t_lo = -g_i_raw * (1 - sel_lo) - g_twh
    g_cwh = None
    if g_c is not None:
        g_cwh = g_c * torch.stack((cwh[1], cwh[0]))
    if g_c2 is not None:
        g_cwh = g_c2 * 2 * cwh
    if g_cdiag_wh is not None:
        g_cwh = g_cdiag_wh
    if g_cwh is not None:
        g_cwh = g_cwh * (c_raw > 0)
        # c_hi = max(p_hi, t_hi), c_lo = min(p_lo, t_lo)
        s_hi = _sel(p_hi, t_hi)
        s_lo = _sel(t_lo, p_lo)
        g_p_hi = g_p_hi + g_cwh * s_hi
        g_t_hi = g_t_hi + g_cwh * (1 - s_hi)
        g_p_lo = g_p_lo - g_cwh * s_lo
        g_t_lo = g_t_lo - g_cwh * (1 - s_lo)
    if g_d is not None:
        g_p_lo = g_p_lo + g_d
        g_p_hi = g_p_hi + g_d
        g_t_lo = g_t_lo - g_d
        g_t_hi = g_t_hi - g_d
    grad_p = torch.cat((g_p_lo, g_p_hi)).t()
    grad_t = torch.cat((g_t_lo, g_t_hi)).t()
    return loss, grad_p.to(dtype), grad_t.to(dtype)
