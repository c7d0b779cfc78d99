"""Shared fixtures and helpers: devices, the dtype → tolerance table, random box generators."""

import sys
from pathlib import Path

import pytest
import torch

# the tests are arranged like the package (core, losses, backends, integration, segmentation, examples); some
# import cases from each other (test_edges' degenerate pairs, test_rotated's mixed pairs, the variants' paper
# forms): every folder of tests is on the import path
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(p) for p in sorted(_HERE.iterdir()) if p.is_dir() and p.name[0] not in "._"]

from boxloss.backends import cpu, ops  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# the one dtype → (rtol, atol) table for comparisons with a float64 reference
TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 2e-3),  # inputs rounded to fp16, math in fp32
    torch.bfloat16: (2e-2, 1e-2),
}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_boxes(n, *, seed=0, dtype=torch.float64, device="cpu", scale=10.0, min_size=1.0, max_size=5.0):
    """``n`` valid xyxy boxes with sides in [min_size, min_size + max_size)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_size + min_size
    return torch.cat([xy, xy + wh], dim=-1).to(dtype=dtype, device=device)


def disjoint_pairs(n, *, seed=0, dtype=torch.float64):
    """Pairs of valid boxes that do not overlap: the second is shifted right and/or down past the first."""
    g = torch.Generator().manual_seed(seed)
    a = random_boxes(n, seed=seed, dtype=torch.float64)
    w = a[:, 2] - a[:, 0]
    h = a[:, 3] - a[:, 1]
    gap = torch.rand(n, 2, generator=g, dtype=torch.float64) * 3 + 0.1
    side = torch.randint(0, 3, (n,), generator=g)  # 0: right, 1: below, 2: diagonal
    dx = torch.where(side != 1, w + gap[:, 0], torch.zeros_like(w))
    dy = torch.where(side != 0, h + gap[:, 1], torch.zeros_like(h))
    size = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 + 0.5
    x1 = a[:, 0] + dx
    y1 = a[:, 1] + dy
    b = torch.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=-1)
    return a.to(dtype), b.to(dtype)


def assert_close(actual, expected, dtype=torch.float64, **kw):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=kw.get("rtol", rtol), atol=kw.get("atol", atol))


def overlapping_pairs(n, *, seed=0, dtype=torch.float64):
    """Pairs of valid boxes that overlap: each target is its prediction moved by less than a quarter of its size."""
    g = torch.Generator().manual_seed(seed + 1)
    a = random_boxes(n, seed=seed, dtype=torch.float64)
    size = torch.cat([a[:, 2:] - a[:, :2]] * 2, dim=-1)
    b = a + (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 0.5 * size
    return a.to(dtype), b.to(dtype)


BACKENDS = ["compiled_c", "torch_chunked"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each CPU implementation of the boxloss operators: the compiled C kernel and the PyTorch closed form."""
    if request.param == "compiled_c":
        if cpu.load() is None:
            pytest.skip("no C compiler here: the compiled kernel cannot be built")
        monkeypatch.setattr(ops, "USE_COMPILED_CPU", True)
    else:
        monkeypatch.setattr(ops, "USE_COMPILED_CPU", False)
        monkeypatch.setattr(ops, "CPU_CHUNK", 257)  # several chunks, one of them ragged
    return request.param


def pytest_collection_modifyitems(config, items):
    """Tests of the framework integrations (tests/integration: torchvision's detectors, Hugging Face
    transformers, Ultralytics) carry the ``integration`` marker: ``pytest -m "not integration"`` skips them."""
    for item in items:
        if "integration" in item.path.parts[-2:-1]:
            item.add_marker(pytest.mark.integration)
