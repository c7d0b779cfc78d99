"""The compiled CPU kernel: ``aligned.c`` built with the system C compiler at first use, called through ctypes.

No build step at install and no PyTorch headers: a plain C function over contiguous float arrays, compiled
once per machine into a cache directory, in well under a second, and entered only through the ``boxloss``
operators of :mod:`boxloss._fast.ops` (so ``torch.compile``, ``jit.trace`` and ``torch.func`` see an operator,
never this pointer call).

Where the library comes from, in order:

1. ``BOXLOSS_CACHE`` when set, else ``~/.cache/boxloss``, else ``<tmp>/boxloss-cache``: the first directory
   holding a library built from this source, with these flags, for this CPU, whose checksum matches the one
   written beside it. A read-only directory is fine (a prebuilt kernel is used as it is).
2. Otherwise it is built with ``$CC`` (else ``cc``, ``gcc``, ``clang``) into the first writable one of those
   directories, written atomically with its checksum, then loaded.

A file that fails its checksum (truncated by a full disk or a killed build, edited, from another build) is
never ``dlopen``-ed — loading a truncated shared object kills the process with SIGBUS — but rebuilt. Every
reason the kernel cannot be used (no compiler, a failed build, no writable directory, a corrupt file, a failed
load) is recorded in :func:`status` and reported once per process with a :class:`~boxloss.FastPathWarning`;
the caller then runs the next backend.
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

from ._warn import warn_once
from .fused import KIND_CODES, PAIRWISE_CODES

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aligned.c")
FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
    ["-O3", "-fno-math-errno", "-fopenmp"],      # a compiler or CPU without -march=native
    ["-O3", "-fno-math-errno"],                  # no OpenMP (e.g. Apple clang): one thread
)
SILENCE = "set BOXLOSS_CPU_KERNEL=0 to use the PyTorch path without this warning"

_lock = threading.Lock()
_lib = None
_tried = False
_status: dict = {"backend": None, "reason": "not loaded yet"}


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags (not the host name)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC")
    if cc:
        return cc
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _key(flags) -> str:
    """Names a build: this source, these flags, this CPU (not the compiler, so that a kernel prebuilt into a
    read-only cache is found on a machine without one)."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    material = b"\0".join([source, " ".join(flags).encode(), platform.machine().encode(), _cpu_identity().encode()])
    return hashlib.sha256(material).hexdigest()[:16]


def cache_dirs() -> list:
    """Directories searched for a built kernel, in order."""
    dirs = []
    if os.environ.get("BOXLOSS_CACHE"):
        dirs.append(os.environ["BOXLOSS_CACHE"])
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "boxloss"))
    dirs.append(os.path.join(tempfile.gettempdir(), "boxloss-cache"))
    return dirs


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _verified(path: str) -> Optional[bool]:
    """True: the file matches its checksum; False: it exists but is corrupt or unreadable; None: absent."""
    if not os.path.exists(path):
        return None
    try:
        with open(path + ".sha256") as f:
            expected = f.read().strip()
        return _digest(path) == expected
    except OSError:
        return False


