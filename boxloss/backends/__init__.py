"""The backends of boxloss' operators and the dispatch between them.

Layers, each importing only from the ones below it (checked by ``lint-imports``, see ``pyproject.toml``):

* :mod:`~boxloss.backends.dispatch` — picks the backend for a tensor's device and calls the operator;
* :mod:`~boxloss.backends.triton_kernels` — the CUDA backend (hand-written and generated Triton kernels);
* :mod:`~boxloss.backends.ops` — the ``boxloss::`` operators (``torch.library``) with their autograd, vmap and
  fake-tensor rules, over the CPU backend and the PyTorch closed forms;
* :mod:`~boxloss.backends.cpu` — the CPU backend: C compiled at first use into the kernel cache;
* :mod:`~boxloss.backends.generated` (kernels generated from the registered formulas: C, Triton and the PyTorch
  closed form), :mod:`~boxloss.backends.closed_form` (the classic losses' hand-derived PyTorch closed form),
  :mod:`~boxloss.backends.kernel_cache` (the one checksummed, atomic writer of generated code).
"""

from .dispatch import (  # noqa: F401 - the entry points of the box functions and losses
    FastPathWarning,
    aligned_loss,
    backend_for,
    fast_path_enabled,
    pairwise,
    reference_path,
    set_fast_path,
)

__all__ = ["set_fast_path", "fast_path_enabled", "reference_path", "FastPathWarning", "backend_for"]
