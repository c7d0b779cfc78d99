"""One warning per cause and process whenever a faster backend should run but cannot."""

from __future__ import annotations

import threading
import warnings

__all__ = ["FastPathWarning", "warn_once", "reported"]


class FastPathWarning(UserWarning):
    """A boxloss fast path could not run and a slower backend ran instead (the message says why and how to fix
    or silence it). Filter it with ``warnings.filterwarnings("ignore", category=boxloss.FastPathWarning)``."""


_seen: dict = {}
_lock = threading.Lock()


def warn_once(cause: str, message: str) -> None:
    """Warn with ``message`` the first time ``cause`` is reported in this process; remember it for ``info``."""
    with _lock:
        if cause in _seen:
            return
        _seen[cause] = message
    warnings.warn(message, FastPathWarning, stacklevel=4)


def reported() -> dict:
    """{cause: message} of every fallback reported so far in this process."""
    with _lock:
        return dict(_seen)


def forget(prefix: str = "") -> None:
    """Allow causes starting with ``prefix`` to be reported again (tests)."""
    with _lock:
        for cause in [c for c in _seen if c.startswith(prefix)]:
            del _seen[cause]
