import os

import pytest
import torch

# Tests run the eager rasteriser by default (compiling kernels costs tens of seconds per process);
# test_render.py checks the compiled kernels explicitly.
os.environ.setdefault("STEINSPLAT_COMPILE", "0")


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny models: with one intra-op thread they take milliseconds per step, while two threads on a
    2-core machine shared with another job spin-wait for seconds per step."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gsplat_cpu(monkeypatch):
    """gsplat's own `rasterization()` on the CPU: its CUDA ops replaced by gsplat's PyTorch reference
    implementations (what is shimmed and why: tests/gsplat_cpu.py). With it, `render(...,
    backend="gsplat")` and `backend="auto"` run gsplat's Python path, meta and gradients here."""
    import gsplat_cpu as shim

    shim.install(monkeypatch)
    return shim
