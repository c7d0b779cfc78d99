"""The losses that Inner-IoU and Focaler-IoU can extend (their ``variant=`` argument): name → per-box formula."""

from __future__ import annotations

from typing import Callable, Dict

from ._pair import ciou_formula, diou_formula, giou_formula, iou_formula
from .eiou import eiou_formula
from .siou import siou_formula

BASES: Dict[str, Callable] = {
    "iou": iou_formula,
    "giou": giou_formula,
    "diou": diou_formula,
    "ciou": ciou_formula,
    "siou": lambda p, t, m: siou_formula(p, t, m, 4.0),
    "eiou": eiou_formula,
}
