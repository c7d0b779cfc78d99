"""Where the compiled CPU kernel comes from, and what happens when it cannot: every fallback warns once per cause
with a FastPathWarning naming the cause and the fix, a corrupt cached library is rebuilt (never loaded), a
prebuilt library in a cache directory is used even without a compiler; ``python -m boxloss.info`` reports it."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import boxloss
from boxloss.backends import _warn, cpu

SNIPPET = """
import json, warnings, torch, boxloss
from boxloss.backends import cpu
warnings.simplefilter("always")
p = torch.tensor([[0., 0., 2., 2.], [0., 0., 1., 1.]]); t = torch.tensor([[1., 1., 3., 3.], [2., 0., 3., 1.]])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    a = boxloss.giou_loss(p, t, reduction="none"); b = boxloss.iou_loss(p, t, reduction="none")
    c = boxloss.box_iou(p, t)
print(json.dumps({"values": a.tolist() + b.tolist() + c.flatten().tolist(), "status": cpu.status(),
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, boxloss.FastPathWarning)]}))
"""
EXPECTED = [1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 1 - 1 / 7, 1 + 1 / 2 ** 0.5, 1 / 7, 0.0, 0.0, 0.0]


def run_fresh(tmp_path, **env_changes):
    """Run SNIPPET in a new process with its own home and temp dirs (so no earlier cache is found)."""
    home = tmp_path / "home"
    tmp = tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXLOSS_") and k != "CC"}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    env.update({k: str(v) for k, v in env_changes.items()})
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["values"] == pytest.approx(EXPECTED, abs=1e-6)  # whatever backend ran, the values are right
    return result


needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="needs a C compiler")


@needs_compiler
def test_builds_into_the_cache_with_a_checksum_and_no_warning(tmp_path):
    cache = tmp_path / "cache"
    r = run_fresh(tmp_path, BOXLOSS_CACHE=cache)
    assert r["warnings"] == []
    assert r["status"]["backend"] == "compiled C kernel" and r["status"]["reason"] == "built now"
    so = r["status"]["cache_file"]
    assert os.path.dirname(so) == str(cache) and os.path.exists(so + ".sha256")
    again = run_fresh(tmp_path, BOXLOSS_CACHE=cache)
    assert again["status"]["reason"] == "loaded from the cache" and again["warnings"] == []


def test_no_compiler_warns_once_and_runs_the_pytorch_path(tmp_path):
    r = run_fresh(tmp_path, CC=tmp_path / "no-such-compiler", BOXLOSS_CACHE=tmp_path / "cache")
    assert r["status"]["backend"] is None
    assert len(r["warnings"]) == 1, r["warnings"]  # three calls, one warning
    assert "could not be run" in r["warnings"][0] and "BOXLOSS_CPU_KERNEL=0" in r["warnings"][0]


def test_a_failing_compiler_warns_with_its_name(tmp_path):
    r = run_fresh(tmp_path, CC="false", BOXLOSS_CACHE=tmp_path / "cache")
    assert len(r["warnings"]) == 1 and "'false' failed to build" in r["warnings"][0]


def test_switched_off_kernel_does_not_warn(tmp_path):
    r = run_fresh(tmp_path, BOXLOSS_CPU_KERNEL=0)
    assert r["warnings"] == [] and "BOXLOSS_CPU_KERNEL=0" in r["status"]["reason"]


@needs_compiler
def test_truncated_cached_library_is_rebuilt_not_loaded(tmp_path):
    cache = tmp_path / "cache"
    so = run_fresh(tmp_path, BOXLOSS_CACHE=cache)["status"]["cache_file"]
    with open(so, "r+b") as f:  # what a full disk or a killed build leaves: dlopen of this would SIGBUS
        f.truncate(os.path.getsize(so) // 3)
    r = run_fresh(tmp_path, BOXLOSS_CACHE=cache)
    assert r["status"]["reason"] == "built now" and r["status"]["cache_file"] == so
    assert len(r["warnings"]) == 1 and "checksum mismatch" in r["warnings"][0]
    assert run_fresh(tmp_path, BOXLOSS_CACHE=cache)["warnings"] == []  # repaired


@needs_compiler
def test_prebuilt_kernel_is_used_without_a_compiler(tmp_path):
    prebuilt = tmp_path / "prebuilt"
    so = run_fresh(tmp_path, BOXLOSS_CACHE=prebuilt)["status"]["cache_file"]
    shutil.rmtree(tmp_path / "home")
    r = run_fresh(tmp_path, BOXLOSS_CACHE=prebuilt, CC=tmp_path / "no-such-compiler")
    assert r["status"]["cache_file"] == so and r["warnings"] == []


@needs_compiler
def test_read_only_cache_is_read_and_a_build_goes_elsewhere(tmp_path, monkeypatch):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    monkeypatch.setenv("BOXLOSS_CACHE", str(readonly))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real_writable = cpu._writable
    monkeypatch.setattr(cpu, "_writable", lambda d: d != str(readonly) and real_writable(d))
    cpu.reset()
    _warn.forget("cpu-")
    try:
        with pytest.warns(boxloss.FastPathWarning, match="not writable; building into"):
            assert cpu.load() is not None
        built = cpu.status()["cache_file"]
        assert built.startswith(str(tmp_path / "home"))
        # the same library placed into the read-only directory is used from there
        for suffix in ("", ".sha256"):
            shutil.copy(built + suffix, str(readonly / os.path.basename(built)) + suffix)
        cpu.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("error", boxloss.FastPathWarning)
            assert cpu.load() is not None
        assert cpu.status()["cache_file"] == str(readonly / os.path.basename(built))
    finally:
        monkeypatch.undo()
        cpu.reset()
        cpu.load()


def test_info_reports_backends_and_fallbacks(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXLOSS_")}
    out = subprocess.run([sys.executable, "-m", "boxloss.info", "--json"], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    info = json.loads(out)
    assert info["boxloss"] == boxloss.__version__ and info["torch"] == torch.__version__
    cpu_entry = info["backends"]["cpu"]
    assert cpu_entry["aligned losses and box functions"] in ("compiled C kernel", "PyTorch closed form")
    assert cpu_entry["reason"]
    assert cpu_entry["rotated boxes"].startswith(("compiled C kernel", "PyTorch closed form"))
    text = subprocess.run([sys.executable, "-m", "boxloss.info"], env={**env, "CC": "false", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300, check=True).stdout
    assert "[cpu]" in text and "reason:" in text


def test_cuda_dispatch_decisions_without_a_gpu(monkeypatch):
    """What runs on a CUDA tensor, decided without touching a GPU: Triton for float32/16/bf16 when it can run,
    the PyTorch closed form for float64 (the Triton kernels compute in float32) and when it cannot — with one
    warning per cause, and none for the explicit BOXLOSS_TRITON=0."""
    import types

    from boxloss.backends import dispatch, ops, triton_kernels

    def fake(dtype):
        return types.SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)

    monkeypatch.setattr(dispatch, "_triton_reason", lambda device: None)
    assert dispatch._ops_for(fake(torch.float32)) == (triton_kernels.aligned_loss_triton,
                                                   triton_kernels.pairwise_score_triton)
    assert dispatch._ops_for(fake(torch.bfloat16))[0] is triton_kernels.aligned_loss_triton
    assert dispatch._ops_for(fake(torch.float64)) == (ops.aligned_loss_op, ops.pairwise_score_op)
    _warn.forget("triton")
    monkeypatch.setattr(dispatch, "_triton_reason", lambda device: "switched off by BOXLOSS_TRITON=0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", boxloss.FastPathWarning)
        assert dispatch._ops_for(fake(torch.float32))[0] is ops.aligned_loss_op
    monkeypatch.setattr(dispatch, "_triton_reason", lambda device: "Tesla K80 has compute capability 3.7; ...")
    with pytest.warns(boxloss.FastPathWarning, match="compute capability 3.7"):
        assert dispatch._ops_for(fake(torch.float32))[0] is ops.aligned_loss_op
    with warnings.catch_warnings():
        warnings.simplefilter("error", boxloss.FastPathWarning)
        dispatch._ops_for(fake(torch.float16))  # the same cause is not reported twice
    monkeypatch.setattr(dispatch, "_triton_reason", lambda device: None)
    monkeypatch.setattr(dispatch, "_broken_triton", {0})  # a kernel failed on this device earlier
    assert dispatch._ops_for(fake(torch.float32))[0] is ops.aligned_loss_op


def test_triton_unavailable_reasons(monkeypatch):
    from boxloss.backends import triton_kernels

    monkeypatch.setenv("BOXLOSS_TRITON", "0")
    assert triton_kernels.unavailable_reason(torch.device("cuda", 0)) == "switched off by BOXLOSS_TRITON=0"
    monkeypatch.delenv("BOXLOSS_TRITON")
    if not torch.cuda.is_available():
        assert triton_kernels.unavailable_reason(torch.device("cuda", 0)) == "CUDA is not available"
