"""Gaussian losses for rotated boxes: ProbIoU, GWD, KLD and KFIoU.

Each box ``(cx, cy, w, h, θ)`` becomes a 2-D Gaussian with mean at its centre and covariance

.. math:: \\Sigma = R_\\theta \\,\\mathrm{diag}(w^2 / k, h^2 / k)\\, R_\\theta^\\top

(``k = 12``, the variance of a uniform distribution over the box, for ProbIoU; ``k = 4`` for GWD, KLD and
KFIoU, as their authors' code), with the width along ``(cos θ, −sin θ)`` (torchvision's convention). A box
and the same box turned by 180°, ``(w, h, θ)`` and ``(h, w, θ + 90°)``, and a square at any multiple of 90°
give the same Gaussian, so these losses have no angle-boundary problem.

Numerics, shared by the four: every loss is invariant to translating and scaling both boxes together, so the
formulas run in a frame centred on the target and measured in the pair's largest side (held constant), and
widths and heights are clamped below at ``1e-4`` of it (mmrotate clamps at an absolute 1e-7, which lets the
inverse covariance of a thin box overflow float32). Determinants are the closed forms ``λ₁λ₂`` and inverses
are the adjugate over them; no ``torch.linalg`` call, nothing to fail on a singular matrix. Square roots are
``safe_sqrt`` (zero gradient at exactly 0). Every formula is registered as a rotated variant: a generated C
kernel with its gradient in one pass on the CPU, a generated Triton kernel on CUDA, and the generated closed form
elsewhere.
"""

from __future__ import annotations

import math
from typing import Optional, Union

from torch import Tensor

from .._utils import ROTATED_FORMATS, _check_choice, _fill_loss_doc, check_param
from ..kinds import register
from ..rotated import DEGREE, _nan_guard, canonical
from ._common import variant_loss

__all__ = ["probiou_loss", "gwd_loss", "kld_loss", "kfiou_loss", "GAUSSIAN_FORMULAS"]

MIN_SIDE = 1e-4  # smallest width/height, relative to the pair's largest side
# KFIoU's anchor is at least this fraction of the prediction's side: the largest ratio of a decoded box to its
# anchor that torchvision's and mmdetection's box coders allow (their clamp of dw, dh at log(1000 / 16))
ANCHOR_MIN_RATIO = 16 / 1000


