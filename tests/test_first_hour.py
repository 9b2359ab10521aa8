"""A new user's first hour (issue 28, item 7): the mode a ShapeWorld prompt asks for, a batch that checks every
line before the first runs, a short `generate --help`, and a flat summary.json. No optimisation runs here:
`generate` is replaced by a stand-in that records the config it is given."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from steinsplat.cli import main
from steinsplat.config import ConfigError
from steinsplat.pipeline import GenerateConfig
from steinsplat.prompt_mode import SCENE_NOTE, ModeError, mode_source, resolve_mode

CUBE = "a red cube"
ROOM = "a room with blue walls and a gray floor"


# ---------------------------------------------------------------------------- resolve_mode (pure)
def _cfg(prompt: str, mode: str = "auto", **kw) -> GenerateConfig:
    return GenerateConfig(prompt, mode=mode, **kw)  # type: ignore[arg-type]  # "auto" until GenerateConfig has it


@pytest.mark.parametrize("prompt, prior, want", [
    (ROOM, "shapeworld", "scene"), ("A Room with red walls and an orange floor.", "shapeworld", "scene"),
    (CUBE, "shapeworld", "object"), ("a cube", "shapeworld", "object"), ("an object", "shapeworld", "object"),
    ("a red corgi", "shapeworld", "object"),  # outside the grammar: the prompt check refuses it, not this
    (ROOM, "sd", "object"), ("a corgi in a spacesuit", "sd", "object"),  # free text: object unless told
])
def test_auto_takes_the_mode_from_a_shapeworld_prompt(prompt, prior, want):
    said: list[str] = []
    cfg = _cfg(prompt)
    got = resolve_mode(cfg, prior, say=said.append)
    assert got.mode == want
    assert cfg.mode == "auto"  # a new config; the one given is not changed
    assert dataclasses.replace(got, mode="auto") == cfg  # nothing else differs
    assert said == ([SCENE_NOTE] if want == "scene" else [])


@pytest.mark.parametrize("prompt, mode, prior", [
    (CUBE, "object", "shapeworld"), (ROOM, "scene", "shapeworld"),
    (CUBE, "scene", "sd"), (ROOM, "object", "sd"),  # the Stable Diffusion prior keeps what it is told
])
def test_a_mode_given_and_not_contradicted_is_kept(prompt, mode, prior):
    said: list[str] = []
    cfg = _cfg(prompt, mode)
    assert resolve_mode(cfg, prior, say=said.append) is cfg and not said


@pytest.mark.parametrize("prompt, mode, fix", [(ROOM, "object", "--mode scene"), (CUBE, "scene", "--mode object"),
                                               ("a cube", "scene", "--mode object")])
def test_a_mode_the_shapeworld_prompt_contradicts_is_refused_naming_the_fix(prompt, mode, fix):
    with pytest.raises(ModeError, match=re.escape(f"--mode {mode} contradicts")) as info:
        resolve_mode(_cfg(prompt, mode), "shapeworld")
    assert fix in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # the command line's one-line error, exit 2
    with pytest.raises(ModeError, match=r"--config object \(mode: object\).*add --mode scene"):
        resolve_mode(_cfg(ROOM, "object"), "shapeworld", given_by="--config object")


def test_resolve_mode_needs_the_prior_resolved_and_a_known_mode():
    with pytest.raises(ValueError, match="resolve the prior"):
        resolve_mode(_cfg(ROOM), "auto")
    with pytest.raises(ModeError, match="object, scene or auto"):
        resolve_mode(_cfg(CUBE, "room"), "shapeworld")


def test_mode_source_tells_a_mode_given_from_the_default():
    assert mode_source([CUBE, "--steps", "3"]) is None
    assert mode_source([CUBE, "--mode", "scene"]) == "--mode"
    assert mode_source([CUBE, "--mode=object", "--config", "scene"]) == "--mode"  # the command line wins
    assert mode_source([CUBE, "--config", "scene"]) == "--config scene"  # the preset sets mode: scene
    assert mode_source([CUBE, "--config=sd-object"]) is None  # a preset without a mode


# ---------------------------------------------------------------------------- the command line
@pytest.fixture
def fake_generate(monkeypatch):
    """generate() replaced: records each config and writes nothing; returns a run record's fields."""
    from types import SimpleNamespace

    import steinsplat.pipeline as gen_mod

    seen: list[GenerateConfig] = []

    def fake(cfg, console=None, models=None):  # noqa: ANN001
        assert cfg.mode in ("object", "scene")  # never "auto": the CLI decides it before generate
        seen.append(cfg)
        return SimpleNamespace(outputs={"splats": str(cfg.out)}, metrics={"mask_iou": 0.9}, gaussians=7,
                               timings=SimpleNamespace(total_s=0.0))  # a RunRecord's fields

    monkeypatch.setattr(gen_mod, "generate", fake)
    return seen


@pytest.mark.parametrize("argv, mode, note", [
    ([ROOM], "scene", True), ([CUBE], "object", False), ([ROOM, "--quiet"], "scene", False),
    ([ROOM, "--mode", "scene"], "scene", False), ([ROOM, "--config", "scene"], "scene", False),
    ([ROOM, "--prior", "sd"], "object", False),
])
def test_the_command_line_decides_the_mode(tmp_path, capsys, fake_generate, argv, mode, note):
    assert main([*argv, "--out", str(tmp_path / "x.ply")]) == 0
    assert [c.mode for c in fake_generate] == [mode]
    assert (SCENE_NOTE in capsys.readouterr().err) == note


