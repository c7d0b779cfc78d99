"""Run by tests/backends/test_triton_compile.py: compile Triton kernel specialisations ahead of time for real GPU targets,
on a machine without a GPU. Arguments: WORKER_INDEX WORKER_COUNT ARCH[,ARCH...]. Prints one line per kernel and
exits non-zero if any fails to compile."""

import importlib
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from boxloss._fast import triton_kernels


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
            fn = getattr(importlib.import_module(f"boxloss._fast.{module}") if module else triton_kernels, attr)
        start = time.perf_counter()
        try:
            kernel = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                                    options=triton_kernels.LAUNCH_OPTIONS)  # as the launches compile them
            ok = "cubin" in kernel.asm and len(kernel.asm["cubin"]) > 0
        except Exception as exc:  # report every failure, not only the first
            ok = False
            print(f"sm_{arch} {name} {constexprs}: {type(exc).__name__}: {exc}")
        failures += not ok
        dtype = signature[next(iter(signature))]
        print(f"sm_{arch} {name} {dtype} {constexprs} {time.perf_counter() - start:.2f}s {'compiled' if ok else 'FAILED'}")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