class _Gaussians:
    """The two Gaussians of a (pred, target) pair, in the target-centred, scale-normalised frame: standard
    deviations ``s1, s2`` (pred) and ``t1, t2`` (target) along each box's width and height, the angle between
    them ``δ``, and the centre offset ``Δ``. The divergences are written in these terms (eigen-decomposition
    form), so that every term is exactly 0 for identical boxes and accurate for nearly identical ones, instead
    of the difference of nearly equal matrix products that the textbook 2 × 2 formulas take."""

    def __init__(self, p, t, m, k: float) -> None:
        self.m = m
        cxp, cyp, wp, hp, rp = p
        cxt, cyt, wt, ht, rt = t
        wp, hp, rp = canonical(wp, hp, rp, m)
        wt, ht, rt = canonical(wt, ht, rt, m)
        wp, hp, wt, ht = (m.clamp_min(x, 0.0) for x in (wp, hp, wt, ht))
        dx, dy = cxp - cxt, cyp - cyt
        spread = m.abs(m.detach(dx)) + m.abs(m.detach(dy))
        largest = m.maximum(m.maximum(wp, hp), m.maximum(wt, ht))
        unit = m.detach(m.clamp_min(m.maximum(largest, spread * m.ulp), 1e-30))
        root_k = math.sqrt(k)
        self.dx, self.dy = dx / unit, dy / unit
        self.s1, self.s2 = (m.clamp_min(x / unit, MIN_SIDE) / root_k for x in (wp, hp))
        self.t1, self.t2 = (m.clamp_min(x / unit, MIN_SIDE) / root_k for x in (wt, ht))
        # pair each of the prediction's axes with the target's axis nearest to it (|δ| ≤ 45°): a target given
        # as (t2, t1, θ ∓ 90°) is the same Gaussian, and the aligned pairing keeps the terms below from being
        # large numbers that cancel (boxes near the 0°/90° boundary of the reduced angle)
        delta = rt - rp
        up, down = delta > 45.0, delta < -45.0
        swap = up | down
        self.t1, self.t2 = m.where(swap, self.t2, self.t1), m.where(swap, self.t1, self.t2)
        rt = rt - m.where(up, 90.0, 0.0) + m.where(down, 90.0, 0.0)
        self.cp, self.sp = m.cos(rp * DEGREE), m.sin(rp * DEGREE)
        self.ct, self.st = m.cos(rt * DEGREE), m.sin(rt * DEGREE)
        sin_d = m.sin((rt - rp) * DEGREE)
        self.sin2 = sin_d * sin_d
        self.guard = _nan_guard(list(p) + list(t))

    def offset_in(self, c, s):
        """Δ along the axes u = (c, −s), v = (s, c) of a box."""
        return self.dx * c - self.dy * s, self.dx * s + self.dy * c

    def variances(self):
        return self.s1 * self.s1, self.s2 * self.s2, self.t1 * self.t1, self.t2 * self.t2

    def det_sum(self):
        """det(Σp + Σt) = (λ1 + μ1)(λ2 + μ2) + sin²δ (λ1 − λ2)(μ1 − μ2)."""
        l1, l2, u1, u2 = self.variances()
        return (l1 + u1) * (l2 + u2) + self.sin2 * (l1 - l2) * (u1 - u2)

    def sum_entries(self):
        """(Σxx, Σyy, Σxy) of Σp + Σt in the image frame (each: λ1 along u = (c, −s), λ2 along v = (s, c))."""
        l1, l2, u1, u2 = self.variances()
        out = []
        for lu, lv, c, s in ((l1, l2, self.cp, self.sp), (u1, u2, self.ct, self.st)):
            out.append((lu * c * c + lv * s * s, lu * s * s + lv * c * c, (lv - lu) * c * s))
        return tuple(x + y for x, y in zip(*out))


def _finish(distance, m, fun: str, tau):
    """The authors' post-processing: ``f(d)`` then ``1 − 1/(τ + f(d))`` for τ ≥ 1, ``f(d)`` itself for τ < 1."""
    if fun == "log1p":
        d = m.log1p(distance)
    elif fun == "sqrt":
        d = m.safe_sqrt(distance)
    else:
        d = distance
    if isinstance(tau, (int, float)):  # on tensors the parameter is a number
        return 1 - 1 / (tau + d) if tau >= 1 else d
    # (a generated kernel evaluates both branches: the one not taken must stay finite, 1/(0 + 0) is not)
    saturating = tau >= 1
    return m.where(saturating, 1 - 1 / m.where(saturating, tau + d, 1.0), d)


def probiou_formula(mode: str):
    def formula(p, t, m):
        g = _Gaussians(p, t, m, 12.0)
        a, b, c = g.sum_entries()
        det = g.det_sum()
        # Bhattacharyya distance B = ⅛ Δᵀ Σ⁻¹ Δ + ½ ln(det Σ / √(det Σp det Σt)), Σ = (Σp + Σt)/2; the log term
        # is the sum of three log1p's of non-negative terms (0 for identical boxes)
        # centres so far apart (in standard deviations) that B > 100 whatever the shapes: B is clamped there,
        # and the quadratic form, of order (offset / smallest side)² ~ 1e23 for two points, is not evaluated
        # (its derivatives would overflow float32 and turn the clamp's zero gradient into NaN)
        far = (g.dx * g.dx + g.dy * g.dy) > 800.0 * (a + b)
        dx, dy = m.where(far, 0.0, g.dx), m.where(far, 0.0, g.dy)
        quad = m.where(far, 800.0, (b * dx * dx + a * dy * dy - 2 * c * dx * dy) / det)
        l1, l2, u1, u2 = g.variances()
        log_det = (m.log1p((g.s1 - g.t1) * (g.s1 - g.t1) / (2 * g.s1 * g.t1))
                   + m.log1p((g.s2 - g.t2) * (g.s2 - g.t2) / (2 * g.s2 * g.t2))
                   + m.log1p(g.sin2 * (l1 - l2) * (u1 - u2) / ((l1 + u1) * (l2 + u2))))
        # clamped to [0, 100] as in the authors' code: beyond 100 (centres ~28 standard deviations apart) the
        # loss is flat, and the gradient of B itself (mode "l2") cannot overflow
        bd = m.clamp_max(m.clamp_min(0.25 * quad + 0.5 * log_det, 0.0), 100.0)
        loss = m.safe_sqrt(-m.expm1(-bd)) if mode == "l1" else bd
        return loss + g.guard

    formula.__name__ = f"probiou_{mode}_formula"
    return formula


