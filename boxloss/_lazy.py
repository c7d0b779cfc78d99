"""A lazily computed attribute, without the lock of ``functools.cached_property`` (Python < 3.12 takes an
``RLock`` on every first access, which ``torch.compile(fullgraph=True)`` cannot trace: the formulas' geometry
classes are evaluated inside compiled graphs)."""

from __future__ import annotations


class lazy:  # noqa: N801 - used as a decorator, like cached_property
    """``@lazy def x(self)``: computed on first access, then stored in the instance's ``__dict__``."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner, name) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value
