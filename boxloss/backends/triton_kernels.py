"""Triton kernels for CUDA: the aligned losses with their local gradients (and, optionally, the weighted sum)
in one pass, and pairwise scores; registered as ``boxloss::aligned_loss_triton`` and
``boxloss::pairwise_score_triton`` with ``torch.library.triton_op``, so that ``torch.compile`` sees the kernels.

The math is the scalar closed form of ``classic.c`` (and so of the reference in :mod:`boxloss.boxes`), one box
(or one pair) per lane, computed in float32: float16 and bfloat16 boxes are read as they are and converted in
registers. Every maximum and minimum propagates NaN (``propagate_nan=ALL``) as ``torch.maximum`` does, and a box
whose loss is NaN gets NaN gradients. The reduction writes one partial sum per block (deterministic, no atomics)
that a single small sum adds up; the weights and the ``avg_factor`` tensor are read on the device, so nothing
synchronises with the host. ``atan2`` comes from libdevice on the GPU; ``USE_LIBDEVICE=False`` swaps in a
Cephes-style polynomial (error ~1e-7), which is what the tests run under Triton's CPU interpreter
(``TRITON_INTERPRET=1``), where libdevice is not available.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import kinds
from ..reference import LOG_IOU_LINEAR_BELOW
from .closed_form import KIND_CODES, PAIRWISE_CODES

# the kinds whose hand-written Triton kernel (_aligned_kernel) overrides the one generated from their formula:
# the classic losses (not yet timed against the generated kernels on a GPU)
HAND_WRITTEN_ALIGNED = tuple(KIND_CODES)

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    _HAVE_TRITON = False



def triton_importable() -> bool:
    """Whether Triton can be imported here (the generated Triton modules can then be written and loaded)."""
    return _HAVE_TRITON


LOG_TAU = LOG_IOU_LINEAR_BELOW  # the Smooth-ln threshold, defined once in the reference
NEG_LOG_TAU = -math.log(LOG_TAU)
MIN_CAPABILITY = (7, 5)  # Turing: the oldest NVIDIA architecture the installed Triton generations still support
BLOCK = 512
PAIRWISE_BLOCKS = (32, 64)
# the rotated scores hold ~900 values per pair: one pair per thread (84-96 registers on sm_80/sm_90, no spill;
# 16 × 32 tiles, 4 pairs per thread, spilled on both, and 16 × 16 on sm_80: ptxas -v, tests/backends/test_triton_compile.py)
ROTATED_BLOCKS = (8, 16)
FLOAT32_ULP = 2.0 ** -23
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Compile options of every launch: no fusion of a multiply and an add into an FMA (Triton's default fuses, as
# nvcc's --fmad=true does), so the kernels round each operation as the reference's element-wise ops do. The
# ahead-of-time compilation test builds with the same options and checks the PTX holds no fused multiply-add.
LAUNCH_OPTIONS = {"enable_fp_fusion": False}


def _launch_options() -> dict:
    """:data:`LAUNCH_OPTIONS` for a launch by Triton itself; none where the launch is being traced into a graph
    (``torch.compile``/``torch.export`` capture the kernel's arguments, and Inductor compiles it with its own
    options)."""
    try:
        from torch._library.triton import is_wrap_triton_enabled
    except ImportError:  # pragma: no cover - an older torch
        def is_wrap_triton_enabled():
            return False
    if torch.compiler.is_compiling() or is_wrap_triton_enabled():
        return {}
    return LAUNCH_OPTIONS


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernels can run on ``device``, else why not (shown by the warning and ``boxloss.info``)."""
    if os.environ.get("BOXLOSS_TRITON", "1").strip().lower() in ("0", "false", "off", "no"):
        return "switched off by BOXLOSS_TRITON=0"
    if not _HAVE_TRITON:
        return "Triton is not installed (pip install triton)"
    if _INTERPRET:
        return "TRITON_INTERPRET=1 is set (Triton's interpreter runs kernels on the CPU)"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if getattr(torch.version, "hip", None):
        return "a ROCm GPU: boxloss' Triton kernels are built and tested for NVIDIA GPUs only"
    return _capability_reason(torch.device("cuda", device.index if device.index is not None
                                           else torch.cuda.current_device()).index)


