"""``python -m boxloss.info``: versions, and which backend each operator family uses on each device, and why.

Run it when the losses are slower than expected or to attach to a bug report. It builds (or finds) the
compiled CPU kernel, as the first loss call would, and reports every fallback that was taken.

    python -m boxloss.info           # a readable report
    python -m boxloss.info --json    # the same as JSON
    python -m boxloss.info --build   # fill the kernel cache ahead of time (read-only or offline deployments)
    python -m boxloss.info --check   # every backend of every kind against the reference (boxloss.selfcheck)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings

import torch

from . import __version__
from .backends import backend_for, cpu, ops
from .backends._warn import reported

ENV_VARS = ("BOXLOSS_FAST", "BOXLOSS_CPU_KERNEL", "BOXLOSS_TRITON", "BOXLOSS_CACHE", "CC", "TRITON_INTERPRET")


def report() -> dict:
    """Versions, switches and, per device, the backend of the aligned losses/box functions and of the pairwise
    scores with the reason for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gathered into "fallbacks" below instead
        ops.cpu_library()
        ops.variant_library()
        ops.variant_library("rotated")
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        backends = {}
        for device in devices:
            name, why = backend_for(device)
            entry = {"aligned losses and box functions": name, "pairwise scores": name, "reason": why}
            if device.type == "cpu":
                st = cpu.status()
                entry.update({k: st[k] for k in ("compiler", "flags", "cache_file", "openmp") if k in st})
                vst = cpu.variants_status()
                entry["axis-aligned losses"] = (
                    f"compiled C kernel generated from their formulas ({vst.get('reason')}: {vst.get('cache_file')}); "
                    "the CIoU loss and the pairwise scores: the hand-written kernel above (classic.c)"
                    if vst.get("backend") and ops.USE_COMPILED_CPU else f"PyTorch closed form ({vst.get('reason')})")
                rst = cpu.variants_status("rotated")
                entry["rotated boxes"] = (f"compiled C kernel generated from their formulas, hand-written pairwise "
                                          f"IoU ({rst.get('reason')}: {rst.get('cache_file')})"
                                          if rst.get("backend") and ops.USE_COMPILED_CPU
                                          else f"PyTorch closed form ({rst.get('reason')})")
                entry["threads"] = torch.get_num_threads()
            else:
                cap = torch.cuda.get_device_capability(device)
                entry.update(gpu=torch.cuda.get_device_name(device), capability=f"{cap[0]}.{cap[1]}")
                entry["loss variants"] = ("Triton kernels generated from their formulas (value and gradient in one "
                                          "pass) where the Triton kernels run; else the PyTorch closed form; the "
                                          "classic losses: hand-written Triton kernels")
                entry["rotated boxes"] = ("Triton kernels generated from their formulas (aligned losses and pairwise "
                                          "scores) where the Triton kernels run; else the PyTorch closed form")
            backends[str(device)] = entry
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "boxloss": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "environment": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "cache_directories": cpu.cache_dirs(),
        "backends": backends,
        "fallbacks": reported(),
    }


def _version(module: str):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def format_report(info: dict) -> str:
    lines = [f"boxloss {info['boxloss']}  (python {info['python']}, torch {info['torch']}, "
             f"torchvision {info['torchvision']}, triton {info['triton']}, CUDA {info['cuda']})",
             f"platform: {info['platform']}"]
    env = ", ".join(f"{k}={v}" for k, v in info["environment"].items()) or "none set"
    lines.append(f"switches: {env}")
    lines.append(f"kernel cache search order: {', '.join(info['cache_directories'])}")
    for device, entry in info["backends"].items():
        lines.append(f"\n[{device}]")
        for key, value in entry.items():
            lines.append(f"  {key}: {value}")
    if info["fallbacks"]:
        lines.append("\nfallbacks taken in this process:")
        lines += [f"  - {msg}" for msg in info["fallbacks"].values()]
    else:
        lines.append("\nno fallback taken")
    return "\n".join(lines)


def build() -> dict:
    """Fill the kernel cache's first writable directory (``BOXLOSS_CACHE`` when set): the compiled C kernels
    (the hand-written classic.c, the axis-aligned losses generated from their formulas, rotated boxes) and, where
    Triton is installed, the generated Triton modules, so
    that no first call has to build or write anything. ``{what: path}``, or ``{what: "failed: why"}``."""
    from .backends import kernel_cache, triton_kernels

    directory = kernel_cache.first_writable()
    if directory is None:
        return {"kernel cache": f"failed: no writable directory among {', '.join(kernel_cache.cache_dirs())}"}
    built = {}
    for label, library in (("C kernel: classic.c", cpu.CORE), ("C kernel: axis-aligned losses", cpu.VARIANTS),
                           ("C kernel: rotated boxes", cpu.ROTATED)):
        try:
            built[label] = library.build_into(directory)
        except (RuntimeError, OSError) as exc:
            built[label] = f"failed: {exc}"
        library.reset()  # the next load finds what was just built
    if triton_kernels.triton_importable():
        for prefix, text in triton_kernels.generated_sources().items():
            name = kernel_cache.module_name(prefix, text) + ".py"
            try:
                built[f"Triton module: {prefix}"] = kernel_cache.ensure(directory, name, text.encode())
            except OSError as exc:
                built[f"Triton module: {prefix}"] = f"failed: {exc}"
    else:
        built["Triton modules"] = "skipped: Triton is not installed"
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxloss.info", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--build", action="store_true",
                        help="build the C kernels and write the generated Triton modules into the kernel cache")
    parser.add_argument("--check", action="store_true",
                        help="check every backend of every kind against the reference on every device here; "
                             "exits non-zero on a mismatch")
    args = parser.parse_args(argv)
    if args.check:
        from . import selfcheck

        rows = selfcheck.run()
        print(json.dumps(rows, indent=1) if args.json else selfcheck.format_rows(rows))
        return 1 if any(r.get("passed") is False for r in rows) else 0
    if args.build:
        built = build()
        print(json.dumps(built, indent=1) if args.json else
              "\n".join(f"{label}: {where}" for label, where in built.items()))
        return 1 if any(str(where).startswith("failed") for where in built.values()) else 0
    info = report()
    print(json.dumps(info, indent=1) if args.json else format_report(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
