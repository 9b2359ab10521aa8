"""`steinsplat bench --quick`: the report's structure and the invariants, never specific numbers."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from steinsplat.bench.methods import DEFAULT_METHODS as METHODS, SAME_MEAN_AS_SDS  # what the quick run compares
from steinsplat.bench.report import PLOTS
from steinsplat.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())  # strict JSON: no NaN


def test_quick_report_files_and_sections(quick_report):
    out, rep = quick_report
    assert set(rep) == {"meta", "variance", "convergence", "cost", "ablations", "decomposition", "targets"}
    assert rep["meta"]["config"]["quick"] is True and rep["meta"]["machine"] and rep["meta"]["date"]
    md = (out / "report.md").read_text()
    for section in ("## Targets", "## Gradient variance", "## Convergence", "## Cost", "## Ablations",
                    "## Variance decomposition"):
        assert section in md
    for name in PLOTS:
        with Image.open(out / name) as im:  # real PNGs that open
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
    for t in rep["targets"]:
        assert set(t) == {"what", "measured", "met"} and isinstance(t["met"], bool)
        assert ("**met**" if t["met"] else "**NOT met**") in md


def test_variance_rows_cover_every_method_and_keep_the_invariants(quick_report):
    _, rep = quick_report
    cfg = rep["meta"]["config"]
    rows = rep["variance"]
    assert {(r["method"], r["band"], r["cameras"]) for r in rows} == {
        (m, b, c) for m in METHODS for b in cfg["bands"] for c in cfg["cameras"]}
    for r in rows:
        assert r["variance"] > 0 and math.isfinite(r["variance"]) and r["draws"] == cfg["draws"]
        if r["method"] == "sds":
            assert r["ratio_vs_sds"] == pytest.approx(1.0)
        if r["method"] in SAME_MEAN_AS_SDS:
            # Stein's identity: every SSD has SDS's mean; the paired test of the means stays at
            # its null level (about 0.8-0.9 for a handful of draws) instead of growing with a bias
            assert r["mean_z_vs_sds"] is not None and r["mean_z_vs_sds"] < 1.3, r
    for r in rep["ablations"]:
        assert r["variance"] > 0 and (r["method"] == "sds" or r["mean_z_vs_sds"] < 1.3), r


def test_decomposition_section_covers_every_prompt_and_adds_up(quick_report):
    _, rep = quick_report
    cfg = rep["meta"]["config"]
    dec = rep["decomposition"]
    assert [r["prompt"] for r in dec["rows"]] == rep["meta"]["prompts"]
    for r in dec["rows"]:
        assert (r["K"], r["T"], r["E"]) == tuple(cfg["decomposition"]) and r["step"] == round(0.5 * cfg["steps"])
        assert r["total"] > 0 and r["camera"] + r["timestep"] + r["noise"] == pytest.approx(r["total"])
        assert r["camera_share"] + r["timestep_share"] + r["noise_share"] == pytest.approx(1.0)
        assert r["eps_cv_ceiling"] == pytest.approx(1.0 - r["noise_share"])
    s = dec["summary"]
    assert s["noise_share"]["n"] == len(dec["rows"]) and s["noise_share"]["lo"] <= s["noise_share"]["mean"] <= s["noise_share"]["hi"]


def test_convergence_runs_and_cost_rows(quick_report):
    _, rep = quick_report
    cfg = rep["meta"]["config"]
    runs = rep["convergence"]["runs"]
    assert {(r["method"], r["prompt"]) for r in runs} == {(m, p) for m in METHODS for p in rep["meta"]["prompts"]}
    for r in runs:
        steps = [p["step"] for p in r["curve"]]
        secs = [p["seconds"] for p in r["curve"]]
        assert steps[0] == 0 and steps[-1] == cfg["steps"] and steps == sorted(set(steps))
        assert secs == sorted(secs) and secs[0] == 0.0 and r["seconds"] == pytest.approx(secs[-1])
        assert 0.0 <= r["curve"][-1]["mask_iou"] <= 1.0
        assert (r["curve"][-1]["r_precision"] is None) == r["room"]  # R-precision for objects only
    summary = rep["convergence"]["summary"]
    assert set(summary) == {"objects", "rooms"} and set(summary["objects"]) == set(METHODS)
    cost = {r["method"]: r for r in rep["cost"]}
    assert set(cost) == set(METHODS) and cost["sds"]["ratio_vs_sds"] == pytest.approx(1.0)
    assert all(r["seconds_per_step"] > 0 and r["peak_memory_mb"] >= 0 for r in cost.values())


def test_bad_bench_options_end_with_one_clear_error(capsys, tmp_path):
    assert main(["bench", "--methods", "sds", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "--methods", "ssd", "--out", str(tmp_path)]) == 2
    assert "needs sds" in capsys.readouterr().err
    assert main(["bench", "--prompts", "a corgi in a spacesuit", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--warmup", "-5", "--out", str(tmp_path)]) == 2
    assert "--warmup" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_a_second_invocation_reuses_the_stored_runs(quick_report, capsys):
    """Finished convergence runs are stored under OUT/runs and reused by the next invocation with the
    same settings (a long protocol resumes where it stopped); --no-resume runs them again."""
    out, rep = quick_report
    stored = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(stored) == len(rep["convergence"]["runs"])
    # (the parts that store nothing are left out of the second invocation)
    assert main(["bench", "--quick", "--out", str(out), "--no-ablations", "--decomposition", "0", "0", "0"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["ablations"] == [] and again["decomposition"]["rows"] == []
    assert again["meta"]["reused_runs"] == len(stored)
    assert again["convergence"]["runs"] == rep["convergence"]["runs"]  # the same runs, read back exactly
    assert "reused" in (out / "report.md").read_text()


def test_stored_runs_that_are_incomplete_are_run_again(tmp_path):
    import torch

    from steinsplat.bench.convergence import CurvePoint, Run, load_run, save_run
    from steinsplat.gaussians import Gaussians

    run = Run("ssd", "a red cube", 0, False, 10, 1.5, 0.15, 0, 40, [CurvePoint(0, 0.0, 0.4, 10.0, 0.2, 0.1, None)])
    g = Gaussians.random_ball(40, generator=torch.Generator().manual_seed(0))
    save_run(tmp_path, "k", run, {5: g})
    back, snaps = load_run(tmp_path, "k", (5,))
    assert back == run and torch.equal(snaps[5].means, g.means)
    assert load_run(tmp_path, "k", (7,)) is None  # a snapshot it does not hold
    assert load_run(tmp_path, "missing", ()) is None
    (tmp_path / "k.json").write_text('{"method": "ssd", "prom')  # cut short
    assert load_run(tmp_path, "k", ()) is None
    assert not list(tmp_path.glob("*.tmp*"))


def test_stored_runs_are_keyed_by_settings_and_code(monkeypatch):
    from steinsplat.bench import convergence

    a = convergence.run_key("ssd", "a red cube", 0, 200, 40, 4, 64)
    assert a != convergence.run_key("ssd", "a red cube", 1, 200, 40, 4, 64)
    assert a != convergence.run_key("ssd", "a red cube", 0, 500, 40, 4, 64)
    assert "/" not in a and " " not in a
    monkeypatch.setattr(convergence, "code_fingerprint", lambda: "0123456789")  # other code: other runs
    assert a != convergence.run_key("ssd", "a red cube", 0, 200, 40, 4, 64)


@pytest.mark.parametrize("prompt, mode", [("a red cube", "object"), ("a room with blue walls and a gray floor", "scene")])
def test_bench_config_is_the_command_line_it_replaced(prompt, mode):
    # bench_config builds the GenerateConfig in Python; it equals what the benchmarks used to parse from argv
    from steinsplat import config
    from steinsplat.bench.convergence import bench_config
    from steinsplat.pipeline import GenerateConfig

    argv = [prompt, "--seed", "3", "--steps", "12", "--mode", mode, "--views", "2", "--resolution", "32", "--quiet",
            "--init-color", "random", "--optim.lr-mult", "1", "--optim.lr-final", "1", "--optim.colour-average", "0"]
    assert bench_config(prompt, 3, 12, 2, 32) == config.parse(GenerateConfig, argv, prog="bench")
    # the schedule the benchmarks were built on, whatever generation's default
    cfg = bench_config(prompt, 3, 12, 2, 32)
    assert (cfg.optim.lr_mult, cfg.optim.colour_average, cfg.init_color) == (1.0, 0.0, "random")
