"""The loss variants: one line each. A line names the formula (in its own module, written once against the
math namespace of :mod:`boxloss._fast.expr`) and its runtime parameters; the compiled CPU kernel, the PyTorch
closed form and the reference are all derived from it (:mod:`boxloss._fast.variants`)."""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Tuple

from .. import rotated
from . import _pair
from .alpha_iou import ALPHA_VARIANTS, alpha_iou_formula
from .eiou import eiou_formula, focal_eiou_formula
from .focaler_iou import focaler_iou_formula
from .gaussian import GAUSSIAN_FORMULAS
from .inner_iou import inner_iou_formula
from .mpdiou import mpdiou_formula
from .nwd import nwd_formula
from .shape_iou import shape_iou_formula
from .siou import siou_formula
from .wiou import wiou_formula


class Variant(NamedTuple):
    formula: Callable
    params: Tuple[str, ...]
    columns: int = 4  # 4: axis-aligned xyxy boxes; 5: rotated cxcywhr boxes


# the losses Inner-IoU and Focaler-IoU can extend ("variant=")
BASES: Dict[str, Callable] = {
    "iou": _pair.iou_formula,
    "giou": _pair.giou_formula,
    "diou": _pair.diou_formula,
    "ciou": _pair.ciou_formula,
    "siou": lambda p, t, m: siou_formula(p, t, m, 4.0),
    "eiou": eiou_formula,
}

VARIANTS: Dict[str, Variant] = {
    "siou": Variant(siou_formula, ("theta",)),
    "eiou": Variant(eiou_formula, ()),
    "focal_eiou": Variant(focal_eiou_formula, ("gamma",)),
    "wiou": Variant(wiou_formula, ()),
    "mpdiou": Variant(mpdiou_formula, ("width", "height")),
    "shape_iou": Variant(shape_iou_formula, ("scale",)),
    "nwd": Variant(nwd_formula, ("constant",)),
    **{f"alpha_iou_{v}": Variant(alpha_iou_formula(v), ("alpha",)) for v in ALPHA_VARIANTS},
    **{f"inner_iou_{b}": Variant(inner_iou_formula(f), ("ratio",)) for b, f in BASES.items()},
    **{f"focaler_iou_{b}": Variant(focaler_iou_formula(f), ("d", "u")) for b, f in BASES.items()},
    # rotated boxes (5 columns, cxcywhr): the rotated IoU losses (boxloss/rotated.py)
    **{kind: Variant(formula, (), 5) for kind, formula in rotated.ROTATED_LOSS_FORMULAS.items()},
    # ... and the Gaussian losses (boxloss/losses/gaussian.py)
    **{kind: Variant(formula, params, 5) for kind, (formula, params) in GAUSSIAN_FORMULAS.items()},
}
