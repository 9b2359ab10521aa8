"""Batch mechanics: prompt-file parsing, unique safe names, resume, failure isolation, summary."""

from __future__ import annotations

import json

import pytest
import torch

from steinsplat.batch import (BatchError, Job, parse_prompt_file, run_batch, slugify)
from steinsplat.export import read_ply, write_ply
from steinsplat.gaussians import Gaussians

CALLS: list[str] = []


def fake_generate(job: Job, folder):
    """Writes a small PLY seeded by --seed; the prompt "explode" raises, like a prior that cannot serve it."""
    CALLS.append(job.name)
    if job.prompt == "explode":
        raise ValueError("this prior cannot serve 'explode'")
    seed = int(job.options[job.options.index("--seed") + 1]) if "--seed" in job.options else 0
    g = Gaussians.random_ball(10, generator=torch.Generator().manual_seed(seed))
    write_ply(folder / "out.ply", g)
    return {"ply": str(folder / "out.ply"), "n": len(g)}


def test_parse_and_names(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# a comment\n\na red cube\n  a red cube  \na red cube | --seed 3\nA Red/Cube?? | --seed=3\n"
                 "Ünïcödé prompt: ok\n")
    jobs = parse_prompt_file(f)
    assert [j.line for j in jobs] == [3, 4, 5, 6, 7]
    assert [j.name for j in jobs] == ["a-red-cube", "a-red-cube-2", "a-red-cube-seed3", "a-red-cube-seed3-2",
                                      "unicode-prompt-ok"]
    assert jobs[2].options == ["--seed", "3"]
    assert slugify("../../etc/passwd") == "etc-passwd" and slugify("???") == "prompt"


def test_bad_prompt_files(tmp_path):
    with pytest.raises(BatchError, match="does not exist"):
        parse_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only comments\n\n")
    with pytest.raises(BatchError, match="holds no prompt"):
        parse_prompt_file(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_text("| --seed 3\n")
    with pytest.raises(BatchError, match=":1: options without a prompt"):
        parse_prompt_file(tmp_path / "bad.txt")
    (tmp_path / "quote.txt").write_text('a red cube | --negative "unclosed\n')
    with pytest.raises(BatchError, match="cannot split"):
        parse_prompt_file(tmp_path / "quote.txt")


def test_batch_isolates_failures_and_resumes(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a red cube\nexplode\na blue sphere | --seed 5\n")
    out = tmp_path / "results"
    CALLS.clear()
    res = run_batch(parse_prompt_file(f), out, fake_generate)
    assert [r.status for r in res] == ["ok", "failed", "ok"]
    assert "cannot serve" in res[1].error
    assert len(read_ply(out / "a-blue-sphere-seed5" / "out.ply")) == 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 2, "failed": 1, "skipped": 0}
    assert json.loads((out / "explode" / "run.json").read_text())["status"] == "failed"
    assert "Traceback" in (out / "explode" / "error.txt").read_text()
    # re-run: finished prompts are skipped, the failed one is tried again
    CALLS.clear()
    res2 = run_batch(parse_prompt_file(f), out, fake_generate)
    assert [r.status for r in res2] == ["skipped", "failed", "skipped"]
    assert CALLS == ["explode"]


def test_batch_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test`; pip install 'steinsplat[ray]'")
    import sys

    from steinsplat.batch import run_batch_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module

    f = tmp_path / "prompts.txt"
    f.write_text("a red cube\nexplode\na green cone | --seed 2\n")
    out = tmp_path / "ray-results"
    res = run_batch_ray(parse_prompt_file(f), out, fake_generate)
    assert [r.status for r in res] == ["ok", "failed", "ok"]
    assert len(read_ply(out / "a-green-cone-seed2" / "out.ply")) == 10
    assert json.loads((out / "summary.json").read_text())["counts"]["ok"] == 2
    res2 = run_batch_ray(parse_prompt_file(f), out, fake_generate)  # finished prompts are skipped
    assert [r.status for r in res2] == ["skipped", "failed", "skipped"]
