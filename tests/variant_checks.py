"""Helpers of the per-variant test files: plain-Python geometry (one pair at a time, float64, written from the
papers, independent of boxloss' formulas) and the descent check."""

import math

import torch


def sizes(b):
    return max(0.0, b[2] - b[0]), max(0.0, b[3] - b[1])


def centre(b):
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def iou(p, t):
    iw = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
    ih = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    inter = iw * ih
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    union = pw * ph + tw * th - inter
    return inter / union if union > 0 else 0.0


def enclosing(p, t):
    return max(p[2], t[2]) - min(p[0], t[0]), max(p[3], t[3]) - min(p[1], t[1])


def centre_offset(p, t):
    (px, py), (tx, ty) = centre(p), centre(t)
    return tx - px, ty - py


def giou_penalty(p, t):
    cw, ch = enclosing(p, t)
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    union = pw * ph + tw * th - _inter(p, t)
    return (cw * ch - union) / (cw * ch)


def _inter(p, t):
    return max(0.0, min(p[2], t[2]) - max(p[0], t[0])) * max(0.0, min(p[3], t[3]) - max(p[1], t[1]))


def diou_penalty(p, t):
    dx, dy = centre_offset(p, t)
    cw, ch = enclosing(p, t)
    return (dx * dx + dy * dy) / (cw * cw + ch * ch)


def ciou_v_and_alpha(p, t):
    (pw, ph), (tw, th) = sizes(p), sizes(t)
    v = 4 / math.pi**2 * (math.atan(tw / th) - math.atan(pw / ph)) ** 2
    return v, v / (1 - iou(p, t) + v)


def per_box(ref, pred, target, **kw):
    """A Python per-pair reference applied to (n, 4) tensors → (n,) float64."""
    return torch.tensor([ref(p, t, **kw) for p, t in zip(pred.tolist(), target.tolist())], dtype=torch.float64)


def descend(loss_fn, pred, target, steps=500, lr=2.0):
    """Plain gradient descent on the predicted box from ``pred``; the IoU reached (boxes of size ~4)."""
    p = pred.clone().double().requires_grad_()
    t = target.double()
    opt = torch.optim.SGD([p], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(p, t).backward()
        opt.step()
    return iou(p.detach()[0].tolist(), t[0].tolist())


DISJOINT = (torch.tensor([[0.0, 0.0, 4.0, 3.0]]), torch.tensor([[9.0, 6.0, 12.0, 10.0]]))
