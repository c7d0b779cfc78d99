"""The Triton kernels compile ahead of time for Ampere (sm_80) and Hopper (sm_90) — every specialisation the
package can launch — on a machine without a GPU. This catches what Triton's CPU interpreter cannot (types,
layouts, libdevice calls, register pressure); it skips only where Triton is not installed."""

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

from boxloss.backends import triton_kernels  # noqa: E402

ARCHS = "80,90"


@pytest.fixture(scope="module")
def compiled():
    """Every launchable specialisation compiled for sm_80 and sm_90: the compile log, one line per kernel."""
    specs = triton_kernels.launch_specialisations()
    script = os.path.join(os.path.dirname(__file__), "triton_aot_compile.py")
    workers = 2
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, script, str(i), str(workers), ARCHS], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for i in range(workers)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    return specs, "".join(outputs), [p.returncode for p in procs]


def test_every_launchable_specialisation_compiles_for_sm80_and_sm90(compiled):
    specs, text, codes = compiled
    # dtypes × (kinds × grad × reduce + pairwise kinds) + the rotated pairwise scores (float32 features) + dtypes
    # × the generated aligned kernels (23 axis-aligned variants; 17 rotated and Gaussian losses, two of them as
    # one kernel per term: generated.TRITON_SPLIT_TERMS)
    assert len(specs) == 3 * (7 * 2 * 2 + 4) + 3 + 3 * (23 + 17 + 2)
    assert all(code == 0 for code in codes), text[-4000:]
    assert text.count(" compiled") == 2 * len(specs), text[-4000:]


def test_no_kernel_spills_registers(compiled):
    # read from Triton's ptxas -v on each kernel's PTX, for sm_80 and sm_90: a spill is local-memory traffic in the
    # innermost work of a kernel, which makes it crawl on a GPU
    import re

    _, text, _ = compiled
    usage = re.findall(r"^sm_(\d+) (\S+) .* regs=(\d+|\?) spill=(\d+|\?) compiled$", text, re.M)
    assert len(usage) == text.count(" compiled"), "ptxas -v gave no register report"
    assert all(spill != "?" for *_, spill in usage), text[-2000:]
    spilling = sorted((arch, name, regs, spill) for arch, name, regs, spill in usage if int(spill) > 0)
    assert not spilling, spilling


def test_kernels_compile_without_fused_multiply_add():
    # the launches' options forbid contraction: the PTX of a kernel without library calls (the IoU loss with its
    # gradient) holds no fma at all; with Triton's default options it holds dozens
    import re

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, signature, constexprs = next(
        s for s in triton_kernels.launch_specialisations()
        if s[0] == "_aligned_kernel" and s[1]["P"] == "*fp32" and s[2]["KIND"] == 0 and s[2]["NEED_GRAD"]
        and not s[2]["REDUCE"])
    source = ASTSource(triton_kernels._aligned_kernel, signature, constexprs)
    fused = {}
    for options in ({}, triton_kernels.LAUNCH_OPTIONS):
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
        fused[bool(options)] = len(re.findall(r"\bfma\.rn", ptx))
    assert fused[True] == 0 and fused[False] > 0, fused
