"""Run by tests/backends/test_triton_compile.py: compile Triton kernel specialisations ahead of time for real GPU
targets, on a machine without a GPU. Arguments: WORKER_INDEX WORKER_COUNT ARCH[,ARCH...]. Prints one line per
kernel, with its registers and bytes of spill stores as Triton's ``ptxas -v`` reports them, and exits non-zero
if any fails to compile."""

import importlib
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from boxloss.backends import triton_kernels


def registers(ptx: str, arch: int) -> str:
    """``regs=N spill=B`` from Triton's own ``ptxas -v`` on the kernel's PTX (B: bytes of spill stores)."""
    regs, spill = triton_kernels.ptxas_usage(ptx, arch)
    return f"regs={'?' if regs is None else regs} spill={'?' if spill is None else spill}"


def main() -> int:
    index, count, archs = int(sys.argv[1]), int(sys.argv[2]), [int(a) for a in sys.argv[3].split(",")]
    jobs = [(arch, spec) for arch in archs for spec in triton_kernels.launch_specialisations()]
    failures = 0
    for arch, (name, signature, constexprs) in jobs[index::count]:
        module, _, attr = name.rpartition(".")
        if module == "generated":  # the generated aligned kernels, written into the kernel cache at first use
            fn = getattr(triton_kernels.generated_aligned_module(), attr)
        elif module == "generated_pairwise":  # the generated rotated pairwise scores, likewise
            fn = getattr(triton_kernels.generated_pairwise_module(), attr)
        else:
            fn = getattr(importlib.import_module(f"boxloss.backends.{module}") if module else triton_kernels, attr)
        start = time.perf_counter()
        try:
            kernel = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                                    options=triton_kernels.LAUNCH_OPTIONS)  # as the launches compile them
            ok = "cubin" in kernel.asm and len(kernel.asm["cubin"]) > 0
            usage = registers(kernel.asm["ptx"], arch) if ok else ""
        except Exception as exc:  # report every failure, not only the first
            ok, usage = False, ""
            print(f"sm_{arch} {name} {constexprs}: {type(exc).__name__}: {exc}")
        failures += not ok
        dtype = signature[next(iter(signature))]
        print(f"sm_{arch} {name} {dtype} {constexprs} {time.perf_counter() - start:.2f}s {usage} "
              f"{'compiled' if ok else 'FAILED'}")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