def gwd_formula(fun: str):
    def formula(p, t, m, tau):
        g = _Gaussians(p, t, m, 4.0)
        s1, s2, t1, t2 = g.s1, g.s2, g.t1, g.t2
        # W² = ‖Δ‖² + Tr Σp + Tr Σt − 2 Tr((Σp^½ Σt Σp^½)^½), and with A = s1t1 + s2t2, B = s1t2 + s2t1 the trace
        # term is √(cos²δ A² + sin²δ B²); written as its difference from the aligned case (no cancellation)
        a, b = s1 * t1 + s2 * t2, s1 * t2 + s2 * t1
        x = g.sin2 * (s1 - s2) * (t1 - t2) * (a + b)
        shape = ((s1 - t1) * (s1 - t1) + (s2 - t2) * (s2 - t2)
                 + 2 * x / (a + m.safe_sqrt(m.clamp_min(a * a - x, 0.0))))
        w2 = g.dx * g.dx + g.dy * g.dy + shape
        distance = m.safe_sqrt(m.clamp_min(w2, 0.0)) / (2 * m.sqrt(m.sqrt(s1 * s2 * t1 * t2)))
        return _finish(distance, m, fun, tau) + g.guard  # normalised by 2 (det Σp det Σt)^⅛

    formula.__name__ = f"gwd_{fun}_formula"
    return formula


def _phi(t, s, m):
    """φ(r) = r − 1 − ln r ≥ 0 of the variance ratio r = t²/s²: as x − log1p(x), x = r − 1, near r = 1 (no
    cancellation), as r − 1 − ln r away from it (x rounds to −1 for tiny r)."""
    ratio = (t / s) * (t / s)
    x = (t - s) * (t + s) / (s * s)
    near = m.abs(x) < 0.5
    xs = m.where(near, x, 0.0)
    return m.where(near, xs - m.log1p(xs), (ratio - 1) - m.log(ratio))


def kld_formula(fun: str):
    def formula(p, t, m, tau):
        g = _Gaussians(p, t, m, 4.0)
        l1, l2, u1, u2 = g.variances()
        # D_KL(N_t ‖ N_p) = ½ [Δᵀ Σp⁻¹ Δ + tr(Σp⁻¹ Σt) − 2 + ln(det Σp / det Σt)]
        #                 = ½ [Δᵀ Σp⁻¹ Δ + φ(μ1/λ1) + φ(μ2/λ2) + sin²δ (μ1 − μ2)(1/λ2 − 1/λ1)],  φ(r) = r − 1 − ln r
        du, dv = g.offset_in(g.cp, g.sp)
        quad = du * du / l1 + dv * dv / l2
        phi = _phi(g.t1, g.s1, m) + _phi(g.t2, g.s2, m)
        kl = m.clamp_min(0.5 * (quad + phi + g.sin2 * (u1 - u2) * (1 / l2 - 1 / l1)), 0.0)
        return _finish(m.safe_sqrt(kl), m, fun, tau) + g.guard  # the authors' default sqrt=True

    formula.__name__ = f"kld_{fun}_formula"
    return formula


