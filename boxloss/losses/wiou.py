"""Wise-IoU (Tong et al. 2023): v1 as a function, v1/v2/v3 as a module with the running mean of 1 − IoU."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from .._utils import (
    BOX_FORMATS,
    REDUCTIONS,
    _check_choice,
    _check_eps,
    _check_loss_inputs,
    _fill_loss_doc,
    _reduce,
    check_param,
)
from ..kinds import register
from ._common import variant_loss
from ._pair import Pair

__all__ = ["wiou_loss", "WIoULoss", "wiou_formula"]


def wiou_formula(p, t, m):
    b = Pair(p, t, m)
    # R = exp(ρ² / (W_g² + H_g²)*), the enclosing size detached; ρ ≤ the enclosing diagonal for valid boxes,
    # and the maximum keeps R ≤ e for inverted ones
    r = m.exp(m.safe_div(b.rho2, m.detach(m.maximum(b.c2, b.rho2))))
    return r * (1 - b.iou)


@_fill_loss_doc
def wiou_loss(pred: Tensor, target: Tensor, *, reduction: str = "mean", weight: Optional[Tensor] = None,
              avg_factor: Union[None, float, Tensor] = None, eps: float = 1e-7, fmt: str = "xyxy") -> Tensor:
    r"""Wise-IoU v1 loss: 1 − IoU scaled up by the distance between the centres.

    .. math::
        \mathcal{L}_{WIoUv1} = \exp\!\Big(\frac{(x - x^{gt})^2 + (y - y^{gt})^2}{(W_g^2 + H_g^2)^*}\Big)
        \,(1 - \mathrm{IoU}) \in [0, e)

    with (x, y) the centres and W_g, H_g the enclosing box's size, **detached** (the ``*``: no gradient flows
    through the enclosing size, so the prediction is not paid for growing the enclosing box). The centre
    distance keeps its gradient, so disjoint boxes are pulled together. For the dynamic focusing of v2 and v3
    (which needs the running mean of 1 − IoU over training) use :class:`boxloss.WIoULoss`.

    {args}

    {returns}

    Reference:
        Z. Tong, Y. Chen, Z. Xu, R. Yu, "Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing
        Mechanism", arXiv 2023. https://arxiv.org/abs/2301.10051

    Example:
        >>> import torch
        >>> from boxloss import wiou_loss
        >>> wiou_loss(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]]))  # exp(1/13) * (1 - 1/3)
        tensor(0.7200)
    """
    return variant_loss("wiou", (), pred, target, reduction, weight, avg_factor, eps, fmt)


class WIoULoss(nn.Module):
    r"""Wise-IoU v1, v2 or v3, with the running mean of 1 − IoU that v2 and v3 focus by.

    .. math::
        v1:\ \mathcal{L}_{WIoUv1} \qquad
        v2:\ \Big(\frac{\mathcal{L}_{IoU}^*}{\overline{\mathcal{L}_{IoU}}}\Big)^{\gamma} \mathcal{L}_{WIoUv1} \qquad
        v3:\ \frac{\beta}{\delta\,\alpha^{\beta - \delta}} \mathcal{L}_{WIoUv1},\
        \beta = \frac{\mathcal{L}_{IoU}^*}{\overline{\mathcal{L}_{IoU}}}

    with :math:`\mathcal{L}_{IoU}^* = 1 - \mathrm{IoU}` of each box, detached (the focusing factor is a weight,
    as in the paper), and :math:`\overline{\mathcal{L}_{IoU}}` the running mean of the batch means of
    1 − IoU, a buffer (``iou_mean``, saved in ``state_dict``) that starts at 1 and is updated in training mode
    only, before the factor is computed: ``mean ← (1 − m)·mean + m·batch_mean``, on the device, with no host
    synchronisation.

    What the batch mean averages: the boxes whose 1 − IoU is finite and, when ``weight`` is given, whose weight is
    positive (padding and ignored boxes, weight 0, do not move it); a batch with none such leaves the mean
    unchanged. A NaN box still gives a NaN loss for its call, but never enters the running mean. Under
    ``torch.distributed`` (a process group initialised, ``sync=True``, the default) the sums are all-reduced, so
    every process averages over the global batch, as one process would on the whole batch, and all keep the
    same mean (an all-reduce per training call; collective, so every rank must call the loss each step). With
    ``sync=False`` each process averages its own boxes; DDP's default ``broadcast_buffers`` then overwrites every
    rank's mean with rank 0's at each forward.

    The mean is kept in float32 whatever the module is converted to (``.half()``, ``.to(torch.bfloat16)``:
    bfloat16 could not represent the step of a momentum of 4e-4 from 1.0); the factor is computed in the loss'
    compute dtype (float32, float64 for float64 boxes).

    Args:
        version (int): 1, 2 or 3 (default 3, the paper's best).
        reduction, eps, fmt: as :func:`boxloss.wiou_loss`.
        momentum (float, optional): m in (0, 1]. Default: the paper's rule m = 1 − 0.05^(1/(n·t)) with n·t =
            ``steps_to_plateau``, so that the running mean forgets 95 % of its start by then.
        steps_to_plateau (int): n·t in the rule above — batches per epoch times the epoch where the mAP's rise
            slows (default 7000).
        gamma (float): v2's exponent (default 0.5).
        alpha, delta (float): v3's α and δ (default 1.9 and 3, the paper's best on COCO).
        sync (bool): average the batch means over all processes of an initialised ``torch.distributed`` process
            group (default True).

    ``forward(pred, target, weight=None, avg_factor=None)`` returns what :func:`boxloss.wiou_loss` returns, times
    the focusing factor for v2 and v3.

    Example:
        >>> import torch
        >>> from boxloss import WIoULoss
        >>> criterion = WIoULoss(version=3)
        >>> loss = criterion(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]]))
        >>> bool(criterion.iou_mean < 1)  # the running mean moved towards this batch's 1 − IoU = 2/3
        True
    """

    def __init__(self, version: int = 3, *, reduction: str = "mean", eps: float = 1e-7, fmt: str = "xyxy",
                 momentum: Optional[float] = None, steps_to_plateau: int = 7000, gamma: float = 0.5,
                 alpha: float = 1.9, delta: float = 3.0, sync: bool = True) -> None:
        super().__init__()
        if version not in (1, 2, 3) or isinstance(version, bool):
            raise ValueError(f"version must be 1, 2 or 3; got {version!r}")
        _check_choice("reduction", reduction, REDUCTIONS)
        _check_choice("fmt", fmt, BOX_FORMATS)
        _check_eps(eps)
        if isinstance(steps_to_plateau, bool) or not isinstance(steps_to_plateau, int) or steps_to_plateau < 1:
            raise ValueError(f"steps_to_plateau must be a positive int; got {steps_to_plateau!r}")
        if momentum is None:
            momentum = 1 - 0.05 ** (1 / steps_to_plateau)
        self.momentum = check_param("momentum", momentum, 0.0, 1.0, low_open=True)
        self.version, self.reduction, self.eps, self.fmt = version, reduction, eps, fmt
        self.gamma = check_param("gamma", gamma, 0.0, low_open=True)
        self.alpha = check_param("alpha", alpha, 0.0, low_open=True)
        self.delta = check_param("delta", delta, 0.0, low_open=True)
        if not isinstance(sync, bool):
            raise TypeError(f"sync must be a bool; got {type(sync).__name__}")
        self.sync = sync
        self.register_buffer("iou_mean", torch.tensor(1.0, dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        # .to(device) moves the running mean; .half() / .to(dtype) must not round it (see the class docstring)
        mean = self.iou_mean
        super()._apply(fn, recurse)
        self.iou_mean = mean.to(device=self.iou_mean.device, dtype=torch.float32)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "iou_mean"
        if key in state_dict:
            state_dict[key] = state_dict[key].to(torch.float32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _update_mean(self, l_iou: Tensor, weight: Optional[Tensor]) -> None:
        """mean ← (1 − m)·mean + m·(mean of the finite, positively weighted boxes), on the device."""
        valid = l_iou.isfinite()
        if weight is not None:
            valid = valid & (torch.broadcast_to(weight.detach(), l_iou.shape) > 0)
        stats = torch.stack([torch.where(valid, l_iou, 0.0).sum(), valid.sum().to(torch.float32)])
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        total, count = stats.unbind()
        batch_mean = total / count.clamp_min(1.0)
        updated = self.iou_mean * (1 - self.momentum) + self.momentum * batch_mean
        self.iou_mean.copy_(torch.where(count > 0, updated, self.iou_mean))

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Union[None, float, Tensor] = None) -> Tensor:
        if self.version == 1:
            return wiou_loss(pred, target, reduction=self.reduction, weight=weight, avg_factor=avg_factor,
                             eps=self.eps, fmt=self.fmt)
        _check_loss_inputs(pred, target, self.reduction, weight, avg_factor)
        loss = wiou_loss(pred, target, reduction="none", eps=self.eps, fmt=self.fmt)
        from ..boxes import box_iou

        with torch.no_grad():
            l_iou = 1 - box_iou(pred.detach(), target.detach(), aligned=True, fmt=self.fmt, eps=self.eps)
            if self.training:
                self._update_mean(l_iou.to(torch.float32), weight)
            beta = l_iou / self.iou_mean.to(l_iou.dtype).clamp_min(self.eps)  # float32, float64 for float64 boxes
            if self.version == 2:
                factor = beta.pow(self.gamma)
            else:
                factor = beta / (self.delta * torch.pow(torch.as_tensor(self.alpha, dtype=beta.dtype,
                                                                        device=beta.device), beta - self.delta))
        return _reduce(loss * factor.to(loss.dtype), self.reduction, weight, avg_factor, self.eps)

    def extra_repr(self) -> str:
        extra = {2: f", gamma={self.gamma}", 3: f", alpha={self.alpha}, delta={self.delta}"}.get(self.version, "")
        return (f"version={self.version}, reduction={self.reduction!r}, eps={self.eps}, fmt={self.fmt!r}, "
                f"momentum={self.momentum:.3g}{extra}" + ("" if self.sync else ", sync=False"))


# the registration line: the backends derive this kind's kernels from its formula (boxloss.kinds)
register("wiou", wiou_formula)
