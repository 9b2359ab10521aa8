"""The command line: subcommands, file conversion, clear errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steinsplat.cli import main
from steinsplat.export import read_ply, write_ply
from steinsplat.gaussians import Gaussians


def test_export_and_info(tmp_path, capsys):
    src = tmp_path / "a.ply"
    write_ply(src, Gaussians.random_ball(50, sh_degree=1))
    assert main(["export", str(src), "--to", str(tmp_path / "b.splat")]) == 0
    assert (tmp_path / "b.splat").stat().st_size == 50 * 32
    assert main(["export", str(tmp_path / "b.splat"), "--to", str(tmp_path / "c.ply"), "--sh-degree", "3"]) == 0
    assert read_ply(tmp_path / "c.ply").sh_degree == 3
    assert main(["info", str(src)]) == 0


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.ply" in err and "Traceback" not in err
    assert main(["export", str(bad), "--to", str(tmp_path / "x.splat")]) == 2
    ok = tmp_path / "ok.ply"
    write_ply(ok, Gaussians.random_ball(5))
    assert main(["export", str(ok), "--to", str(tmp_path / "x.obj")]) == 2
    assert ".splat" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert main(["export", str(ok), "--to", str(tmp_path / "x.splat"), "--sh-degree", "3"]) == 2


def test_console_script_and_fit_demo(tmp_path):
    """The installed entry point runs a (very short) fit-demo and writes readable outputs."""
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "steinsplat.cli", "fit-demo", "--steps", "20", "--resolution", "24",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "fit.json").read_text())
    assert rep["steps"] == 20 and rep["held_out_psnr_db"] > 5
    g = read_ply(out / "demo.ply")
    assert len(g) == rep["gaussians"] and torch.isfinite(g.means).all()
    assert (out / "preview.png").stat().st_size > 100 and (out / "demo.splat").stat().st_size == 32 * len(g)


def test_config_presets_and_overrides(tmp_path, monkeypatch):
    from steinsplat import config
    from steinsplat.cli import FitDemoArgs

    a = config.parse(FitDemoArgs, ["--config", "fit-demo-quick"], prog="t")
    assert (a.steps, a.resolution) == (150, 32)
    b = config.parse(FitDemoArgs, ["--config=fit-demo-quick", "--steps", "7"], prog="t")
    assert (b.steps, b.resolution) == (7, 32)  # the command line wins over the preset
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    try:
        config.parse(FitDemoArgs, ["--config", str(bad)], prog="t")
        raise AssertionError("unknown key accepted")
    except config.ConfigError as exc:
        assert "stepz" in str(exc) and "steps" in str(exc)
    monkeypatch.chdir(tmp_path)
    assert main(["fit-demo", "--config", "nope"]) == 2


GENERATE_PRESETS = sorted(q.stem for q in (Path(__file__).resolve().parents[1] / "src/steinsplat/configs").glob("*.yaml")
                          if not q.stem.startswith("fit-demo"))


def test_every_shipped_generate_preset_is_tested():
    from steinsplat import config

    assert set(GENERATE_PRESETS) == {q.stem for q in config.REPO_PRESETS.glob("*.yaml")} - {"fit-demo-quick"}
    assert {"object", "object-500", "scene", "sd-object", "sd-scene"} <= set(GENERATE_PRESETS)


@pytest.mark.parametrize("name", GENERATE_PRESETS)
def test_a_preset_plus_flags_equals_the_same_config_built_in_python(name):
    import dataclasses

    from steinsplat import config
    from steinsplat.pipeline import GenerateConfig

    preset = config.load_preset(GenerateConfig, name)
    got = config.parse(GenerateConfig, ["--config", name, "x", "--steps", "7"], prog="t")
    assert got == dataclasses.replace(preset, prompt="x", steps=7)
    got = config.parse(GenerateConfig, ["x", "--config", name, "--seed", "3", "--quiet", "--optim.lr-mult", "2",
                                        "--optim.densify.cap", "1234", "--baseline", "normal"], prog="t")
    optim = dataclasses.replace(preset.optim, lr_mult=2.0,
                                densify=dataclasses.replace(preset.optim.densify, cap=1234))
    assert got == dataclasses.replace(preset, prompt="x", seed=3, quiet=True, optim=optim,
                                      guidance=dataclasses.replace(preset.guidance, baseline="normal"))
    # without the flags, the preset as it is (with the prompt the command line gives)
    assert config.parse(GenerateConfig, ["--config", name, "y"], prog="t") == dataclasses.replace(preset, prompt="y")


def test_shapeworld_render_command(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    out = tmp_path / "gt.png"
    assert main(["shapeworld", "render", "a red cube", "--out", str(out), "--resolution", "32"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 32, 3)
    assert (img[0, 0] == 255).all()  # white background in the corner
    centre = img[16, 16].astype(int)
    assert centre[0] > 2 * centre[1] and centre[0] > 2 * centre[2]  # red in the middle
    assert main(["shapeworld", "render", "a corgi in a spacesuit", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "corgi" in err and "--prior sd" in err and "Traceback" not in err
    assert main(["shapeworld", "render", "a room with blue walls and a gray floor", "--out", str(out)]) == 0


def test_shapeworld_sample_command(tmp_path, capsys):
    """The shipped prior's sample from the front of "a red cube": a red object on white."""
    import numpy as np
    from PIL import Image

    out = tmp_path / "s.png"
    assert main(["shapeworld", "sample", "a red cube", "--elevation", "20", "--azimuth", "45", "--out", str(out),
                 "--steps", "20", "--upscale", "1"]) == 0
    img = np.asarray(Image.open(out)).astype(int)
    assert img.shape == (32, 32, 3)
    assert (img[0, 0] > 200).all()  # background stays white
    centre = img[12:20, 12:20].reshape(-1, 3).mean(0)
    assert centre[0] > 1.5 * centre[1] and centre[0] > 1.5 * centre[2], centre  # red object in the middle
    assert main(["shapeworld", "sample", "a corgi", "--out", str(out)]) == 2
    assert main(["shapeworld", "draw", "a red cube"]) == 2