def kfiou_formula(fun: str):
    def formula(p, t, m, beta):
        g = _Gaussians(p, t, m, 4.0)
        # Σ = Σp − Σp (Σp + Σt)⁻¹ Σp = Σp (Σp + Σt)⁻¹ Σt, so det Σ = det Σp det Σt / det(Σp + Σt)
        v_p, v_t = 4 * g.s1 * g.s2, 4 * g.t1 * g.t2
        v = v_p * g.t1 * g.t2 / m.sqrt(g.det_sum())
        kfiou = v / (v_p + v_t - v + m.eps)
        if fun == "ln":
            kf = -m.log(kfiou + m.eps)
        elif fun == "exp":
            kf = m.exp(1 - kfiou) - 1
        else:
            kf = 1 - kfiou
        # centre term: smooth-L1 of the offset along the target's axes over the anchor's width and height (the
        # offset encoding of the authors' code, where the anchor is a constant of positive size). The anchor is
        # the target with each side at least 16/1000 of the prediction's paired side and 1e-4 of the centre
        # distance, held constant: a point target would otherwise divide by its clamped 1e-4 side (losses to
        # 1e11), and a prediction that grows its anchor would be paid for growing. s = w/2 here, so w = 2 t1
        du, dv = g.offset_in(g.ct, g.st)
        floor = MIN_SIDE * m.safe_sqrt(g.dx * g.dx + g.dy * g.dy)
        xy = 0.0
        for d, side_t, side_p in ((du, g.t1, g.s1), (dv, g.t2, g.s2)):
            anchor = m.detach(m.maximum(m.maximum(2 * side_t, (2 * ANCHOR_MIN_RATIO) * side_p), floor))
            d = m.abs(d) / anchor
            quadratic = d < beta
            xy = xy + m.where(quadratic, 0.5 * d * d / m.where(quadratic, beta, 1.0), d - 0.5 * beta)
        return m.clamp_min(xy + kf, 0.0) + g.guard

    formula.__name__ = f"kfiou_{fun}_formula"
    return formula


PROBIOU_MODES = ("l1", "l2")
DISTANCE_FUNS = ("log1p", "sqrt", "none")
KFIOU_FUNS = ("none", "ln", "exp")

# registered kind -> (formula, parameter names)
GAUSSIAN_FORMULAS = {
    **{f"probiou_{mode}": (probiou_formula(mode), ()) for mode in PROBIOU_MODES},
    **{f"gwd_{fun}": (gwd_formula(fun), ("tau",)) for fun in DISTANCE_FUNS},
    **{f"kld_{fun}": (kld_formula(fun), ("tau",)) for fun in DISTANCE_FUNS},
    **{f"kfiou_{fun}": (kfiou_formula(fun), ("beta",)) for fun in KFIOU_FUNS},
}


_GAUSSIAN_ARGS = """
        pred (Tensor[..., 5]): predicted rotated boxes ``(cx, cy, w, h, θ)``, θ in degrees (``fmt``).
        target (Tensor[..., 5]): target rotated boxes, same shape.
        reduction, weight, avg_factor, eps: as for :func:`boxloss.iou_loss`.
        fmt (str): ``"cxcywhr"`` (default), ``"xywhr"`` or ``"xyxyxyxy"`` (then ``(..., 8)``)."""


def _gaussian_doc(fn):
    fn.__doc__ = fn.__doc__.replace("{gaussian_args}", _GAUSSIAN_ARGS.strip())
    return _fill_loss_doc(fn)


@_gaussian_doc
def probiou_loss(pred: Tensor, target: Tensor, *, mode: str = "l1", reduction: str = "mean",
                 weight: Optional[Tensor] = None, avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7,
                 fmt: str = "cxcywhr") -> Tensor:
    r"""ProbIoU loss: the Hellinger distance between the boxes' Gaussians (covariance ``diag(w², h²)/12``).

    .. math::
        B = \tfrac18 \Delta^\top \Sigma^{-1} \Delta + \tfrac12 \ln\frac{\det\Sigma}{\sqrt{\det\Sigma_p
        \det\Sigma_t}},\quad \Sigma = \tfrac12(\Sigma_p + \Sigma_t);\qquad
        \mathcal{L}_{l1} = \sqrt{1 - e^{-B}} \in [0, 1),\quad \mathcal{L}_{l2} = B

    ``B`` is the Bhattacharyya distance; ``l1`` is the Hellinger distance (the paper's and ultralytics' loss),
    ``l2`` is ``−ln(1 − HD²)`` = ``B``. Identical boxes give 0, with zero gradient; disjoint boxes keep a
    gradient (the quadratic term grows with the offset).

    Args:
        {gaussian_args}
        mode (str): ``"l1"`` (default) or ``"l2"``.

    {returns}

    Reference:
        Llerena et al., "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union for Object
        Detection", 2021. https://arxiv.org/abs/2106.06072

    Example:
        >>> import torch
        >>> from boxloss import probiou_loss
        >>> box = torch.tensor([[0., 0., 4., 2., 30.]])
        >>> probiou_loss(box, box)
        tensor(0.)
        >>> probiou_loss(box, torch.tensor([[0., 0., 2., 4., 120.]]))  # the same box, described differently
        tensor(0.)
    """
    _check_choice("mode", mode, PROBIOU_MODES)
    return variant_loss(f"probiou_{mode}", (), pred, target, reduction, weight, avg_factor, eps, fmt,
                        ROTATED_FORMATS)


