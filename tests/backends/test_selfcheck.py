"""``python -m boxloss.info --check``: the self-check must pass on a correct build and catch a wrong backend."""

import pytest
import torch

from boxloss import info, selfcheck
from boxloss.backends import cpu
from boxloss.kinds import kind_of


@pytest.fixture
def few_kinds(monkeypatch):
    # the whole check runs in CI (.ci/run); here a few kinds of each family keep the tests short
    kinds = ["giou", "ciou", "log_iou", kind_of("siou", 4.0), kind_of("wiou"), kind_of("rotated_giou"),
             kind_of("kld_none", 1.0)]
    monkeypatch.setattr(selfcheck, "aligned_kinds", lambda: kinds)
    monkeypatch.setattr(selfcheck, "pairwise_kinds", lambda: ["giou", "ciou", "rotated_iou", "rotated_diou"])


def test_the_self_check_passes_on_this_build(few_kinds, capsys):
    assert info.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "FAILED" not in out
    assert "compiled C kernel" in out and "PyTorch closed form" in out
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        assert dtype in out


def test_the_self_check_catches_a_wrong_kernel(few_kinds, monkeypatch):
    real = cpu.run

    def off_by_a_little(*args, **kwargs):  # a kernel one part in 1e3 off on every loss value
        loss, gp, gt = real(*args, **kwargs)
        return loss * 1.001, gp, gt

    monkeypatch.setattr(cpu, "run", off_by_a_little)
    rows = selfcheck.run([torch.device("cpu")])
    bad = {(r["backend"], r["kind"]) for r in rows if r.get("passed") is False}
    # classic.c's CIoU is caught; GIoU runs the kernel generated from its formula, which this does not touch
    assert ("compiled C kernel", "ciou") in bad and ("compiled C kernel", "giou") not in bad
    assert not any(backend == "PyTorch closed form" for backend, _ in bad)
    assert info.main(["--check"]) == 1


def test_the_self_check_catches_lost_nan_propagation(few_kinds, monkeypatch):
    real = cpu.run

    def drops_nan(*args, **kwargs):
        loss, gp, gt = real(*args, **kwargs)
        return loss.nan_to_num(0.0), gp, gt

    monkeypatch.setattr(cpu, "run", drops_nan)
    rows = selfcheck.run([torch.device("cpu")])
    assert any(r["kind"] == "ciou" and r["backend"] == "compiled C kernel" and not r["nan"] for r in rows
               if "nan" in r)
