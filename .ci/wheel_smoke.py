"""Smoke test of boxloss as users install it: run from outside the checkout, in a fresh virtual environment that
has the built wheel (not an editable install), after ``python -m boxloss.info --build`` filled a fresh kernel
cache. Fails unless the compiled CPU kernels are the backend in use and were found in that cache (nothing built
or written at first use), and the generated Triton modules are there too."""

import os
import sys
import tempfile
import warnings

import torch

import boxloss
from boxloss.backends import backend_for, cpu

here = os.path.dirname(os.path.abspath(boxloss.__file__))
assert "site-packages" in here, f"boxloss imported from {here}, not from the installed wheel"
assert os.path.exists(os.path.join(here, "backends", "classic.c")), "the wheel lacks the C kernel's source"
assert cpu.cache_dirs()[0] == os.environ["BOXLOSS_CACHE"]

warnings.simplefilter("error", boxloss.FastPathWarning)  # any fallback fails the smoke test
p = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True)
t = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
loss = boxloss.giou_loss(p, t, reduction="sum")
loss.backward()
expected = (1 - (1 / 7 - 2 / 9)) + (1 + 1 / 3)
assert abs(loss.item() - expected) < 1e-6, loss.item()
assert torch.isfinite(p.grad).all()
assert boxloss.box_iou(torch.tensor([[float("nan"), 0.0, 1.0, 1.0]]), t).isnan().all()

# a variant: its C kernel is generated from the installed formulas, compiled into the fresh cache, and used
import math  # noqa: E402

siou = boxloss.siou_loss(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
assert abs(siou.item() - (1 - 1 / 7 + 1 - math.exp(-1 / 9))) < 1e-6, siou.item()
vstatus = cpu.variants_status()
assert vstatus["backend"] == "compiled C kernel" and vstatus["reason"] == "loaded from the cache", vstatus
assert vstatus["cache_file"].startswith(os.environ["BOXLOSS_CACHE"]), vstatus

# rotated boxes: the generated library (with the hand-written pairwise IoU, from the C file inside the wheel)
assert os.path.exists(os.path.join(here, "backends", "rotated_iou.c")), "the wheel lacks rotated_iou.c"
assert not os.path.exists(os.path.join(here, "backends", "rotated_triton.py")), "generated code in the wheel"
square = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
diamond = torch.tensor([[0.0, 0.0, 2.0, 2.0, 45.0]])
iou = boxloss.box_iou(square, diamond, fmt="cxcywhr").item()
assert abs(iou - (8 * (math.sqrt(2) - 1)) / (8 - 8 * (math.sqrt(2) - 1))) < 1e-6, iou  # octagon over union
rp = diamond.clone().requires_grad_()
boxloss.giou_loss(rp, square + torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.0]]), fmt="cxcywhr").backward()
assert torch.isfinite(rp.grad).all()
assert boxloss.kld_loss(diamond, diamond).item() == 0.0
rstatus = cpu.variants_status("rotated")
assert rstatus["backend"] == "compiled C kernel" and rstatus["reason"] == "loaded from the cache", rstatus

name, reason = backend_for(torch.device("cpu"))
status = cpu.status()
assert name == "compiled C kernel", (name, reason)
assert status["reason"] == "loaded from the cache", status
assert status["cache_file"].startswith(os.environ["BOXLOSS_CACHE"]), status
# the generated Triton modules: written by info --build (Triton ships with torch's Linux wheels)
cached = os.listdir(os.environ["BOXLOSS_CACHE"])
for prefix in ("boxloss_triton_aligned_", "boxloss_triton_rotated_pairwise_"):
    assert any(n.startswith(prefix) and n.endswith(".py") for n in cached), (prefix, cached)
print(f"wheel smoke test passed: boxloss {boxloss.__version__} from {here}; CPU backend: {name} "
      f"({status['flags']}), from {status['cache_file']}; variants: {vstatus['cache_file']}; python {sys.version.split()[0]}, "
      f"torch {torch.__version__}, tmp {tempfile.gettempdir()}")