def _tau(tau) -> float:
    return check_param("tau", tau, 0.0)


@_gaussian_doc
def gwd_loss(pred: Tensor, target: Tensor, *, fun: str = "log1p", tau: float = 1.0, reduction: str = "mean",
             weight: Optional[Tensor] = None, avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7,
             fmt: str = "cxcywhr") -> Tensor:
    r"""Gaussian Wasserstein distance loss (covariance ``diag(w², h²)/4``), as the authors' code computes it.

    .. math::
        d^2 = \lVert\Delta\rVert^2 + \mathrm{Tr}\,\Sigma_p + \mathrm{Tr}\,\Sigma_t
            - 2\sqrt{\mathrm{Tr}(\Sigma_p\Sigma_t) + 2\sqrt{\det\Sigma_p\det\Sigma_t}},\quad
        D = \frac{d}{2 (\det\Sigma_p \det\Sigma_t)^{1/8}},\quad
        \mathcal{L} = 1 - \frac{1}{\tau + f(D)}

    ``f`` is applied to the normalised distance ``D`` (not to ``d²``), as in the authors' code (mmrotate's
    ``gwd_loss`` with ``normalize=True``); with ``tau < 1`` the loss is ``f(D)`` itself. Identical boxes give
    ``1 − 1/τ`` (0 for the default τ = 1).

    Args:
        {gaussian_args}
        fun (str): ``"log1p"`` (default), ``"sqrt"`` or ``"none"``.
        tau (float): τ ≥ 0 (default 1).

    {returns}

    Reference:
        Yang et al., "Rethinking Rotated Object Detection with Gaussian Wasserstein Distance Loss", ICML 2021.
        https://arxiv.org/abs/2101.11952

    Example:
        >>> import torch
        >>> from boxloss import gwd_loss
        >>> box = torch.tensor([[0., 0., 4., 2., 30.]])
        >>> gwd_loss(box, box)
        tensor(0.)
    """
    _check_choice("fun", fun, DISTANCE_FUNS)
    return variant_loss(f"gwd_{fun}", (_tau(tau),), pred, target, reduction, weight, avg_factor, eps, fmt,
                        ROTATED_FORMATS)


@_gaussian_doc
def kld_loss(pred: Tensor, target: Tensor, *, fun: str = "log1p", tau: float = 1.0, reduction: str = "mean",
             weight: Optional[Tensor] = None, avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7,
             fmt: str = "cxcywhr") -> Tensor:
    r"""Kullback-Leibler divergence loss (covariance ``diag(w², h²)/4``), as the authors' code computes it.

    .. math::
        D_{KL} = \tfrac12\Big[\Delta^\top\Sigma_p^{-1}\Delta + \mathrm{Tr}(\Sigma_p^{-1}\Sigma_t)
            + \ln\frac{\det\Sigma_p}{\det\Sigma_t} - 2\Big],\quad
        \mathcal{L} = 1 - \frac{1}{\tau + f\big(\sqrt{D_{KL}}\big)}

    the divergence of the target's Gaussian from the prediction's (mmrotate's ``kld_loss`` with its default
    ``sqrt=True``: ``f`` is applied to the square root of the divergence); with ``tau < 1`` the loss is
    ``f(√D)`` itself. Scale invariant; identical boxes give ``1 − 1/τ``.

    Args:
        {gaussian_args}
        fun (str): ``"log1p"`` (default), ``"sqrt"`` or ``"none"``.
        tau (float): τ ≥ 0 (default 1).

    {returns}

    Reference:
        Yang et al., "Learning High-Precision Bounding Box for Rotated Object Detection via Kullback-Leibler
        Divergence", NeurIPS 2021. https://arxiv.org/abs/2106.01883

    Example:
        >>> import torch
        >>> from boxloss import kld_loss
        >>> box = torch.tensor([[0., 0., 4., 2., 30.]])
        >>> kld_loss(box, box)
        tensor(0.)
    """
    _check_choice("fun", fun, DISTANCE_FUNS)
    return variant_loss(f"kld_{fun}", (_tau(tau),), pred, target, reduction, weight, avg_factor, eps, fmt,
                        ROTATED_FORMATS)


