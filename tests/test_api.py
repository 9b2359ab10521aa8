"""The Python API: `from steinsplat import GenerateConfig, generate`, the README's snippet as written,
the run record against run.json, errors worded with GenerateConfig's fields (and the CLI's flags for
them), and the plain progress lines when the output is not a terminal."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from steinsplat.cli import as_flags, main
from steinsplat.export import read_ply

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = dict(prior="shapeworld", resolution=16, views=1, init_gaussians=40, checkpoint_every=0, preview_every=0)


def readme_snippet() -> str:
    """The first ```python block between the README's api markers."""
    text = README.read_text()
    section = text.split("<!-- api:start -->", 1)[1].split("<!-- api:end -->", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no ```python block in the README's API section"
    return m.group(1)


def test_import_is_cheap_and_the_names_load_on_use():
    code = ("import sys, steinsplat; assert 'torch' not in sys.modules, 'import steinsplat loaded torch'; "
            "from steinsplat import GenerateConfig, RunRecord, generate; import steinsplat.pipeline as p; "
            "assert generate is p.generate and callable(generate) and RunRecord is p.RunRecord; "
            "import steinsplat as s; assert s.generate is p.generate, 'the submodule shadows the function'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import steinsplat

        steinsplat.nope  # noqa: B018


def test_readme_snippet_runs_and_its_record_is_run_json(tmp_path, monkeypatch, capsys, one_intra_op_thread):
    from steinsplat import RunRecord

    snippet = readme_snippet()
    assert "steps=30" in snippet  # the small step count is the snippet's own
    monkeypatch.chdir(tmp_path)  # the snippet writes to a relative path
    ns: dict = {}
    exec(compile(snippet, "README.md", "exec"), ns)
    rec = ns["record"]
    assert isinstance(rec, RunRecord) and rec.status == "ok" and rec.steps == 30 and rec.prior == "shapeworld"
    assert rec.out == Path("cube/a-red-cube.ply") and rec.run_dir == Path("cube") and (tmp_path / rec.out).is_file()
    assert len(read_ply(tmp_path / rec.out)) == rec.gaussians > 0
    assert 0.0 < rec.metrics["mask_iou"] <= 1.0
    assert (rec.run_dir / "run.json").read_text() == rec.to_json()  # byte for byte
    saved = json.loads((rec.run_dir / "run.json").read_text())
    assert list(saved) == ["status", "prompt", "prior", "seed", "config", "versions", "device", "timings", "steps",
                           "skipped_steps", "gaussians", "densify", "outputs", "metrics", "final_loss", "not_written"]
    assert list(saved["timings"]) == ["load_s", "optimise_s", "export_s", "total_s", "metrics_s", "first_step_s",
                                      "export_parts_s"]
    parts = saved["timings"]["export_parts_s"]  # the snippet writes only the splat file
    assert list(parts) == list(rec.outputs) == ["splats"] and 0 < parts["splats"] <= saved["timings"]["export_s"]
    assert 0 < saved["timings"]["metrics_s"] < saved["timings"]["total_s"]
    assert saved["timings"]["first_step_s"] is None or saved["timings"]["first_step_s"] > saved["timings"]["load_s"]
    assert saved["config"]["out"] == "cube/a-red-cube.ply"  # a str path is taken as a Path, recorded as given
    assert str(rec.out) in capsys.readouterr().out  # the snippet's print


def test_errors_name_config_fields_and_the_cli_says_flags(tmp_path, capsys):
    from steinsplat import GenerateConfig, GenerationError, generate

    with pytest.raises(GenerationError, match=r"GenerateConfig\.steps, GenerateConfig\.views"):
        generate(GenerateConfig("a red cube", steps=0, out=tmp_path / "a.ply"))
    with pytest.raises(GenerationError, match=r"GenerateConfig\.checkpoint_every must be >= 0"):
        generate(GenerateConfig("a red cube", checkpoint_every=-1, out=tmp_path / "a.ply"))
    with pytest.raises(GenerationError, match=r"GenerateConfig\.out '.*a\.txt'"):
        generate(GenerateConfig("a red cube", out=tmp_path / "a.txt"))
    assert not list(tmp_path.iterdir())  # refused before anything was written
    assert main(["a red cube", "--steps", "0", "--out", str(tmp_path / "a.ply")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--steps, --views and --init-gaussians must be positive and --resolution at least 8" in err
    assert "GenerateConfig" not in err


def test_as_flags_maps_fields_and_values():
    assert as_flags("GenerateConfig.init_gaussians must be positive") == "--init-gaussians must be positive"
    assert as_flags('use GenerateConfig.device="cpu"; or GenerateConfig.guidance="sds".') == "use --device cpu; or --guidance sds."
    assert as_flags("give GenerateConfig.steps=60 or drop GenerateConfig.resume.") == "give --steps 60 or drop --resume."
    assert as_flags("GenerateConfig.optim.lr_means must be") == "--optim.lr-means must be"
    assert as_flags("no field here: --out stays") == "no field here: --out stays"


def run_with_console(tmp_path: Path, console: Console, **kw):
    from steinsplat import GenerateConfig, generate

    return generate(GenerateConfig("a red cube", steps=20, out=tmp_path / "r" / "c.ply", **{**TINY, **kw}),
                    console=console)


def test_progress_lines_when_the_output_is_not_a_terminal(tmp_path, one_intra_op_thread):
    buf = io.StringIO()
    rec = run_with_console(tmp_path, Console(file=buf, width=200))  # a file: not a terminal
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines] == [f"step {s}/20" for s in range(2, 21, 2)], buf.getvalue()
    m = re.fullmatch(r"step 20/20: loss (\S+), ([\d,]+) Gaussians, (\d+) s", lines[-1])
    assert m and float(m.group(1)) == pytest.approx(rec.final_loss, rel=1e-3)
    assert int(m.group(2).replace(",", "")) == rec.gaussians


@pytest.mark.parametrize("how", ["quiet", "terminal"])
def test_no_plain_progress_when_quiet_or_on_a_terminal(tmp_path, one_intra_op_thread, how):
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=how == "terminal")
    run_with_console(tmp_path, console, quiet=how == "quiet")
    assert not re.search(r"^step \d+/20:", buf.getvalue(), re.M), buf.getvalue()[-500:]
    assert ("20/20" in buf.getvalue()) == (how == "terminal")  # the bar's own count, on a terminal only
