"""The kernel cache: the one place generated code and built kernels live (never the repository or the wheel).

Every file in it is named by the hash of what produced it and written by :func:`write` alone: to a temporary
name first, with a ``.sha256`` file of its checksum beside it, then moved into place (``os.replace``, atomic on
one file system), so that a reader never sees half a file. :func:`find` returns a file only when it matches its
checksum: a file truncated by a full disk or a killed build, or edited, is treated as absent and rebuilt (a
truncated shared object would kill the process with SIGBUS when loaded).

The directories, in order: ``BOXLOSS_CACHE`` when set, ``~/.cache/boxloss``, ``<tmp>/boxloss-cache``. Reading
looks in all of them (a read-only directory with prebuilt kernels is fine); writing goes to the first writable
one. ``python -m boxloss.info --build`` fills the cache ahead of time, for read-only or offline deployments.

Used for the compiled C kernels (:mod:`boxloss.backends.cpu`: C source in, shared library out) and the generated
Triton modules (:func:`python_module`: Triton compiles kernels from source files).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from types import ModuleType
from typing import Callable, Dict, Optional

__all__ = ["cache_dirs", "writable", "first_writable", "digest", "verified", "find", "write", "write_from", "ensure",
           "module_name", "python_module"]

_MODULES: Dict[str, ModuleType] = {}
_LOCK = threading.Lock()


def cache_dirs() -> list:
    """Directories searched for a cached file, in order."""
    dirs = []
    if os.environ.get("BOXLOSS_CACHE"):
        dirs.append(os.environ["BOXLOSS_CACHE"])
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "boxloss"))
    dirs.append(os.path.join(tempfile.gettempdir(), "boxloss-cache"))
    return dirs


def writable(directory: str) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def verified(path: str) -> Optional[bool]:
    """True: the file matches its checksum; False: it exists but is corrupt or unreadable; None: absent."""
    if not os.path.exists(path):
        return None
    try:
        with open(path + ".sha256") as f:
            expected = f.read().strip()
        return digest(path) == expected
    except OSError:
        return False


def find(name: str, corrupt: Optional[list] = None) -> Optional[str]:
    """The first verified ``name`` in :func:`cache_dirs`, or None; corrupt copies are appended to ``corrupt``."""
    for directory in cache_dirs():
        path = os.path.join(directory, name)
        ok = verified(path)
        if ok:
            return path
        if ok is False and corrupt is not None:
            corrupt.append(path)
    return None


def write_from(produce: Callable[[str], None], directory: str, name: str) -> str:
    """Have ``produce(tmp_path)`` write a file (a compiler, say), then checksum it and move it and its checksum
    into ``directory/name`` atomically; returns the final path. The temporary file is removed on failure."""
    target = os.path.join(directory, name)
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        produce(tmp)
        with open(tmp + ".sha256", "w") as f:
            f.write(digest(tmp))
        os.replace(tmp + ".sha256", target + ".sha256")
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp + ".sha256"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return target


def write(directory: str, name: str, data: bytes) -> str:
    """Write ``data`` as ``directory/name`` with its checksum, atomically (see :func:`write_from`)."""
    def produce(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return write_from(produce, directory, name)


def ensure(directory: str, name: str, data: bytes) -> str:
    """``directory/name`` holding ``data``, verified: kept when it is there already, else written."""
    path = os.path.join(directory, name)
    if verified(path):
        return path
    return write(directory, name, data)


def module_name(prefix: str, text: str) -> str:
    """The cache's name of the generated module with source ``text`` (without ``.py``)."""
    return f"{prefix}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def first_writable() -> Optional[str]:
    """The directory new files go to: the first writable one of :func:`cache_dirs`."""
    return next((d for d in cache_dirs() if writable(d)), None)


def python_module(prefix: str, text: str) -> ModuleType:
    """The Python module whose source is ``text``, from the cache (written there on first use under the hash of
    the text) and imported once per process. Raises ``OSError`` when no cache directory is writable and none
    holds it."""
    name = module_name(prefix, text)
    with _LOCK:
        if name in _MODULES:
            return _MODULES[name]
        path = find(name + ".py")
        if path is None:
            directory = first_writable()
            if directory is None:
                raise OSError(f"no writable cache directory for the generated module {name} (tried "
                              f"{', '.join(cache_dirs())}); set BOXLOSS_CACHE, or fill one ahead of time with "
                              f"python -m boxloss.info --build")
            path = write(directory, name + ".py", text.encode())
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
        return module
