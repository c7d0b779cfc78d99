"""The compiled CPU kernel: ``classic.c`` built with the system C compiler at first use, called through ctypes.

No build step at install and no PyTorch headers: a plain C function over contiguous float arrays, compiled
once per machine into a cache directory (a few seconds), and entered only through the ``boxloss``
operators of :mod:`boxloss.backends.ops` (so ``torch.compile``, ``jit.trace`` and ``torch.func`` see an operator,
never this pointer call).

Where the library comes from, in order:

1. The kernel cache (:mod:`boxloss.backends.kernel_cache`: ``BOXLOSS_CACHE`` when set, else ``~/.cache/boxloss``,
   else ``<tmp>/boxloss-cache``): the first directory holding a library built from this source, with these
   flags, for this CPU, whose checksum matches the one written beside it. A read-only directory is fine (a
   prebuilt kernel is used as it is; ``python -m boxloss.info --build`` fills one ahead of time).
2. Otherwise it is built with ``$CC`` (else ``cc``, ``gcc``, ``clang``) into the first writable one of those
   directories by the cache's one writer (atomic, with its checksum), then loaded.

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
import threading
import time
from typing import Callable, Optional

import torch
from torch import Tensor

from . import kernel_cache
from ._warn import warn_once
from .closed_form import KIND_CODES, PAIRWISE_CODES

# the kinds whose hand-written C kernel (classic.c) overrides the one generated from their formula
# (benchmarks/bench_generated.py: the others' generated kernels are as fast as the hand-written ones classic.c had,
# within about 10 %)
HAND_WRITTEN_ALIGNED = ("ciou",)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classic.c")
# The kernels must compute what the reference computes: each multiply and add rounded on its own, as PyTorch's
# element-wise ops do. -ffp-contract=off forbids fusing them into FMAs (GCC's default for -march=native on CPUs
# with FMA is to fuse, which moved identical-box losses off 0); no -ffast-math or -Ofast. -fno-trapping-math
# only lets GCC if-convert the formulas' selects (it assumes no FP traps); results are unchanged.
STRICT_FP = ["-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
FLAG_SETS = (
    ["-O3", "-march=native", *STRICT_FP, "-fopenmp"],
    ["-O3", *STRICT_FP, "-fopenmp"],  # a compiler or CPU without -march=native
    ["-O3", *STRICT_FP],              # no OpenMP (e.g. Apple clang): one thread
)
SILENCE = "set BOXLOSS_CPU_KERNEL=0 to use the PyTorch path without this warning"


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


cache_dirs = kernel_cache.cache_dirs
_writable = kernel_cache.writable  # (a module attribute: tests make a directory read-only through it)


def _compile(compiler: str, target_dir: str, name_of, text: str) -> tuple:
    """Build the C ``text`` into ``target_dir`` through the kernel cache's one writer (checksummed, atomic);
    returns (path, flags) or raises RuntimeError with the compiler's message."""
    errors = []
    for flags in FLAG_SETS:
        def produce(tmp: str, flags=flags) -> None:
            source = tmp + ".c"
            try:
                with open(source, "w") as f:
                    f.write(text)
                result = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", tmp, source, "-lm"],
                                        capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as exc:
                raise _CompilerMissing(f"the C compiler {compiler!r} could not be run: {exc}") from None
            finally:
                if os.path.exists(source):
                    os.remove(source)
            if result.returncode != 0:
                raise _BuildFailed((result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no message)"])

        try:
            return kernel_cache.write_from(produce, target_dir, name_of(flags)), flags
        except _CompilerMissing as exc:
            raise RuntimeError(str(exc)) from None
        except _BuildFailed as exc:
            errors.append(exc.args[0])
    raise RuntimeError(f"the C compiler {compiler!r} failed to build {name_of(FLAG_SETS[0])}: {errors[0][0]}")


class _CompilerMissing(Exception):
    pass


class _BuildFailed(Exception):
    pass


def _declare_wait(lib: ctypes.CDLL) -> None:
    lib.boxloss_last_wait.restype = None
    lib.boxloss_last_wait.argtypes = [ctypes.c_void_p]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    _declare_wait(lib)
    for name in ("boxloss_aligned_f32", "boxloss_aligned_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 6
                       + [ctypes.c_long, ctypes.c_double, ctypes.c_double, ctypes.c_void_p, ctypes.c_int])
    for name in ("boxloss_pairwise_f32", "boxloss_pairwise_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_double, ctypes.c_int]
    for name in ("boxloss_scale_f32", "boxloss_scale_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_long] + [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_int]
    return lib


# the generated kernels take classic.c's arguments, their parameters' pointer where it takes the kind
VARIANT_ARGTYPES = ([ctypes.c_void_p] * 7 + [ctypes.c_long, ctypes.c_double, ctypes.c_double, ctypes.c_void_p,
                                             ctypes.c_int])


class KernelLibrary:
    """One C source, found in the cache or built, verified and loaded once per process.

    ``source`` returns the C text (a file of the package, or generated); ``prefix`` names the cached library;
    ``declare`` sets the ctypes signatures after loading.
    """

    def __init__(self, label: str, prefix: str, source: Callable[[], str], declare: Callable) -> None:
        self.label, self.prefix, self.source, self.declare = label, prefix, source, declare
        self.lock = threading.Lock()
        self.lib = None
        self.tried = False
        self.status: dict = {"backend": None, "reason": "not loaded yet"}

    @staticmethod
    def key(flags, text: str) -> str:
        """Names a build: this source, these flags, this CPU (not the compiler, so that a kernel prebuilt into a
        read-only cache is found on a machine without one)."""
        material = b"\0".join([text.encode(), " ".join(flags).encode(), platform.machine().encode(),
                               _cpu_identity().encode()])
        return hashlib.sha256(material).hexdigest()[:16]

    def load(self) -> Optional[ctypes.CDLL]:
        """The library, found or built on first call; ``None`` (with a warning) where it cannot be."""
        if not self.tried:
            with self.lock:
                if not self.tried:
                    try:
                        self.lib = self._find_or_build()
                    except Exception as exc:  # never let the fast path take the process down
                        self.lib = None
                        self.status.update(backend=None, reason=f"unexpected error: {exc!r}")
                        warn_once(f"cpu-unexpected:{self.prefix}",
                                  f"boxloss: the compiled CPU kernel of {self.label} could not be set up ({exc!r}); "
                                  f"running the PyTorch path ({SILENCE}).")
                    self.tried = True
        return self.lib

    def reset(self) -> None:
        with self.lock:
            self.lib, self.tried = None, False
            self.status.clear()
            self.status.update(backend=None, reason="not loaded yet")

    def build_into(self, directory: str) -> str:
        """Make sure ``directory`` holds this library (``python -m boxloss.info --build``): kept when it is
        there, copied from another cache directory that has it, else compiled there. Returns its path; raises
        RuntimeError when it cannot be built."""
        text = self.source()
        names = {tuple(f): f"{self.prefix}_{self.key(f, text)}.so" for f in FLAG_SETS}
        for name in names.values():
            if kernel_cache.verified(os.path.join(directory, name)):
                return os.path.join(directory, name)
        for name in names.values():
            found = kernel_cache.find(name)
            if found is not None:
                with open(found, "rb") as f:
                    return kernel_cache.write(directory, name, f.read())
        compiler = _compiler()
        if compiler is None:
            raise RuntimeError("no C compiler found (cc, gcc, clang; or set CC)")
        return _compile(compiler, directory, lambda f: names[tuple(f)], text)[0]

    def _find_or_build(self) -> Optional[ctypes.CDLL]:
        status = self.status
        if os.environ.get("BOXLOSS_CPU_KERNEL", "1").strip().lower() in ("0", "false", "off", "no"):
            status.update(backend=None, reason="switched off by BOXLOSS_CPU_KERNEL=0")
            return None
        if sys.platform == "win32":
            status.update(backend=None, reason="the compiled CPU kernel is not built on Windows")
            warn_once("cpu-windows", f"boxloss: the compiled CPU kernel is not built on Windows; the aligned losses "
                                     f"run the slower PyTorch path ({SILENCE}).")
            return None
        text = self.source()
        names = {tuple(f): f"{self.prefix}_{self.key(f, text)}.so" for f in FLAG_SETS}
        corrupt = []
        for directory in cache_dirs():
            for flags in FLAG_SETS:
                path = os.path.join(directory, names[tuple(flags)])
                ok = kernel_cache.verified(path)
                if ok:
                    try:
                        lib = self.declare(ctypes.CDLL(path))
                    except OSError as exc:
                        corrupt.append(f"{path} (cannot be loaded: {exc})")
                        continue
                    status.update(backend="compiled C kernel", reason="loaded from the cache", cache_file=path,
                                  flags=" ".join(flags), openmp="-fopenmp" in flags)
                    return lib
                if ok is False:
                    corrupt.append(f"{path} (checksum mismatch: truncated or modified)")
        if corrupt:
            warn_once("cpu-corrupt-cache", "boxloss: ignoring a corrupt cached CPU kernel, " + "; ".join(corrupt)
                      + ": rebuilding it.")
        compiler = _compiler()
        if compiler is None:
            status.update(backend=None, reason="no C compiler found (cc, gcc, clang; or set CC)")
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
            status.update(backend=None, reason="no writable cache directory for the compiled kernel")
            warn_once("cpu-no-cache", f"boxloss: no writable directory to build the CPU kernel in (tried "
                                      f"{', '.join(cache_dirs())}); running the slower PyTorch path. Set BOXLOSS_CACHE "
                                      f"to a writable directory ({SILENCE}).")
            return None
        try:
            path, flags = _compile(compiler, writable[0], lambda f: names[tuple(f)], text)
            lib = self.declare(ctypes.CDLL(path))
        except (RuntimeError, OSError) as exc:
            status.update(backend=None, reason=str(exc), compiler=compiler)
            warn_once("cpu-build-failed", f"boxloss: {exc}. The box losses run the 3-6x slower PyTorch path. Fix the "
                                          f"compiler (or the CC variable) ({SILENCE}).")
            return None
        status.update(backend="compiled C kernel", reason="built now", cache_file=path, compiler=compiler,
                      flags=" ".join(flags), openmp="-fopenmp" in flags)
        return lib


def _read_core_source() -> str:
    """classic.c with the shared runtime (``bl_runtime.h``) in place of its include: one text, compiled from the
    cache directory and keyed by the kernel cache as a whole."""
    from . import generated

    with open(SOURCE) as f:
        text = f.read()
    if generated.C_RUNTIME_INCLUDE not in text:
        raise RuntimeError(f"{SOURCE} does not include the shared runtime ({generated.C_RUNTIME_INCLUDE})")
    return text.replace(generated.C_RUNTIME_INCLUDE, generated.c_runtime(), 1)


def _variants_source(which: str = "axis") -> str:
    from . import generated

    return generated.c_source(which)


def _declare_variants(lib: ctypes.CDLL, which: str = "axis") -> ctypes.CDLL:
    from . import generated

    _declare_wait(lib)
    for symbol in generated.c_symbols(which):
        fn = getattr(lib, symbol)
        fn.restype = None
        fn.argtypes = VARIANT_ARGTYPES
    if which == "rotated":
        from ..rotated import PAIRWISE_SCORES

        for kind in PAIRWISE_SCORES:
            for sfx in ("_f32", "_f64"):
                fn = getattr(lib, generated.pairwise_symbol(kind) + sfx)
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_double, ctypes.c_int]
    return lib


CORE = KernelLibrary("the CIoU loss and the pairwise scores (classic.c)", "boxloss_aligned", _read_core_source, _declare)
VARIANTS = KernelLibrary("the axis-aligned losses (generated from their formulas)", "boxloss_variants", _variants_source,
                         _declare_variants)
ROTATED = KernelLibrary("the rotated-box losses and scores (generated from their formulas)", "boxloss_rotated",
                        lambda: _variants_source("rotated"), lambda lib: _declare_variants(lib, "rotated"))
LIBRARIES = {"axis": VARIANTS, "rotated": ROTATED}


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel of classic.c, found or built on first call; ``None`` (with a warning) where it cannot
    be."""
    return CORE.load()


def load_variants(which: str = "axis") -> Optional[ctypes.CDLL]:
    """The compiled kernel of the loss variants (``"axis"``) or of the rotated-box losses and scores
    (``"rotated"``), C generated from their formulas, like :func:`load`."""
    return LIBRARIES[which].load()


def reset() -> None:
    """Forget the loaded libraries and the last attempts (tests; a changed environment)."""
    CORE.reset()
    VARIANTS.reset()
    ROTATED.reset()


def status() -> dict:
    """What :func:`load` found: backend, reason, compiler, flags, cache file."""
    return dict(CORE.status)


def variants_status(which: str = "axis") -> dict:
    return dict(LIBRARIES[which].status)


# Work per thread below which a kernel runs on the calling thread alone: opening a parallel region costs a few
# microseconds on an idle machine but, on a busy one, the wait at its end for a thread the machine has
# descheduled (milliseconds: 8 ms for 8,192 boxes measured with the other cores busy). So a second thread must
# have about a millisecond of work to pay for that risk: in boxes for the aligned kernels (the vectorised ones
# take 5-15 ns per box with its gradient), in pairs for the pairwise ones (about 1 ns), fewer for the rotated
# geometry (some 100 times an axis-aligned box); "aligned_calls" for the kinds with a library call per box (CIoU's
# arctangent, the logarithms, the variants' exponentials: 15-35 ns per box; generated.makes_library_calls).
# Measured with ``benchmarks/bench_speed.py --mode threads``.
# "scale": the backward's product of the incoming gradient and the saved local ones (memory-bound, about 0.35 ns
# per box on one thread).
GRAIN = {"aligned": 131072, "aligned_calls": 32768, "aligned_rotated": 2048, "pairwise": 2097152,
         "pairwise_rotated": 16384, "scale": 1048576}


# A busy machine. A parallel call waits at its end for its slowest thread; when another process holds that
# thread's core, the wait is a scheduler time slice (milliseconds), longer than the work. Each kernel reports how
# long the calling thread waited at the end of its last parallel call (``boxloss_last_wait``); a wait over
# BUSY_WAIT_S and over BUSY_WAIT_FRACTION of the call means the machine is busy, and the kernels then run on the
# calling thread alone for BUSY_BACKOFF_S before trying several threads again (one stalled call per back-off
# at worst). On an idle machine the wait is at most one chunk of work (microseconds).
BUSY_WAIT_S = 3e-4
BUSY_WAIT_FRACTION = 0.25
BUSY_BACKOFF_S = 1.0
_busy = {"until": 0.0, "backoffs": 0}


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; a container's cpuset), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


USABLE_CPUS = _usable_cpus()


def threads_for(work: int, grain: int) -> int:
    """Threads for ``work`` items: one per ``grain`` items, at least one, at most ``torch.get_num_threads()`` and
    the CPUs this process may use (``torch.set_num_threads(8)`` on 2 cores gives 2: more threads than cores only
    wait for each other); one while backing off from a busy machine (:func:`watch`)."""
    threads = max(1, min(torch.get_num_threads(), USABLE_CPUS, work // grain))
    if threads > 1 and time.monotonic() < _busy["until"]:
        return 1
    return threads


def watch(lib, threads: int) -> None:
    """After a kernel call on ``threads`` threads: back off to one thread when it waited long for a straggler."""
    if threads < 2:
        return
    wait = (ctypes.c_double * 2)()
    lib.boxloss_last_wait(wait)
    if wait[0] > BUSY_WAIT_S and wait[0] > BUSY_WAIT_FRACTION * wait[1]:
        _busy["until"] = time.monotonic() + BUSY_BACKOFF_S
        _busy["backoffs"] += 1


def busy_state() -> dict:
    """Whether the kernels are backing off to one thread now, and how often they did (for ``info``, tests)."""
    return {"backing_off": time.monotonic() < _busy["until"], "backoffs": _busy["backoffs"]}


def _ptr(x: Optional[Tensor]):
    return None if x is None else ctypes.c_void_p(x.data_ptr())


def _run_aligned(lib, fn, first, p: Tensor, t: Tensor, eps: float, need_p: bool, need_t: bool,
                 weight: Optional[Tensor], scale: Optional[float], grain: int):
    """Call an aligned kernel (``boxloss_aligned_*`` with ``first`` its kind, or a generated one with ``first``
    its parameters' pointer) and return its outputs (see :func:`run`)."""
    n, cols = p.shape
    reduce = scale is not None
    loss = p.new_empty(0 if reduce else n)
    grad_p = p.new_empty(n, cols) if need_p else p.new_empty(0)
    grad_t = p.new_empty(n, cols) if need_t else p.new_empty(0)
    total = ctypes.c_double(0.0)
    threads = threads_for(n, grain if cols == 4 else GRAIN["aligned_rotated"])
    fn(first, _ptr(p), _ptr(t), _ptr(weight), None if reduce else _ptr(loss),
       _ptr(grad_p) if need_p else None, _ptr(grad_t) if need_t else None, n, float(eps),
       float(scale) if reduce else 1.0, ctypes.byref(total) if reduce else None, threads)
    watch(lib, threads)
    if reduce:
        loss = torch.tensor(total.value, dtype=p.dtype)
    return loss, grad_p, grad_t


def run(lib, kind: str, p: Tensor, t: Tensor, eps: float, need_p: bool, need_t: bool,
        weight: Optional[Tensor] = None, scale: Optional[float] = None):
    """Contiguous CPU ``p``, ``t`` ``(n, 4)`` of one dtype (float32 or float64).

    Without ``scale``: per-box loss ``(n,)`` and local gradients ``(n, 4)`` (or empty). With ``scale``: the
    scalar ``scale * sum(weight * loss)`` and the gradients of that scalar.
    """
    if kind not in HAND_WRITTEN_ALIGNED:
        raise ValueError(f"classic.c has no aligned kernel of kind {kind!r}; its kinds: {HAND_WRITTEN_ALIGNED}")
    fn = lib.boxloss_aligned_f64 if p.dtype == torch.float64 else lib.boxloss_aligned_f32
    # (classic.c's one aligned kind, CIoU, takes an arctangent per box)
    return _run_aligned(lib, fn, KIND_CODES[kind], p, t, eps, need_p, need_t, weight, scale, GRAIN["aligned_calls"])


def run_pairwise(lib, kind: str, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Scores ``(batch, n, m)`` for contiguous CPU ``a`` ``(batch, n, 4)`` and ``b`` ``(batch, m, 4)``."""
    batch, n, m = a.shape[0], a.shape[1], b.shape[1]
    out = a.new_empty(batch, n, m)
    columns = b.transpose(1, 2).contiguous()  # the kernel reads b as columns: contiguous rows of x1, y1, x2, y2
    angles = a.new_empty(batch, m) if kind == "ciou" else None  # its θ per column box, filled by the kernel
    fn = lib.boxloss_pairwise_f64 if a.dtype == torch.float64 else lib.boxloss_pairwise_f32
    threads = threads_for(batch * n * m, GRAIN["pairwise"])
    fn(PAIRWISE_CODES[kind], _ptr(a), _ptr(columns), _ptr(angles), _ptr(out), batch, n, m, float(eps), threads)
    watch(lib, threads)
    return out


def run_scale(lib, g: Tensor, a: Optional[Tensor], b: Optional[Tensor]):
    """``g * a`` and ``g * b`` (either may be None) for local gradients ``(n, cols)`` and an incoming gradient
    ``g`` of their dtype, a scalar or one value per box (any stride): the first-order backward of the aligned
    operators, the product torch.mul computes, on no more threads than the kernel's grain allows."""
    ref = a if a is not None else b
    n, cols = ref.shape
    out_a = torch.empty_like(a) if a is not None else None
    out_b = torch.empty_like(b) if b is not None else None
    fn = lib.boxloss_scale_f64 if ref.dtype == torch.float64 else lib.boxloss_scale_f32
    threads = threads_for(n, GRAIN["scale"])
    fn(_ptr(g), g.stride(0) if g.dim() else 0, _ptr(a), _ptr(out_a), _ptr(b), _ptr(out_b), n, cols, threads)
    watch(lib, threads)
    return out_a, out_b


def run_variant(lib, name: str, params, p: Tensor, t: Tensor, eps: float, need_p: bool, need_t: bool,
                weight: Optional[Tensor] = None, scale: Optional[float] = None):
    """As :func:`run`, for the kernel generated from registered formula ``name`` and its parameters."""
    from . import generated

    prm = (ctypes.c_double * max(1, len(params)))(*[float(x) for x in params])
    fn = getattr(lib, generated.symbol(name) + ("_f64" if p.dtype == torch.float64 else "_f32"))
    # axis-aligned boxes: the larger grain where the loop makes no library call (the rotated ones have their own)
    grain = GRAIN["aligned_calls" if p.shape[1] != 4 or generated.makes_library_calls(name) else "aligned"]
    return _run_aligned(lib, fn, prm, p, t, eps, need_p, need_t, weight, scale, grain)


def run_generated_pairwise(lib, symbol: str, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Scores ``(batch, n, m)`` of a generated pairwise kernel on contiguous CPU rows ``a`` ``(batch, n, k)`` and
    columns ``b`` ``(batch, k, m)``."""
    batch, n, m = a.shape[0], a.shape[1], b.shape[2]
    out = a.new_empty(batch, n, m)
    fn = getattr(lib, symbol + ("_f64" if a.dtype == torch.float64 else "_f32"))
    threads = threads_for(batch * n * m, GRAIN["pairwise" if a.shape[2] == 4 else "pairwise_rotated"])
    fn(_ptr(a), _ptr(b), _ptr(out), batch, n, m, float(eps), threads)
    watch(lib, threads)
    return out