def test_a_contradicting_mode_is_one_line_and_nothing_runs(tmp_path, capsys, fake_generate):
    assert main([ROOM, "--mode", "object", "--out", str(tmp_path / "x.ply")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --mode object contradicts") and "--mode scene" in lines[0]
    assert fake_generate == []


def test_short_help_lists_the_options_people_use(capsys):
    assert main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    assert main([CUBE, "-h"]) == 0 and capsys.readouterr().out == text  # the bare-prompt form too
    lines = text.strip().splitlines()
    assert lines[0] == "usage: steinsplat PROMPT [options]"
    assert 20 <= len(lines) <= 35 and max(map(len, lines)) <= 110
    assert "steinsplat generate --help-all" in lines[-1]
    assert "{None}" not in text and "densify" not in text and "STR" not in text
    fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
    flags = set(re.findall(r"^  (--[a-z-]+)", text, flags=re.M))
    assert {"--out", "--mesh", "--video", "--steps", "--seed", "--guidance", "--prior", "--config", "--mode",
            "--device", "--resume", "--viewer", "--quiet"} <= flags
    for flag in flags - {"--config", "--help"}:
        assert flag[2:].replace("-", "_") in fields, f"{flag} is no GenerateConfig field"
    for name in ("steps", "resolution", "views"):  # defaults read from the dataclass, printed once
        line = next(x for x in lines if x.startswith(f"  --{name} "))
        assert line.count("default") == 1 and f"(default: {fields[name].default})" in line
    assert "sd-object" in text and "fit-demo-quick" not in text  # generate's presets only


def test_help_all_is_tyros_full_help(capsys):
    assert main(["generate", "--help-all"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith("PROMPT")
    assert len(text.splitlines()) > 100
    for f in dataclasses.fields(GenerateConfig):
        if f.name != "prompt" and not dataclasses.is_dataclass(f.default_factory if f.default_factory
                                                               is not dataclasses.MISSING else None):
            assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert "--optim.densify" in text


# ---------------------------------------------------------------------------- batch
def test_batch_reports_every_bad_line_before_running_any(tmp_path, capsys, fake_generate):
    f = tmp_path / "p.txt"
    f.write_text(f"{CUBE}\na red corgi\n{CUBE} | --steps abc\na green cone | --mesh {tmp_path}/m.glb\n"
                 f"a blue cone | --mesh {tmp_path}/m.glb\n{CUBE} | --mode scene\na cube | --out x.ply\n{ROOM}\n")
    out = tmp_path / "r"
    assert main(["batch", str(f), "--out-dir", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: 5 lines of {f} cannot run") and "nothing was run" in lines[-1]
    bad = {int(m.group(1)): line for line in lines[:-1] if (m := re.match(rf"{re.escape(str(f))}:(\d+): ", line))}
    assert sorted(bad) == [2, 3, 5, 6, 7], lines
    assert "corgi" in bad[2] and "--steps" in bad[3] and "line 4's --mesh" in bad[5]
    assert "--mode object" in bad[6] and "--out-dir" in bad[7]
    assert fake_generate == [] and not out.exists()  # nothing ran, nothing was left behind


def test_a_good_batch_decides_each_lines_mode_and_writes_a_flat_summary(tmp_path, capsys, fake_generate):
    f = tmp_path / "p.txt"
    f.write_text(f"{CUBE}\n{ROOM}\n")
    out = tmp_path / "r"
    assert main(["batch", str(f), "--out-dir", str(out)]) == 0
    assert [c.mode for c in fake_generate] == ["object", "scene"]
    assert f"{f}:2: {SCENE_NOTE}" in capsys.readouterr().err
    jobs = json.loads((out / "summary.json").read_text())["jobs"]
    assert jobs[0]["outputs"] == {"splats": str(out / "a-red-cube" / "a-red-cube.ply")}  # not {"outputs": {...}}
    assert jobs[0]["metrics"] == {"mask_iou": 0.9}


def test_check_jobs_collects_every_problem_and_the_notes(tmp_path):
    from steinsplat.batch import BatchError, Job, check_jobs

    jobs = [Job(1, "a", [], "a"), Job(2, "b", [], "b"), Job(4, "c", [], "c"), Job(5, "d", [], "d")]

    def check(job, folder, say):
        folder.mkdir(parents=True)  # a check may create the folder; an empty one is removed again
        if job.prompt == "b":
            raise ValueError("b is bad\nsecond line not shown")
        if job.prompt == "c":
            say("a note")
        return {"--out": tmp_path / "same.ply"} if job.prompt in ("a", "d") else {}

    with pytest.raises(BatchError) as info:
        check_jobs(jobs, tmp_path / "r", check, "p.txt")
    first, *rest = str(info.value).splitlines()
    assert first.startswith("2 lines of p.txt cannot run")
    assert rest == ["p.txt:2: b is bad", f"p.txt:5: --out '{tmp_path / 'same.ply'}' is also line 1's --out: give each "
                    "line its own file"]
    assert not (tmp_path / "r").exists()
    notes = check_jobs(jobs[2:3], tmp_path / "r", check, "p.txt")
    assert notes == ["p.txt:4: a note"] and not (tmp_path / "r" / "c").exists()
