"""benchmarks/sd_speed.py: its one-line refusal without CUDA, and its whole code path on the CPU
with a tiny saved SD model (`--cpu-tiny`), run as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_priors import _save_tiny_sd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sd_speed.py"
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _load_script():
    spec = importlib.util.spec_from_file_location("sd_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_one_line_and_exit_code_2(capsys, tmp_path):
    sd_speed = _load_script()
    assert sd_speed.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("sd_speed: no CUDA GPU on this machine") and "--cpu-tiny MODEL_DIR" in err
    assert sd_speed.main(["--cpu-tiny", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_sweep_runs_each_flag_alone_and_the_chosen_set():
    sd_speed = _load_script()
    ap_args = lambda **kw: type("A", (), {**{k: False for k in sd_speed.FLAGS}, "sweep": False, **kw})()  # noqa: E731
    assert sd_speed.configurations(ap_args()) == [("chosen: no flags", {})]
    runs = sd_speed.configurations(ap_args(vae_checkpointing=True, sweep=True))
    assert runs[0] == ("chosen: --vae-checkpointing", {"vae_checkpointing": True}) and runs[1] == ("no flags", {})
    assert [o for _, o in runs[2:]] == [{k: True} for k in sd_speed.FLAGS if k != "vae_checkpointing"]


def test_cpu_tiny_runs_every_guidance_with_the_flags(tmp_path):
    sd = _save_tiny_sd(tmp_path / "sd")
    report = tmp_path / "speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-tiny", str(sd), "--resolution", "16", "--views", "2",
                           "--gaussians", "64", "--repeats", "2", "--vae-checkpointing", "--vae-slicing",
                           "--channels-last", "--json", str(report)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert "tiny model: not a measurement" in lines[0] and "mean of 2 steps" in lines[0]
    rows = [ln.split() for ln in lines[2:]]
    label = "chosen: --vae-slicing --vae-checkpointing --channels-last".split()
    assert [r[:-3] for r in rows] == [label] * 3 and [r[-3] for r in rows] == ["sds", "vsd", "ssd"]
    assert all(float(r[-2]) > 0 and r[-1] == "-" for r in rows)  # seconds per step; no GPU peak on the CPU
    data = json.loads(report.read_text())
    assert [r["guidance"] for r in data["results"]] == ["sds", "vsd", "ssd"]
    assert all(r["options"] == {"vae_slicing": True, "vae_checkpointing": True, "channels_last": True}
               and r["skipped_steps"] == 0 and r["peak_gib"] is None for r in data["results"])
