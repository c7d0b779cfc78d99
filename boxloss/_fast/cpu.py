"""The compiled CPU kernel: ``aligned.c`` built with the system C compiler at first use, called through ctypes.

No build step at install and no PyTorch headers: a plain C function over contiguous float arrays, compiled
once per machine into a cache directory (``BOXLOSS_CACHE``, else ``~/.cache/boxloss``, else the temp dir), in
well under a second. Where no compiler works, :func:`load` returns ``None`` and the dispatcher falls back to the
chunked PyTorch closed form.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Optional

import torch
from torch import Tensor

KIND_CODES = {"iou": 0, "iou_distance": 1, "log_iou": 2, "log_iou_distance": 3, "giou": 4, "diou": 5, "ciou": 6}
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aligned.c")
_lock = threading.Lock()
_lib = None
_tried = False


def _cache_dir() -> str:
    for candidate in (os.environ.get("BOXLOSS_CACHE"), os.path.join(os.path.expanduser("~"), ".cache", "boxloss"),
                      os.path.join(tempfile.gettempdir(), "boxloss-cache")):
        if not candidate:
            continue
        try:
            os.makedirs(candidate, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    raise OSError("no writable cache directory")


def _build() -> Optional[ctypes.CDLL]:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or sys.platform == "win32":
        return None
    with open(_SOURCE, "rb") as f:
        source = f.read()
    flags = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
    # the machine is part of the key: -march=native code must not travel to another CPU
    key = hashlib.sha256(source + " ".join(flags).encode() + platform.machine().encode()
                         + platform.node().encode()).hexdigest()[:16]
    target = os.path.join(_cache_dir(), f"boxloss_aligned_{key}.so")
    if not os.path.exists(target):
        tmp = f"{target}.{os.getpid()}.tmp"
        for attempt in (flags, [f for f in flags if f != "-march=native"]):
            result = subprocess.run([compiler, *attempt, "-o", tmp, _SOURCE, "-lm"], capture_output=True)
            if result.returncode == 0:
                break
        else:
            return None
        os.replace(tmp, target)
    lib = ctypes.CDLL(target)
    for name in ("boxloss_aligned_f32", "boxloss_aligned_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_long, ctypes.c_double, ctypes.c_int]
    for name in ("boxloss_pairwise_f32", "boxloss_pairwise_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_double, ctypes.c_int]
    return lib


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, building it on first call; ``None`` where it cannot be built."""
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _build()
                except Exception:  # any failure to build or load means: use the PyTorch fallback
                    _lib = None
                _tried = True
    return _lib


def _ptr(x: Optional[Tensor]):
    return None if x is None else ctypes.c_void_p(x.data_ptr())


def run(lib, kind: str, p: Tensor, t: Tensor, eps: float, need_p: bool, need_t: bool):
    """Loss ``(n,)`` and local gradients ``(n, 4)`` (or ``None``) for contiguous CPU ``p``, ``t`` ``(n, 4)``."""
    n = p.shape[0]
    loss = p.new_empty(n)
    grad_p = p.new_empty(n, 4) if need_p else None
    grad_t = p.new_empty(n, 4) if need_t else None
    fn = lib.boxloss_aligned_f64 if p.dtype == torch.float64 else lib.boxloss_aligned_f32
    fn(KIND_CODES[kind], _ptr(p), _ptr(t), _ptr(loss), _ptr(grad_p), _ptr(grad_t), n, float(eps),
       torch.get_num_threads())
    return loss, grad_p, grad_t


PAIRWISE_CODES = {"iou": 0, "giou": 4, "diou": 5, "ciou": 6}


def run_pairwise(lib, kind: str, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Scores ``(batch, n, m)`` for contiguous CPU ``a`` ``(batch, n, 4)`` and ``b`` ``(batch, m, 4)``."""
    batch, n, m = a.shape[0], a.shape[1], b.shape[1]
    out = a.new_empty(batch, n, m)
    fn = lib.boxloss_pairwise_f64 if a.dtype == torch.float64 else lib.boxloss_pairwise_f32
    fn(PAIRWISE_CODES[kind], _ptr(a), _ptr(b), _ptr(out), batch, n, m, float(eps), torch.get_num_threads())
    return out