@functools.lru_cache(maxsize=None)
def _capability_reason(index: int) -> Optional[str]:
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(index)} has compute capability {cap[0]}.{cap[1]}; the Triton kernels "
                f"need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer")
    return None


if _HAVE_TRITON:
    _TAU = tl.constexpr(LOG_TAU)
    _NEG_LOG_TAU = tl.constexpr(NEG_LOG_TAU)

    if not _INTERPRET:
        from triton.language.extra import libdevice
    else:  # the interpreter has no libdevice; the kernels then take the polynomial branch
        libdevice = None

    @triton.jit
    def _atan_01(z):
        # atan on [0, 1] (Cephes atanf): reduce z > tan(π/8) through atan z = π/4 + atan((z − 1) / (z + 1))
        big = z > 0.4142135623730950
        z = tl.where(big, (z - 1.0) / (z + 1.0), z)
        z2 = z * z
        poly = (((8.05374449538e-2 * z2 - 1.38776856032e-1) * z2 + 1.99777106478e-1) * z2
                - 3.33329491539e-1) * z2 * z + z
        return tl.where(big, 0.7853981633974483 + poly, poly)

    @triton.jit
    def _atan2_xpos(y, x, USE_LIBDEVICE: tl.constexpr):
        """atan2(y, x) for x ≥ 0 (all that the aspect terms need)."""
        if USE_LIBDEVICE:
            return libdevice.atan2(y, x)
        else:
            ay = tl.abs(y)
            small = ay <= x
            ratio = tl.where(small, ay / tl.where(x > 0, x, 1.0), x / tl.where(ay > 0, ay, 1.0))
            a = _atan_01(ratio)
            a = tl.where(small, a, 1.5707963267948966 - a)
            a = tl.where((ay == 0) & (x == 0), 0.0, a)
            return tl.where(y < 0, -a, a)

    @triton.jit
    def _atan2(y, x):
        """atan2(y, x) in every quadrant, in float32 (Cephes atanf on the reduced ratio, the same code on a GPU and
        under the interpreter): the generated kernels' arctangent. NaN in, NaN out."""
        a = _atan2_xpos(y, tl.abs(x), False)
        return tl.where(x < 0, tl.where(y < 0, -3.141592653589793 - a, 3.141592653589793 - a), a)

    @triton.jit
    def _max(a, b):
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _min(a, b):
        return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _sel(a, b):
        return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))

    @triton.jit
    def _over_max(num, other, eps):
        """num / max(other, num) and its derivatives in num and other (see closed_form._over_max)."""
        den = _max(other, num)
        den_ok = (den > eps).to(tl.float32)
        inv_den = 1.0 / _max(den, eps)
        s = _sel(other, num)
        q = num * inv_den * inv_den * den_ok
        return num * inv_den, inv_den * den_ok - q * (1.0 - s), -q * s

    @triton.jit
    def _aligned_kernel(P, T, W, DIV, L, GP, GT, n, eps, scale, has_w, has_div, need_p, need_t,
                        KIND: tl.constexpr, NEED_GRAD: tl.constexpr, REDUCE: tl.constexpr,
                        USE_LIBDEVICE: tl.constexpr, BLOCK: tl.constexpr):
        """Per box: loss and local gradients. REDUCE: L[program] = sum of f_i * loss_i over the block, and the
        gradients scaled by f_i = scale * w_i / max(divisor, eps); else L[i] = loss_i and f_i = 1."""
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        base = offs.to(tl.int64) * 4
        px1 = tl.load(P + base + 0, mask=m, other=0.0).to(tl.float32)
        py1 = tl.load(P + base + 1, mask=m, other=0.0).to(tl.float32)
        px2 = tl.load(P + base + 2, mask=m, other=0.0).to(tl.float32)
        py2 = tl.load(P + base + 3, mask=m, other=0.0).to(tl.float32)
        tx1 = tl.load(T + base + 0, mask=m, other=0.0).to(tl.float32)
        ty1 = tl.load(T + base + 1, mask=m, other=0.0).to(tl.float32)
        tx2 = tl.load(T + base + 2, mask=m, other=0.0).to(tl.float32)
        ty2 = tl.load(T + base + 3, mask=m, other=0.0).to(tl.float32)
        DIST: tl.constexpr = (KIND == 1) or (KIND == 3)

        pwr_x = px2 - px1
        pwr_y = py2 - py1
        twr_x = tx2 - tx1
        twr_y = ty2 - ty1
        pw = _max(pwr_x, 0.0)
        ph = _max(pwr_y, 0.0)
        tw = _max(twr_x, 0.0)
        th = _max(twr_y, 0.0)
        ir_x = _min(px2, tx2) - _max(px1, tx1)
        ir_y = _min(py2, ty2) - _max(py1, ty1)
        iw = _max(ir_x, 0.0)
        ih = _max(ir_y, 0.0)
        cr_x = _max(px2, tx2) - _min(px1, tx1)
        cr_y = _max(py2, ty2) - _min(py1, ty1)
        cw = _max(cr_x, 0.0)
        ch = _max(cr_y, 0.0)

        inter = iw * ih
        uni = pw * ph + tw * th - inter
        u_ok = (uni > eps).to(tl.float32)
        inv_u = 1.0 / _max(uni, eps)
        iou = inter * inv_u
        if KIND == 2:
            ic = _max(iou, eps)
            loss = -tl.log(ic)
            g_iou = tl.where(iou > eps, -1.0 / ic, 0.0)
        elif KIND == 3:  # Smooth-ln: −ln IoU above LOG_TAU, its tangent below (reference._smooth_neg_log)
            above = iou >= _TAU
            loss = tl.where(above, -tl.log(tl.maximum(iou, _TAU)), _NEG_LOG_TAU + (_TAU - iou) / _TAU)
            g_iou = tl.where(above, -1.0 / tl.maximum(iou, _TAU), -1.0 / _TAU)
        else:
            loss = 1.0 - iou
            g_iou = tl.full(iou.shape, -1.0, tl.float32)

        zero = tl.zeros(iou.shape, tl.float32)
        g_union_extra = zero
        g_cw = zero
        g_ch = zero
        g_dx = zero
        g_dy = zero
        g_gx = zero
        g_gy = zero
        g_pw_c = zero
        g_ph_c = zero
        g_tw_c = zero
        g_th_c = zero
        if KIND == 4:
            ac = cw * ch
            c_ok = (ac > eps).to(tl.float32)
            inv_c = 1.0 / _max(ac, eps)
            loss = loss + (ac - uni) * inv_c
            g_c = uni * inv_c * inv_c * c_ok
            g_union_extra = -inv_c * c_ok
            g_cw = g_c * ch
            g_ch = g_c * cw
        if (KIND == 5) or (KIND == 6):
            dx = px1 + px2 - tx1 - tx2
            dy = py1 + py2 - ty1 - ty2
            rho2 = (dx * dx + dy * dy) * 0.25
            c2 = cw * cw + ch * ch
            term, g_rho2, g_c2 = _over_max(rho2, c2, eps)
            loss = loss + term
            g_dx = g_rho2 * 0.5 * dx
            g_dy = g_rho2 * 0.5 * dy
            g_cw = g_c2 * 2.0 * cw
            g_ch = g_c2 * 2.0 * ch
            if KIND == 6:
                okp = (pw + ph) > eps
                okt = (tw + th) > eps
                both = okp & okt
                # θt − θp in one call: atan a − atan b = atan((a − b) / (1 + ab)) for a, b ≥ 0
                d_both = _atan2_xpos(tw * ph - pw * th, th * ph + tw * pw, USE_LIBDEVICE)
                th_t = tl.where(okt, _atan2_xpos(tw, tl.where(okt, th, 1.0), USE_LIBDEVICE), 0.0)
                th_p = tl.where(okp, _atan2_xpos(pw, tl.where(okp, ph, 1.0), USE_LIBDEVICE), 0.0)
                diff = tl.where(both, d_both, th_t - th_p)
                four_pi2 = 0.40528473456935109
                v = four_pi2 * diff * diff
                alpha = v / (1.0 - iou + v + eps)
                loss = loss + alpha * v
                gtp = tl.where(okp, -(alpha * four_pi2 * 2.0) * diff, 0.0)
                gtt = tl.where(okt, (alpha * four_pi2 * 2.0) * diff, 0.0)
                rp = tl.where(okp, 1.0 / tl.where(okp, pw * pw + ph * ph, 1.0), 1.0)
                rt = tl.where(okt, 1.0 / tl.where(okt, tw * tw + th * th, 1.0), 1.0)
                g_pw_c = gtp * ph * rp
                g_ph_c = -gtp * pw * rp
                g_tw_c = gtt * th * rt
                g_th_c = -gtt * tw * rt
        g_tw_gap = zero
        g_th_gap = zero
        if DIST:  # gap / target diagonal; / max(enclosing diagonal, gap) for a point target (reference._gap_term)
            gx = _max(-ir_x, 0.0)
            gy = _max(-ir_y, 0.0)
            g2 = gx * gx + gy * gy
            gap = tl.where(g2 > 0, tl.sqrt(tl.where(g2 > 0, g2, 1.0)), 0.0)
            cd2 = cw * cw + ch * ch
            cdiag = tl.where(cd2 > 0, tl.sqrt(tl.where(cd2 > 0, cd2, 1.0)), 0.0)
            td2 = tw * tw + th * th
            tdiag = tl.where(td2 > 0, tl.sqrt(tl.where(td2 > 0, td2, 1.0)), 0.0)
            use_t = tdiag > eps
            inv_t = 1.0 / tl.where(use_t, tdiag, 1.0)
            term, g_gap, g_cd = _over_max(gap, cdiag, eps)
            loss = loss + tl.where(use_t, gap * inv_t, term)
            g_gap = tl.where(gap > 0, tl.where(use_t, inv_t, g_gap), 0.0)
            g_cd = tl.where((cdiag > 0) & (~use_t), g_cd, 0.0)
            g_td = tl.where(use_t, -gap * inv_t * inv_t, 0.0)
            g_tw_gap = g_td * inv_t * tw
            g_th_gap = g_td * inv_t * th
            inv_gap = 1.0 / tl.where(gap > 0, gap, 1.0)
            inv_cd = 1.0 / tl.where(cdiag > 0, cdiag, 1.0)
            g_gx = tl.where(-ir_x > 0, g_gap * inv_gap * gx, 0.0)
            g_gy = tl.where(-ir_y > 0, g_gap * inv_gap * gy, 0.0)
            g_cw = g_cd * inv_cd * cw
            g_ch = g_cd * inv_cd * ch
        if REDUCE:
            w = tl.load(W + offs, mask=m & (has_w != 0), other=1.0).to(tl.float32)
            div = tl.load(DIV, mask=has_div != 0, other=1.0).to(tl.float32)
            f = w * (scale / _max(div, eps))
            tl.store(L + pid, tl.sum(tl.where(m, f * loss, 0.0), axis=0))
        else:
            f = tl.full(loss.shape, 1.0, tl.float32)
            tl.store(L + offs, loss, mask=m)
        # a NaN loss gets NaN gradients (NaN in, NaN out); f carries the weighted reduction's factor
        f = tl.where(loss != loss, loss, f)
        if NEED_GRAD:
            g_inter = g_iou * inv_u * u_ok
            g_union = -(g_iou * iou * inv_u) * u_ok + g_union_extra
            g_inter = g_inter - g_union
            gi_x = tl.where(ir_x > 0, g_inter * ih, 0.0) - g_gx
            gi_y = tl.where(ir_y > 0, g_inter * iw, 0.0) - g_gy
            gpw = tl.where(pwr_x > 0, g_union * ph + g_pw_c, 0.0)
            gph = tl.where(pwr_y > 0, g_union * pw + g_ph_c, 0.0)
            gtw = tl.where(twr_x > 0, g_union * th + g_tw_c + g_tw_gap, 0.0)
            gth = tl.where(twr_y > 0, g_union * tw + g_th_c + g_th_gap, 0.0)
            gc_x = tl.where(cr_x > 0, g_cw, 0.0)
            gc_y = tl.where(cr_y > 0, g_ch, 0.0)
            # shares: max(p_lo, t_lo), min(p_hi, t_hi), min(p_lo, t_lo), max(p_hi, t_hi) going to p
            slo_x = _sel(px1, tx1)
            slo_y = _sel(py1, ty1)
            shi_x = _sel(tx2, px2)
            shi_y = _sel(ty2, py2)
            sclo_x = _sel(tx1, px1)
            sclo_y = _sel(ty1, py1)
            schi_x = _sel(px2, tx2)
            schi_y = _sel(py2, ty2)
            mp = m & (need_p != 0)
            mt = m & (need_t != 0)
            tl.store(GP + base + 0, f * (-gi_x * slo_x - gpw - gc_x * sclo_x + g_dx), mask=mp)
            tl.store(GP + base + 1, f * (-gi_y * slo_y - gph - gc_y * sclo_y + g_dy), mask=mp)
            tl.store(GP + base + 2, f * (gi_x * shi_x + gpw + gc_x * schi_x + g_dx), mask=mp)
            tl.store(GP + base + 3, f * (gi_y * shi_y + gph + gc_y * schi_y + g_dy), mask=mp)
            tl.store(GT + base + 0, f * (-gi_x * (1.0 - slo_x) - gtw - gc_x * (1.0 - sclo_x) - g_dx), mask=mt)
            tl.store(GT + base + 1, f * (-gi_y * (1.0 - slo_y) - gth - gc_y * (1.0 - sclo_y) - g_dy), mask=mt)
            tl.store(GT + base + 2, f * (gi_x * (1.0 - shi_x) + gtw + gc_x * (1.0 - schi_x) - g_dx), mask=mt)
            tl.store(GT + base + 3, f * (gi_y * (1.0 - shi_y) + gth + gc_y * (1.0 - schi_y) - g_dy), mask=mt)

    @triton.jit
    def _pairwise_kernel(A, B, OUT, n, m, eps, KIND: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
        bid = tl.program_id(2)
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        rm = rows < n
        cm = cols < m
        ab = (bid.to(tl.int64) * n + rows) * 4
        bb = (bid.to(tl.int64) * m + cols) * 4
        ax1 = tl.load(A + ab + 0, mask=rm, other=0.0).to(tl.float32)[:, None]
        ay1 = tl.load(A + ab + 1, mask=rm, other=0.0).to(tl.float32)[:, None]
        ax2 = tl.load(A + ab + 2, mask=rm, other=0.0).to(tl.float32)[:, None]
        ay2 = tl.load(A + ab + 3, mask=rm, other=0.0).to(tl.float32)[:, None]
        bx1 = tl.load(B + bb + 0, mask=cm, other=0.0).to(tl.float32)[None, :]
        by1 = tl.load(B + bb + 1, mask=cm, other=0.0).to(tl.float32)[None, :]
        bx2 = tl.load(B + bb + 2, mask=cm, other=0.0).to(tl.float32)[None, :]
        by2 = tl.load(B + bb + 3, mask=cm, other=0.0).to(tl.float32)[None, :]
        aw = _max(ax2 - ax1, 0.0)
        ah = _max(ay2 - ay1, 0.0)
        bw = _max(bx2 - bx1, 0.0)
        bh = _max(by2 - by1, 0.0)
        iw = _max(_min(ax2, bx2) - _max(ax1, bx1), 0.0)
        ih = _max(_min(ay2, by2) - _max(ay1, by1), 0.0)
        inter = iw * ih
        uni = aw * ah + bw * bh - inter
        score = inter / _max(uni, eps)
        if KIND != 0:
            cw = _max(_max(ax2, bx2) - _min(ax1, bx1), 0.0)
            ch = _max(_max(ay2, by2) - _min(ay1, by1), 0.0)
            if KIND == 4:
                ac = cw * ch
                score = score - (ac - uni) / _max(ac, eps)
            else:
                dx = ax1 + ax2 - bx1 - bx2
                dy = ay1 + ay2 - by1 - by2
                rho2 = (dx * dx + dy * dy) * 0.25
                c2 = cw * cw + ch * ch
                iou = score
                score = score - rho2 / _max(_max(c2, rho2), eps)
                if KIND == 6:
                    oka = (aw + ah) > eps
                    okb = (bw + bh) > eps
                    tha = tl.where(oka, _atan2_xpos(aw, tl.where(oka, ah, 1.0), USE_LIBDEVICE), 0.0)
                    thb = tl.where(okb, _atan2_xpos(bw, tl.where(okb, bh, 1.0), USE_LIBDEVICE), 0.0)
                    diff = thb - tha
                    v = 0.40528473456935109 * diff * diff
                    score = score - v / (1.0 - iou + v + eps) * v
        out = OUT + (bid.to(tl.int64) * n + rows[:, None]) * m + cols[None, :]
        tl.store(out, score, mask=rm[:, None] & cm[None, :])


def _dummy(device) -> Tensor:
    return torch.empty(1, device=device, dtype=torch.float32)


def generated_sources() -> dict:
    """The generated Triton modules: ``{cache prefix: source text}`` (the rotated aligned losses with their
    gradients; the rotated pairwise scores)."""
    from . import generated

    return {"boxloss_triton_aligned": generated.triton_aligned_source(HAND_WRITTEN_ALIGNED),
            "boxloss_triton_rotated_pairwise": generated.triton_source()}


def generated_aligned_module():
    """The module of generated aligned kernels (:func:`generated.triton_aligned_source`), from the kernel cache
    (written there on first use under the hash of its source; Triton compiles from source files)."""
    from . import generated, kernel_cache

    return kernel_cache.python_module("boxloss_triton_aligned",
                                      generated.triton_aligned_source(HAND_WRITTEN_ALIGNED))


def generated_pairwise_module():
    """The module of generated rotated pairwise-score kernels (:func:`generated.triton_source`), from the kernel
    cache like :func:`generated_aligned_module`."""
    from . import generated, kernel_cache

    return kernel_cache.python_module("boxloss_triton_rotated_pairwise", generated.triton_source())


def launch_generated_aligned(kind: str, p: Tensor, t: Tensor, weight: Optional[Tensor], divisor: Optional[Tensor],
                             eps: float, reduce: bool, scale: float, need_p: bool, need_t: bool,
                             wrap=lambda kernel: kernel):
    """A generated kind (a loss variant, axis-aligned or rotated) through its generated kernel: the outputs of
    ``boxloss::aligned_loss`` (float32) for ``(n, 4)`` or ``(n, 5)`` boxes, read as they are (float32, float16
    or bfloat16) and computed in float32."""
    from . import generated

    name, _, params = kinds.parse(kind)
    module = generated_aligned_module()
    launches = [getattr(module, symbol) for symbol in generated.triton_aligned_kernels(name)]  # one, or one per term
    if p.dtype not in _POINTER_TYPES or t.dtype != p.dtype:
        p, t = p.to(torch.float32), t.to(torch.float32)
    p, t = p.contiguous(), t.contiguous()
    n, cols = p.shape
    device = p.device
    block = generated.TRITON_ALIGNED_BLOCK
    blocks = triton.cdiv(n, block)
    loss = torch.empty(blocks * len(launches) if reduce else n, device=device, dtype=torch.float32)
    grad_p = torch.empty(n, cols, device=device, dtype=torch.float32) if need_p else torch.empty(0, device=device)
    grad_t = torch.empty(n, cols, device=device, dtype=torch.float32) if need_t else torch.empty(0, device=device)
    if n:
        dummy = _dummy(device)
        prm = torch.tensor(list(params) or [0.0], device=device, dtype=torch.float32)
        w = dummy if weight is None else weight.to(torch.float32).contiguous()
        for kernel in launches:  # in order, on one stream: each term's kernel adds to what the ones before wrote
            wrap(kernel)[(blocks,)](p, t, prm, w, loss, grad_p if need_p else dummy, grad_t if need_t else dummy,
                                    n, float(eps), FLOAT32_ULP, float(scale), int(weight is not None), int(need_p),
                                    int(need_t), int(reduce), BLOCK=block, **_launch_options())
    if reduce:
        loss = loss.sum()
    if divisor is not None:  # avg_factor as a tensor: divided on the device (no host sync)
        inv = 1 / divisor.to(torch.float32).reshape(()).clamp_min(eps)
        loss = loss * inv
        grad_p = grad_p * inv if need_p else grad_p
        grad_t = grad_t * inv if need_t else grad_t
    return loss, grad_p, grad_t


def launch_aligned(kind: str, p: Tensor, t: Tensor, weight: Optional[Tensor], divisor: Optional[Tensor], eps: float,
                   reduce: bool, scale: float, need_p: bool, need_t: bool, use_libdevice: bool = True,
                   wrap=lambda kernel: kernel):
    """Run the aligned kernel on contiguous ``(n, 4)`` boxes (float32, float16 or bfloat16): the outputs of
    ``boxloss::aligned_loss`` (float32). Generated kinds (the rotated losses) run their generated kernel."""
    if kind not in HAND_WRITTEN_ALIGNED:
        return launch_generated_aligned(kind, p, t, weight, divisor, eps, reduce, scale, need_p, need_t, wrap)
    n = p.shape[0]
    device = p.device
    blocks = triton.cdiv(n, BLOCK)
    loss = torch.empty(blocks if reduce else n, device=device, dtype=torch.float32)
    grad_p = torch.empty(n, 4, device=device, dtype=torch.float32) if need_p else torch.empty(0, device=device)
    grad_t = torch.empty(n, 4, device=device, dtype=torch.float32) if need_t else torch.empty(0, device=device)
    if n:
        dummy = _dummy(device)
        w = dummy if weight is None else weight.to(torch.float32).contiguous()
        d = dummy if divisor is None else divisor.to(torch.float32).reshape(1)
        wrap(_aligned_kernel)[(blocks,)](
            p, t, w, d, loss, grad_p if need_p else dummy, grad_t if need_t else dummy, n, float(eps),
            float(scale), int(weight is not None), int(divisor is not None), int(need_p), int(need_t),
            KIND=KIND_CODES[kind], NEED_GRAD=need_p or need_t, REDUCE=reduce, USE_LIBDEVICE=use_libdevice,
            BLOCK=BLOCK, **_launch_options())
    if reduce:
        loss = loss.sum()
    return loss, grad_p, grad_t


def launch_pairwise(kind: str, a: Tensor, b: Tensor, eps: float, use_libdevice: bool = True,
                    blocks=PAIRWISE_BLOCKS, wrap=lambda kernel: kernel) -> Tensor:
    """Scores ``(batch, n, m)`` float32 for contiguous ``a`` ``(batch, n, 4)`` and ``b`` ``(batch, m, 4)`` (rotated
    kinds: ``(batch, n, 5)`` and ``(batch, m, 5)`` cxcywhr)."""
    batch, n, m = a.shape[0], a.shape[1], b.shape[1]
    out = torch.empty(batch, n, m, device=a.device, dtype=torch.float32)
    if out.numel() and kind.startswith("rotated_"):
        # generated from boxloss/rotated.py into the kernel cache, on the boxes' features
        from ..rotated import box_features

        KERNELS = generated_pairwise_module().KERNELS

        fa = box_features(a.to(torch.float32)).contiguous()
        fb = box_features(b.to(torch.float32)).contiguous()
        grid = (triton.cdiv(n, ROTATED_BLOCKS[0]), triton.cdiv(m, ROTATED_BLOCKS[1]), batch)
        wrap(KERNELS[kind])[grid](fa, fb, out, n, m, float(eps), FLOAT32_ULP, BLOCK_N=ROTATED_BLOCKS[0],
                                  BLOCK_M=ROTATED_BLOCKS[1], **_launch_options())
    elif out.numel():
        grid = (triton.cdiv(n, blocks[0]), triton.cdiv(m, blocks[1]), batch)
        wrap(_pairwise_kernel)[grid](a, b, out, n, m, float(eps), KIND=PAIRWISE_CODES[kind],
                                     USE_LIBDEVICE=use_libdevice, BLOCK_N=blocks[0], BLOCK_M=blocks[1],
                                     **_launch_options())
    return out


if _HAVE_TRITON:
    from . import ops as _ops

    @torch.library.triton_op("boxloss::aligned_loss_triton", mutates_args=())
    def aligned_loss_triton(pred: Tensor, target: Tensor, weight: Optional[Tensor], divisor: Optional[Tensor],
                            kind: str, eps: float, reduce: bool, scale: float, need_pred: bool,
                            need_target: bool) -> Tuple[Tensor, Tensor, Tensor]:
        return launch_aligned(kind, pred.contiguous(), target.contiguous(), weight, divisor, eps, reduce, scale,
                              need_pred, need_target, use_libdevice=not _INTERPRET,
                              wrap=torch.library.wrap_triton)

    aligned_loss_triton.register_autograd(_ops._aligned_backward, setup_context=_ops._aligned_setup_context)
    aligned_loss_triton.register_vmap(_ops.make_aligned_vmap(aligned_loss_triton))

    @torch.library.triton_op("boxloss::pairwise_score_triton", mutates_args=())
    def pairwise_score_triton(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
        return launch_pairwise(kind, boxes1.contiguous(), boxes2.contiguous(), eps, use_libdevice=not _INTERPRET,
                               wrap=torch.library.wrap_triton)

    pairwise_score_triton.register_autograd(_ops._pairwise_backward, setup_context=_ops._pairwise_setup_context)
    pairwise_score_triton.register_vmap(_ops.make_pairwise_vmap(pairwise_score_triton))


_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def ptxas_usage(ptx: str, arch: int) -> Tuple[Optional[int], Optional[int]]:
    """(registers per thread, bytes of spill stores) of a compiled kernel, from Triton's own ``ptxas -v`` on its
    PTX for ``sm_<arch>`` (for the ahead-of-time checks: no GPU needed); ``None`` for what ptxas did not report."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch)
    ptxas = getattr(ptxas, "path", ptxas)
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", f"--gpu-name={target}", path, "-o", os.path.join(d, "kernel.o")],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return (int(regs.group(1)) if regs else None), (int(spill.group(1)) if spill else None)


def launch_specialisations():
    """Every (kernel, signature, constexprs) that :func:`launch_aligned` and :func:`launch_pairwise` can launch on
    a GPU, for ahead-of-time compilation (``tests/backends/test_triton_compile.py``): each input dtype the dispatcher
    passes (float32, float16, bfloat16), each kind, with and without gradients, reduced or not."""
    specs = []
    for ptr in _POINTER_TYPES.values():
        aligned_sig = {"P": ptr, "T": ptr, "W": "*fp32", "DIV": "*fp32", "L": "*fp32", "GP": "*fp32", "GT": "*fp32",
                       "n": "i32", "eps": "fp32", "scale": "fp32", "has_w": "i32", "has_div": "i32", "need_p": "i32",
                       "need_t": "i32", "KIND": "constexpr", "NEED_GRAD": "constexpr", "REDUCE": "constexpr",
                       "USE_LIBDEVICE": "constexpr", "BLOCK": "constexpr"}
        for code in sorted(set(KIND_CODES.values())):
            for need_grad in (False, True):
                for reduce in (False, True):
                    specs.append(("_aligned_kernel", aligned_sig,
                                  {"KIND": code, "NEED_GRAD": need_grad, "REDUCE": reduce, "USE_LIBDEVICE": True,
                                   "BLOCK": BLOCK}))
        pairwise_sig = {"A": ptr, "B": ptr, "OUT": "*fp32", "n": "i32", "m": "i32", "eps": "fp32",
                        "KIND": "constexpr", "USE_LIBDEVICE": "constexpr", "BLOCK_N": "constexpr",
                        "BLOCK_M": "constexpr"}
        for code in sorted(set(PAIRWISE_CODES.values())):
            specs.append(("_pairwise_kernel", pairwise_sig,
                          {"KIND": code, "USE_LIBDEVICE": True, "BLOCK_N": PAIRWISE_BLOCKS[0],
                           "BLOCK_M": PAIRWISE_BLOCKS[1]}))
    # the rotated scores read float32 features whatever the boxes' dtype
    rotated_sig = {"A": "*fp32", "B": "*fp32", "OUT": "*fp32", "n": "i32", "m": "i32", "eps": "fp32", "ulp": "fp32",
                   "BLOCK_N": "constexpr", "BLOCK_M": "constexpr"}
    from ..rotated import PAIRWISE_SCORES
    from . import generated

    for kind in PAIRWISE_SCORES:
        specs.append((f"generated_pairwise.{generated.triton_symbol(kind)}", rotated_sig,
                      {"BLOCK_N": ROTATED_BLOCKS[0], "BLOCK_M": ROTATED_BLOCKS[1]}))
    # the generated aligned kernels, one per registered formula (runtime flags), for each box dtype the dispatcher
    # passes: the axis-aligned variants and the rotated losses
    for ptr in _POINTER_TYPES.values():
        generated_sig = {"P": ptr, "T": ptr, "PRM": "*fp32", "W": "*fp32", "L": "*fp32", "GP": "*fp32",
                         "GT": "*fp32", "n": "i32", "eps": "fp32", "ulp": "fp32", "scale": "fp32", "has_w": "i32",
                         "need_p": "i32", "need_t": "i32", "reduce": "i32", "BLOCK": "constexpr"}
        for name in generated.triton_aligned_members(HAND_WRITTEN_ALIGNED):
            for symbol in generated.triton_aligned_kernels(name):
                specs.append((f"generated.{symbol}", generated_sig, {"BLOCK": generated.TRITON_ALIGNED_BLOCK}))
    return specs
