"""The registry of loss kinds: each loss variant's formula, its runtime parameters and its box columns.

A loss file registers its formula here with one line (``register("siou", siou_formula, ("theta",))``); the
backends (the compiled CPU kernels, the Triton kernels, the PyTorch closed form) read the table and derive
everything from the formula. The table sits below both: it imports nothing from boxloss, so the backends never
import the public loss layer (the way ``torch.library`` and JAX's primitives are filled by the code that defines
them). ``import boxloss`` imports every loss file, so the table is complete before a kernel is built.

Names are kept in a sorted order wherever code is generated from the table, so the generated source (and the
kernel cache's key) does not depend on the order in which the files were imported.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, NamedTuple, Tuple

__all__ = ["Variant", "VARIANTS", "BASES", "register", "register_base", "kind_of", "parse", "is_registered", "columns",
           "group", "GROUPS", "SEPARATOR"]


class Variant(NamedTuple):
    formula: Callable
    params: Tuple[str, ...]
    columns: int = 4  # 4: axis-aligned xyxy boxes; 5: rotated cxcywhr boxes


VARIANTS: Dict[str, Variant] = {}
# the losses that Inner-IoU and Focaler-IoU can extend (their ``variant=``): name → per-box formula
BASES: Dict[str, Callable] = {}


def register(name: str, formula: Callable, params: Tuple[str, ...] = (), columns: int = 4) -> None:
    """Add loss kind ``name``: ``formula(p, t, m, *params)`` on ``columns`` box columns. Registering a name twice
    with another formula is an error (two files claiming one kind)."""
    if columns not in (4, 5):
        raise ValueError(f"columns must be 4 (xyxy) or 5 (cxcywhr); got {columns!r}")
    entry = Variant(formula, tuple(params), columns)
    if name in VARIANTS and VARIANTS[name] != entry:
        raise ValueError(f"loss kind {name!r} is registered twice, with different formulas")
    VARIANTS[name] = entry


def register_base(name: str, formula: Callable) -> None:
    """Add a loss that Inner-IoU and Focaler-IoU can extend (``variant=name``)."""
    BASES[name] = formula


# the kind strings the operators take: "name|param|param" (the parameters are runtime arguments of the kernels)
SEPARATOR = "|"


def is_registered(kind: str) -> bool:
    """Whether the kind string names a registered formula."""
    return kind.split(SEPARATOR, 1)[0] in VARIANTS


def columns(kind: str) -> int:
    """Box columns of a variant kind: 4 (axis-aligned, xyxy) or 5 (rotated, cxcywhr)."""
    return VARIANTS[kind.split(SEPARATOR, 1)[0]].columns


def group(kind: str) -> str:
    """The kernel library a variant lives in: ``"axis"`` or ``"rotated"``."""
    return GROUPS[columns(kind)]


GROUPS = {4: "axis", 5: "rotated"}


def kind_of(name: str, *params: float) -> str:
    """The operator's kind string of variant ``name`` with ``params`` (floats, exact through repr)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown loss variant {name!r}")
    return SEPARATOR.join([name, *(repr(float(x)) for x in params)])


@functools.lru_cache(maxsize=4096)
def parse(kind: str) -> Tuple[str, tuple, Tuple[float, ...]]:
    """(name, registry entry, params) of a kind string."""
    name, *raw = kind.split(SEPARATOR)
    entry = VARIANTS[name]
    params = tuple(float(x) for x in raw)
    if len(params) != len(entry.params):
        raise ValueError(f"variant {name!r} takes {len(entry.params)} parameters {entry.params}; got {params}")
    return name, entry, params