def _writable(directory: str) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def _compile(compiler: str, target_dir: str, name_of) -> tuple:
    """Build into ``target_dir``; returns (path, flags) or raises RuntimeError with the compiler's message."""
    errors = []
    for flags in FLAG_SETS:
        target = os.path.join(target_dir, name_of(flags))
        tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            result = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", tmp, SOURCE, "-lm"],
                                    capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"the C compiler {compiler!r} could not be run: {exc}") from None
        if result.returncode == 0:
            digest = _digest(tmp)
            with open(tmp + ".sha256", "w") as f:
                f.write(digest)
            os.replace(tmp + ".sha256", target + ".sha256")
            os.replace(tmp, target)
            return target, flags
        errors.append((result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no message)"])
        for leftover in (tmp,):
            if os.path.exists(leftover):
                os.remove(leftover)
    raise RuntimeError(f"the C compiler {compiler!r} failed to build {SOURCE}: {errors[0][0]}")


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name in ("boxloss_aligned_f32", "boxloss_aligned_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 6
                       + [ctypes.c_long, ctypes.c_double, ctypes.c_double, ctypes.c_void_p, ctypes.c_int])
    for name in ("boxloss_pairwise_f32", "boxloss_pairwise_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_double, ctypes.c_int]
    return lib


def _find_or_build() -> Optional[ctypes.CDLL]:
    if os.environ.get("BOXLOSS_CPU_KERNEL", "1").strip().lower() in ("0", "false", "off", "no"):
        _status.update(backend=None, reason="switched off by BOXLOSS_CPU_KERNEL=0")
        return None
    if sys.platform == "win32":
        _status.update(backend=None, reason="the compiled CPU kernel is not built on Windows")
        warn_once("cpu-windows", f"boxloss: the compiled CPU kernel is not built on Windows; the aligned losses "
                                 f"run the slower PyTorch path ({SILENCE}).")
        return None
    names = {tuple(f): f"boxloss_aligned_{_key(f)}.so" for f in FLAG_SETS}
    corrupt = []
    for directory in cache_dirs():
        for flags in FLAG_SETS:
            path = os.path.join(directory, names[tuple(flags)])
            ok = _verified(path)
            if ok:
                try:
                    lib = _declare(ctypes.CDLL(path))
                except OSError as exc:
                    corrupt.append(f"{path} (cannot be loaded: {exc})")
                    continue
                _status.update(backend="compiled C kernel", reason="loaded from the cache", cache_file=path,
                               flags=" ".join(flags), openmp="-fopenmp" in flags)
                return lib
            if ok is False:
                corrupt.append(f"{path} (checksum mismatch: truncated or modified)")
    if corrupt:
        warn_once("cpu-corrupt-cache", "boxloss: ignoring a corrupt cached CPU kernel, " + "; ".join(corrupt)
                  + ": rebuilding it.")
    compiler = _compiler()
    if compiler is None:
        _status.update(backend=None, reason="no C compiler found (cc, gcc, clang; or set CC)")
        warn_once("cpu-no-compiler", "boxloss: no C compiler found (tried $CC, cc, gcc, clang), so the compiled "
                                     "CPU kernel cannot be built and the box losses run the 3-6x slower PyTorch "
                                     f"path. Install gcc or clang, or point CC at one ({SILENCE}).")
        return None
    writable = [d for d in cache_dirs() if _writable(d)]
    if os.environ.get("BOXLOSS_CACHE") and (not writable or writable[0] != os.environ["BOXLOSS_CACHE"]):
        warn_once("cpu-cache-readonly", f"boxloss: BOXLOSS_CACHE={os.environ['BOXLOSS_CACHE']!r} holds no usable "
                                        f"kernel and is not writable; building into "
                                        f"{writable[0] if writable else 'nowhere'} instead. Build it once where "
                                        f"the directory is writable, or point BOXLOSS_CACHE at a writable one.")
    if not writable:
        _status.update(backend=None, reason="no writable cache directory for the compiled kernel")
        warn_once("cpu-no-cache", f"boxloss: no writable directory to build the CPU kernel in (tried "
                                  f"{', '.join(cache_dirs())}); running the slower PyTorch path. Set BOXLOSS_CACHE "
                                  f"to a writable directory ({SILENCE}).")
        return None
    try:
        path, flags = _compile(compiler, writable[0], lambda f: names[tuple(f)])
        lib = _declare(ctypes.CDLL(path))
    except (RuntimeError, OSError) as exc:
        _status.update(backend=None, reason=str(exc), compiler=compiler)
        warn_once("cpu-build-failed", f"boxloss: {exc}. The box losses run the 3-6x slower PyTorch path. Fix the "
                                      f"compiler (or the CC variable) ({SILENCE}).")
        return None
    _status.update(backend="compiled C kernel", reason="built now", cache_file=path, compiler=compiler,
                   flags=" ".join(flags), openmp="-fopenmp" in flags)
    return lib


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, found or built on first call; ``None`` (with a warning) where it cannot be."""
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _find_or_build()
                except Exception as exc:  # never let the fast path take the process down
                    _lib = None
                    _status.update(backend=None, reason=f"unexpected error: {exc!r}")
                    warn_once("cpu-unexpected", f"boxloss: the compiled CPU kernel could not be set up ({exc!r}); "
                                                f"running the PyTorch path ({SILENCE}).")
                _tried = True
    return _lib


def reset() -> None:
    """Forget the loaded library and the last attempt (tests; a changed environment)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False
        _status.clear()
        _status.update(backend=None, reason="not loaded yet")


def status() -> dict:
    """What :func:`load` found: backend, reason, compiler, flags, cache file."""
    return dict(_status)


def _ptr(x: Optional[Tensor]):
    return None if x is None else ctypes.c_void_p(x.data_ptr())


def run(lib, kind: str, p: Tensor, t: Tensor, eps: float, need_p: bool, need_t: bool,
        weight: Optional[Tensor] = None, scale: Optional[float] = None):
    """Contiguous CPU ``p``, ``t`` ``(n, 4)`` of one dtype (float32 or float64).

    Without ``scale``: per-box loss ``(n,)`` and local gradients ``(n, 4)`` (or empty). With ``scale``: the
    scalar ``scale * sum(weight * loss)`` and the gradients of that scalar.
    """
    n = p.shape[0]
    reduce = scale is not None
    loss = p.new_empty(0 if reduce else n)
    grad_p = p.new_empty(n, 4) if need_p else p.new_empty(0)
    grad_t = p.new_empty(n, 4) if need_t else p.new_empty(0)
    total = ctypes.c_double(0.0)
    fn = lib.boxloss_aligned_f64 if p.dtype == torch.float64 else lib.boxloss_aligned_f32
    fn(KIND_CODES[kind], _ptr(p), _ptr(t), _ptr(weight), None if reduce else _ptr(loss),
       _ptr(grad_p) if need_p else None, _ptr(grad_t) if need_t else None, n, float(eps),
       float(scale) if reduce else 1.0, ctypes.byref(total) if reduce else None, torch.get_num_threads())
    if reduce:
        loss = torch.tensor(total.value, dtype=p.dtype)
    return loss, grad_p, grad_t


def run_pairwise(lib, kind: str, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Scores ``(batch, n, m)`` for contiguous CPU ``a`` ``(batch, n, 4)`` and ``b`` ``(batch, m, 4)``."""
    batch, n, m = a.shape[0], a.shape[1], b.shape[1]
    out = a.new_empty(batch, n, m)
    fn = lib.boxloss_pairwise_f64 if a.dtype == torch.float64 else lib.boxloss_pairwise_f32
    fn(PAIRWISE_CODES[kind], _ptr(a), _ptr(b), _ptr(out), batch, n, m, float(eps), torch.get_num_threads())
    return out