@_gaussian_doc
def kfiou_loss(pred: Tensor, target: Tensor, *, fun: str = "none", beta: float = 1.0 / 9.0,
               reduction: str = "mean", weight: Optional[Tensor] = None,
               avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "cxcywhr") -> Tensor:
    r"""KFIoU loss: the overlap of the boxes' Gaussians through the Kalman-filter product, plus a centre term.

    .. math::
        \Sigma = \Sigma_p - \Sigma_p(\Sigma_p + \Sigma_t)^{-1}\Sigma_p,\quad V(\Sigma) = 4\sqrt{\det\Sigma},\quad
        \mathrm{KFIoU} = \frac{V(\Sigma)}{V(\Sigma_p) + V(\Sigma_t) - V(\Sigma) + \epsilon}

    .. math::
        \mathcal{L} = \mathrm{smoothL1}_\beta\Big(\frac{u_t\cdot\Delta}{w_t}\Big)
            + \mathrm{smoothL1}_\beta\Big(\frac{v_t\cdot\Delta}{h_t}\Big) + (1 - \mathrm{KFIoU})

    with the covariance ``diag(w², h²)/4``. As in the authors' code, KFIoU is at most 1/3 (reached by identical
    boxes), so the loss of identical boxes is **2/3**, not 0, and its minimum over the prediction's size is
    not at the target's size: the centre term carries the position, the KFIoU term the shape. The centre
    term is the authors' smooth-L1 on encoded offsets: along the target's axes, over the anchor's width and
    height, where the anchor is the target with each side at least 16/1000 of the prediction's corresponding
    side (the largest box-to-anchor ratio, 62.5, that torchvision's and mmdetection's box coders decode) and
    1e-4 of the centre distance, held constant (no gradient) as the authors' anchors are. Any target more than
    1/62.5 of the prediction's size is its own anchor, as in the authors' code; a point target is bounded by
    the prediction's size (the centre term is at most 62.5 × the offset over the prediction's side: a 1 × 1
    prediction 0.5 px from a point costs about 32, not 5e3), and two points by 1e4 per axis. ``fun="ln"`` uses ``−ln(KFIoU + ε)`` and ``fun="exp"``
    ``exp(1 − KFIoU) − 1`` instead of ``1 − KFIoU``.

    Args:
        {gaussian_args}
        fun (str): ``"none"`` (default), ``"ln"`` or ``"exp"``.
        beta (float): smooth-L1's β > 0 of the centre term (default 1/9).

    {returns}

    Reference:
        Yang et al., "The KFIoU Loss for Rotated Object Detection", ICLR 2023. https://arxiv.org/abs/2201.12558

    Example:
        >>> import torch
        >>> from boxloss import kfiou_loss
        >>> box = torch.tensor([[0., 0., 4., 2., 30.]])
        >>> kfiou_loss(box, box)  # 1 - 1/3
        tensor(0.6667)
    """
    _check_choice("fun", fun, KFIOU_FUNS)
    beta = check_param("beta", beta, 0.0, low_open=True)
    return variant_loss(f"kfiou_{fun}", (beta,), pred, target, reduction, weight, avg_factor, eps, fmt,
                        ROTATED_FORMATS)


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
for _kind, (_formula, _params) in GAUSSIAN_FORMULAS.items():
    register(_kind, _formula, _params, columns=5)
