"""Regenerate the generated source files of the package: ``python -m boxloss._fast.generate``.

Only ``rotated_triton.py`` is kept as a file (Triton compiles kernels from source files); the C kernels are
generated at first use and cached (:mod:`boxloss._fast.cpu`).
"""

from .variants import write_triton_module

if __name__ == "__main__":
    print(f"wrote {write_triton_module()}")
