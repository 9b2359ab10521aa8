"""The fault corpus: bad inputs a demanding user gives the command line, each of which must end in
one clear line (`error: ...` last on stderr), exit code 2, no traceback, no hang, and no silent
acceptance; plus the faults (signals, kill -9, cut checkpoints) a run must survive.

Each bad input is refused before any model is loaded, so the corpus runs in process and fast; a
per-case alarm turns a hang into a failure. The signal tests run the real console script in a
subprocess and compare bytes with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from steinsplat.cli import main
from steinsplat.export import write_ply
from steinsplat.gaussians import Gaussians

CUBE = "a red cube"
ROOM = "a room with blue walls and a gray floor"


# ---------------------------------------------------------------------------- the files the cases use
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    f = {"d": d}
    write_ply(d / "ok.ply", Gaussians.random_ball(30, generator=torch.Generator().manual_seed(0)))
    nan = d / "nan.ply"  # a well-formed PLY whose every value is NaN
    text = (d / "ok.ply").read_bytes()
    header, _, body = text.partition(b"end_header\n")
    rows = np.frombuffer(body, dtype="<f4").copy()
    rows[:] = np.nan
    nan.write_bytes(header + b"end_header\n" + rows.tobytes())
    (d / "empty.ply").write_bytes(b"")
    (d / "garbage.ply").write_bytes(b"not a ply at all\n" * 10)
    (d / "huge-count.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 999999999999\n"
                                       b"property float x\nend_header\n" + b"\0" * 12)
    (d / "truncated.ply").write_bytes(text[: len(text) // 2])
    (d / "bad.splat").write_bytes(b"\0" * 33)
    (d / "garbage.spz").write_bytes(b"\x1f\x8b not really gzip" * 4)
    assert main(["export", str(d / "ok.ply"), "--to", str(d / "ok.spz")]) == 0
    spz = (d / "ok.spz").read_bytes()
    (d / "truncated.spz").write_bytes(spz[: len(spz) // 2])
    (d / "folder.ply").mkdir()
    (d / "folder.glb").mkdir()
    (d / "folder.gif").mkdir()
    (d / "a-file").write_text("x")
    (d / "not-a-checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    (d / "empty-run").mkdir()
    (d / "prompts-empty.txt").write_text("\n# only a comment\n\n")
    (d / "prompts-options-only.txt").write_text("| --seed 3\n")
    (d / "prompts-quote.txt").write_text("a red cube | --negative 'unclosed\n")
    (d / "prompts-latin1.txt").write_bytes("a red cube caf\xe9\n".encode("latin-1"))
    (d / "prompts-ok.txt").write_text("a red cube\n")
    (d / "prompts-bad-second.txt").write_text("a red cube\na red corgi\n")
    presets = {
        "steps-abc": "steps: abc\n", "steps-float": "steps: 2.5\n", "steps-bool": "steps: true\n",
        "lr-fast": "optim: {lr_means: fast}\n", "optim-5": "optim: 5\n", "guidance-xyz": "guidance: xyz\n",
        "out-12": "out: 12\n", "views-null": "views: null\n", "unknown-key": "stepz: 3\n", "list": "- 1\n- 2\n",
        "bad-yaml": "steps: [\n", "seed-big": "seed: 1.0e+30\n", "densify-str": "optim: {densify: fast}\n",
        "mode-room": "mode: room\n", "prompt-int": "prompt: 5\n",
    }
    for name, body in presets.items():
        (d / f"{name}.yaml").write_text(body)
    (d / "latin1.yaml").write_bytes("negative: caf\xe9\n".encode("latin-1"))
    return f


def _ssd_checkpoint(d: Path) -> Path:
    """A real checkpoint of the default (SSD) ShapeWorld run: 2 steps, tiny."""
    out = d / "ssd-run" / "c.ply"
    assert main([CUBE, "--out", str(out), "--steps", "2", "--resolution", "16", "--views", "1",
                 "--init-gaussians", "40", "--checkpoint-every", "1", "--preview-every", "0", "--quiet"]) == 0
    ckpts = sorted((out.parent / "checkpoints").glob("step_*.safetensors"))
    assert ckpts, "the run left no checkpoint"
    return ckpts[0]


@pytest.fixture(scope="module")
def ssd_ckpt(files, one_intra_op_thread):
    return _ssd_checkpoint(files["d"])


def _gen(*extra, out="{d}/o/x.ply"):
    return [CUBE, "--out", out, "--quiet", *extra]


# (id, argv with {d} for the fixture folder, a word the error must contain (or None))
GENERATE_CASES = [
    # prompts
    ("prompt-empty", ["", "--out", "{d}/o/x.ply"], "prompt"),
    ("prompt-blank", ["   ", "--out", "{d}/o/x.ply"], "prompt"),
    ("prompt-unknown-word", ["a red corgi", "--out", "{d}/o/x.ply"], "corgi"),
    ("prompt-open-vocabulary", ["a corgi in a spacesuit", "--prior", "shapeworld", "--out", "{d}/o/x.ply"], "--prior sd"),
    ("prompt-word-order", ["cube red a", "--out", "{d}/o/x.ply"], "grammar"),
    ("prompt-colour-only", ["a red", "--out", "{d}/o/x.ply"], "grammar"),
    ("prompt-room-typo", ["a room with blue wals and a gray floor", "--out", "{d}/o/x.ply"], "wals"),
    ("prompt-two-objects", ["a red cube and a blue sphere", "--out", "{d}/o/x.ply"], "and"),
    ("prompt-digits", ["a 3 cube", "--out", "{d}/o/x.ply"], "'3'"),
    ("prompt-10k", ["x" * 10_000, "--out", "{d}/o/x.ply"], "10,000 characters"),
    ("prompt-10k-words", [" ".join(["zz"] * 3000), "--out", "{d}/o/x.ply"], "characters"),
    ("prompt-missing", ["--out", "{d}/o/x.ply"], None),
    # a mode the ShapeWorld prompt contradicts (refused, not run as the other kind)
    ("mode-scene-for-an-object", _gen("--mode", "scene"), "--mode object"),
    ("mode-object-for-a-room", [ROOM, "--mode", "object", "--out", "{d}/o/x.ply"], "--mode scene"),
    ("preset-scene-for-an-object", _gen("--config", "scene"), "--mode object"),
    # numbers
    ("steps-0", _gen("--steps", "0"), "--steps"),
    ("steps-negative", _gen("--steps", "-3"), "--steps"),
    ("steps-text", _gen("--steps", "abc"), "--steps"),
    ("steps-float", _gen("--steps", "2.5"), "--steps"),
    ("steps-missing-value", _gen("--steps"), "--steps"),
    ("views-0", _gen("--views", "0"), "--views"),
    ("views-negative", _gen("--views", "-2"), "--views"),
    ("views-text", _gen("--views", "four"), "--views"),
    ("resolution-4", _gen("--resolution", "4"), "--resolution"),
    ("resolution-0", _gen("--resolution", "0"), "--resolution"),
    ("resolution-negative", _gen("--resolution", "-64"), "--resolution"),
    ("resolution-huge", _gen("--resolution", "100000"), "GiB"),
    ("resolution-text", _gen("--resolution", "hd"), "--resolution"),
    ("init-0", _gen("--init-gaussians", "0"), "--init-gaussians"),
    ("init-negative", _gen("--init-gaussians", "-5"), "--init-gaussians"),
    ("init-huge", _gen("--init-gaussians", "100000000"), "GiB"),
    ("seed-negative", _gen("--seed", "-1"), "--seed"),
    ("seed-huge", _gen("--seed", "99999999999999999999999"), "--seed"),
    ("seed-2^64", _gen("--seed", str(2**64)), "--seed"),
    ("seed-text", _gen("--seed", "lucky"), "--seed"),
    ("guidance-scale-nan", _gen("--guidance-scale", "nan"), "--guidance-scale"),
    ("guidance-scale-inf", _gen("--guidance-scale", "inf"), "--guidance-scale"),
    ("guidance-scale-negative", _gen("--guidance-scale", "-1"), "--guidance-scale"),
    ("guidance-scale-text", _gen("--guidance-scale", "strong"), "--guidance-scale"),
    ("perp-neg-negative", _gen("--perp-neg", "-1"), "--perp-neg"),
    ("perp-neg-nan", _gen("--perp-neg", "nan"), "--perp-neg"),
    ("checkpoint-every-negative", _gen("--checkpoint-every", "-1"), "--checkpoint-every"),
    ("preview-every-negative", _gen("--preview-every", "-1"), "--preview-every"),
    ("lr-text", _gen("--optim.lr-means", "fast"), "lr"),
    # choices
    ("guidance-xyz", _gen("--guidance", "xyz"), "--guidance"),
    ("prior-foo", _gen("--prior", "foo"), "--prior"),
    ("mode-room", _gen("--mode", "room"), "--mode"),
    ("estimator-foo", _gen("--estimator", "foo"), "--estimator"),
    ("baseline-foo", _gen("--baseline", "foo"), "--baseline"),
    ("ssd-noise-foo", _gen("--ssd-noise", "foo"), "--ssd-noise"),
    ("mesh-method-foo", _gen("--mesh-method", "foo"), "--mesh-method"),
    ("unknown-option", _gen("--nope", "3"), "--nope"),
    ("unknown-flag", _gen("--fast"), "--fast"),
    # devices
    ("device-foo", _gen("--device", "foo"), "--device"),
    ("device-tpu", _gen("--device", "tpu"), "--device"),
    ("device-empty", _gen("--device", ""), "--device"),
    ("device-cuda-missing", _gen("--device", "cuda"), "CUDA"),
    ("device-cuda-7", _gen("--device", "cuda:7"), "CUDA"),
    ("device-meta", _gen("--device", "meta"), "--device"),
    # output paths
    ("out-obj", [CUBE, "--out", "{d}/o/x.obj"], ".ply"),
    ("out-no-suffix", [CUBE, "--out", "{d}/o/x"], ".ply"),
    ("out-folder", [CUBE, "--out", "{d}/folder.ply"], "folder"),
    ("out-under-a-file", [CUBE, "--out", "{d}/a-file/x.ply"], "a-file"),
    ("out-unwritable", [CUBE, "--out", "/proc/steinsplat/x.ply"], "/proc"),
    ("mesh-stl", _gen("--mesh", "{d}/o/m.stl"), "--mesh"),
    ("mesh-folder", _gen("--mesh", "{d}/folder.glb"), "folder"),
    ("video-avi", _gen("--video", "{d}/o/v.avi"), "--video"),
    ("video-folder", _gen("--video", "{d}/folder.gif"), "folder"),
    # resume
    ("resume-nothing", _gen("--resume", "{d}/no-such-run"), "no such checkpoint"),
    ("resume-empty-folder", _gen("--resume", "{d}/empty-run"), "no checkpoint"),
    ("resume-a-ply", _gen("--resume", "{d}/ok.ply"), "checkpoint"),
    ("resume-not-a-checkpoint", _gen("--resume", "{d}/not-a-checkpoint.safetensors"), "checkpoint"),
    ("resume-empty-file", _gen("--resume", "{d}/empty.ply"), "checkpoint"),
    # presets
    ("preset-missing", _gen("--config", "no-such-preset"), "no-such-preset"),
    ("preset-no-value", [CUBE, "--config"], "--config"),
    ("preset-steps-abc", _gen("--config", "{d}/steps-abc.yaml"), "steps"),
    ("preset-steps-float", _gen("--config", "{d}/steps-float.yaml"), "steps"),
    ("preset-steps-bool", _gen("--config", "{d}/steps-bool.yaml"), "steps"),
    ("preset-lr-fast", _gen("--config", "{d}/lr-fast.yaml"), "lr_means"),
    ("preset-optim-5", _gen("--config", "{d}/optim-5.yaml"), "optim"),
    ("preset-guidance-xyz", _gen("--config", "{d}/guidance-xyz.yaml"), "guidance"),
    ("preset-out-12", [CUBE, "--config", "{d}/out-12.yaml"], "out"),
    ("preset-views-null", _gen("--config", "{d}/views-null.yaml"), "views"),
    ("preset-unknown-key", _gen("--config", "{d}/unknown-key.yaml"), "stepz"),
    ("preset-list", _gen("--config", "{d}/list.yaml"), "mapping"),
    ("preset-bad-yaml", _gen("--config", "{d}/bad-yaml.yaml"), "YAML"),
    ("preset-seed-float", _gen("--config", "{d}/seed-big.yaml"), "seed"),
    ("preset-densify-str", _gen("--config", "{d}/densify-str.yaml"), "densify"),
    ("preset-mode-room", _gen("--config", "{d}/mode-room.yaml"), "mode"),
    ("preset-prompt-int", ["--config", "{d}/prompt-int.yaml", "--out", "{d}/o/x.ply"], "prompt"),
    ("preset-latin1", _gen("--config", "{d}/latin1.yaml"), "latin1.yaml"),
    # models that are not there (refused without loading anything, and without the network)
    ("sd-missing-folder", [CUBE, "--prior", "sd", "--model", "{d}/no-such-model", "--out", "{d}/o/x.ply"], "no-such-model"),
    ("sd-not-cached", [CUBE, "--prior", "sd", "--model", "someone/not-cached-model", "--out", "{d}/o/x.ply"], "--allow-download"),
    ("sd-bad-id", [CUBE, "--prior", "sd", "--model", "not a/valid id!", "--out", "{d}/o/x.ply"], None),
    ("shapeworld-model-missing", _gen("--model", "{d}/no-such-prior"), "no-such-prior"),
]

FILE_CASES = [
    ("export-missing-input", ["export", "{d}/nothing.ply", "--to", "{d}/o/x.splat"], "nothing.ply"),
    ("export-empty", ["export", "{d}/empty.ply", "--to", "{d}/o/x.splat"], "empty.ply"),
    ("export-garbage", ["export", "{d}/garbage.ply", "--to", "{d}/o/x.splat"], "garbage.ply"),
    ("export-huge-count", ["export", "{d}/huge-count.ply", "--to", "{d}/o/x.splat"], "huge-count.ply"),
    ("export-truncated", ["export", "{d}/truncated.ply", "--to", "{d}/o/x.splat"], "truncated.ply"),
    ("export-bad-splat", ["export", "{d}/bad.splat", "--to", "{d}/o/x.ply"], "bad.splat"),
    ("export-nan-to-ply", ["export", "{d}/nan.ply", "--to", "{d}/o/n.ply"], None),
    ("export-nan-to-splat", ["export", "{d}/nan.ply", "--to", "{d}/o/n.splat"], None),
    ("export-nan-to-viser", ["export", "{d}/nan.ply", "--to", "{d}/o/n.viser"], "finite"),
    ("export-nan-to-html", ["export", "{d}/nan.ply", "--html", "{d}/o/nan-html"], "finite"),
    ("export-garbage-spz", ["export", "{d}/garbage.spz", "--to", "{d}/o/x.ply"], "garbage.spz"),
    ("info-truncated-spz", ["info", "{d}/truncated.spz"], "truncated.spz"),
    ("view-garbage-spz", ["view", "{d}/garbage.spz", "--port", "0"], "garbage.spz"),
    ("export-unknown-ext", ["export", "{d}/ok.ply", "--to", "{d}/o/x.obj"], ".splat"),
    ("export-to-folder", ["export", "{d}/ok.ply", "--to", "{d}/folder.ply"], "folder"),
    ("export-nowhere", ["export", "{d}/ok.ply"], "--to"),
    ("export-sh-5", ["export", "{d}/ok.ply", "--to", "{d}/o/x.ply", "--sh-degree", "5"], "degree"),
    ("export-sh-negative", ["export", "{d}/ok.ply", "--to", "{d}/o/x.ply", "--sh-degree", "-1"], "degree"),
    ("export-sh-splat", ["export", "{d}/ok.ply", "--to", "{d}/o/x.splat", "--sh-degree", "3"], "--sh-degree"),
    ("export-html-is-file", ["export", "{d}/ok.ply", "--html", "{d}/a-file"], "a-file"),
    ("export-input-folder", ["export", "{d}/folder.ply", "--to", "{d}/o/x.splat"], "folder.ply"),
    ("info-missing", ["info", "{d}/nothing.ply"], "nothing.ply"),
    ("info-garbage", ["info", "{d}/garbage.ply"], "garbage.ply"),
    ("info-folder", ["info", "{d}/folder.ply"], "folder.ply"),
    ("info-unknown-ext", ["info", "{d}/a-file"], "a-file"),
    ("info-huge-count", ["info", "{d}/huge-count.ply"], "huge-count.ply"),
    ("view-missing", ["view", "{d}/nothing.ply"], "nothing.ply"),
    ("view-garbage", ["view", "{d}/garbage.ply", "--port", "0"], "garbage.ply"),
    ("view-nan", ["view", "{d}/nan.ply", "--port", "0"], "finite"),
    ("view-port-70000", ["view", "{d}/ok.ply", "--port", "70000"], "--port"),
    ("view-port-negative", ["view", "{d}/ok.ply", "--port", "-1"], "--port"),
    ("view-port-text", ["view", "{d}/ok.ply", "--port", "http"], "--port"),
    ("view-host-elsewhere", ["view", "{d}/ok.ply", "--host", "8.8.8.8", "--port", "0"], "8.8.8.8"),
    ("view-host-nonsense", ["view", "{d}/ok.ply", "--host", "not a host!!", "--port", "0"], "--host"),
    ("view-host-empty-label", ["view", "{d}/ok.ply", "--host", "a..b", "--port", "0"], "--host"),
]

BATCH_CASES = [
    ("batch-missing-file", ["batch", "{d}/no-prompts.txt"], "no-prompts.txt"),
    ("batch-only-comments", ["batch", "{d}/prompts-empty.txt"], "no prompt"),
    ("batch-options-only", ["batch", "{d}/prompts-options-only.txt"], "without a prompt"),
    ("batch-unclosed-quote", ["batch", "{d}/prompts-quote.txt"], "quotation"),
    ("batch-not-utf8", ["batch", "{d}/prompts-latin1.txt"], "UTF-8"),
    ("batch-folder", ["batch", "{d}/empty-run"], "empty-run"),
    ("batch-bad-shared-option", ["batch", "{d}/prompts-ok.txt", "--steps", "abc"], "--steps"),
    ("batch-unknown-shared-option", ["batch", "{d}/prompts-ok.txt", "--nope"], "--nope"),
    ("batch-out", ["batch", "{d}/prompts-ok.txt", "--out", "{d}/o/x.ply"], "--out-dir"),
    ("batch-resume", ["batch", "{d}/prompts-ok.txt", "--resume", "{d}/empty-run"], "--resume"),
    ("batch-viewer", ["batch", "{d}/prompts-ok.txt", "--viewer"], "--viewer"),
    ("batch-no-file", ["batch"], None),
    ("batch-bad-second-line", ["batch", "{d}/prompts-bad-second.txt", "--out-dir", "{d}/o/b"], "prompts-bad-second.txt:2"),
]

OTHER_CASES = [
    ("top-unknown-option", ["--frobnicate"], "--frobnicate"),
    ("top-unknown-short", ["-x"], "-x"),
    ("fit-demo-steps-0", ["fit-demo", "--steps", "0", "--out", "{d}/o/fd"], "--steps"),
    ("fit-demo-resolution-2", ["fit-demo", "--resolution", "2", "--out", "{d}/o/fd"], "--resolution"),
    ("fit-demo-bad-preset", ["fit-demo", "--config", "nope"], "nope"),
    ("fit-demo-unknown", ["fit-demo", "--nope"], "--nope"),
    ("shapeworld-no-action", ["shapeworld"], "render"),
    ("shapeworld-bad-action", ["shapeworld", "draw", CUBE], "render"),
    ("shapeworld-bad-prompt", ["shapeworld", "render", "a corgi", "--out", "{d}/o/g.png"], "corgi"),
    ("shapeworld-resolution-2", ["shapeworld", "render", CUBE, "--resolution", "2", "--out", "{d}/o/g.png"], "--resolution"),
    ("shapeworld-sample-steps-0", ["shapeworld", "sample", CUBE, "--steps", "0", "--out", "{d}/o/s.png"], "--steps"),
    ("shapeworld-sample-num-0", ["shapeworld", "sample", CUBE, "--num", "0", "--out", "{d}/o/s.png"], "--num"),
    ("bench-steps-negative", ["bench", "--steps", "-1", "--out", "{d}/o/bench"], "--steps"),
    ("bench-eval-every-0", ["bench", "--eval-every", "0", "--out", "{d}/o/bench"], "--eval-every"),
    ("bench-unknown-method", ["bench", "--methods", "sds", "magic", "--out", "{d}/o/bench"], "magic"),
    ("bench-no-sds", ["bench", "--methods", "vsd", "--out", "{d}/o/bench"], "sds"),
    ("bench-bad-prompt", ["bench", "--prompts", "a corgi", "--out", "{d}/o/bench"], "corgi"),
    ("bench-draws-1", ["bench", "--draws", "1", "--out", "{d}/o/bench"], "--draws"),
    ("bench-points-out-of-range", ["bench", "--points", "0.5", "1.5", "--out", "{d}/o/bench"], "--points"),
    ("bench-no-seeds", ["bench", "--seeds", "--out", "{d}/o/bench"], None),
    ("bench-cameras-bad", ["bench", "--cameras", "sideways", "--out", "{d}/o/bench"], "--cameras"),
]

# resume of a real SSD checkpoint with options that would silently drop or mix its state
RESUME_MISMATCH = [
    ("resume-other-noise", ["--ssd-noise", "constant"], "--ssd-noise"),
    ("resume-other-guidance", ["--guidance", "sds"], "--guidance"),
    ("resume-other-prompt", ["--prompt-override"], "prompt"),
    ("resume-other-views", ["--views", "2"], "--views"),
    ("resume-other-resolution", ["--resolution", "24"], "--resolution"),
]

ALL_CASES = GENERATE_CASES + FILE_CASES + BATCH_CASES + OTHER_CASES


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_bad(argv: list[str], capsys, seconds: int = 60) -> tuple[int, str]:
    """main(argv) under an alarm; returns (exit code, stderr). SystemExit counts as its code."""
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        try:
            code = main(argv)
        except SystemExit as exc:  # tyro's own exits must not leak out of main
            code = f"SystemExit({exc.code}) escaped main"
        except _Hang:
            pytest.fail(f"hung for {seconds} s: {argv[:6]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, capsys.readouterr().err


def assert_one_clear_line(code, err: str, word) -> None:
    assert "Traceback" not in err, err[-2000:]
    assert code == 2, f"exit {code!r} (silently accepted?): {err[-600:]}"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines, "no message at all"
    last = lines[-1]
    assert last.startswith("error:"), f"the last line is not the error: {last!r}"
    assert len(last) < 800, f"the error line is {len(last)} characters long"  # a 10,000-character prompt is not echoed whole
    if word is not None:
        assert word.lower() in last.lower() or word.lower() in err.lower(), f"{word!r} not in {last!r}"


def test_the_corpus_is_big_enough():
    names = [c[0] for c in ALL_CASES + RESUME_MISMATCH] + [f.__name__ for f in FAULT_TESTS]
    assert len(names) == len(set(names)), "case ids must be unique"
    assert len(names) >= 150, len(names)


@pytest.mark.parametrize("case", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_bad_input_ends_in_one_line(case, files, capsys, monkeypatch):
    name, argv, word = case
    monkeypatch.chdir(files["d"])  # relative defaults (outputs/, results/) land in the fixture folder
    argv = [a.replace("{d}", str(files["d"])) for a in argv]
    code, err = run_bad(argv, capsys)
    assert_one_clear_line(code, err, word)
    if name.startswith(("export-nan", "export-empty", "export-garbage")):
        assert not list((files["d"] / "o").glob("n.*")) and not (files["d"] / "o" / "nan-html").exists()


@pytest.mark.parametrize("case", RESUME_MISMATCH, ids=[c[0] for c in RESUME_MISMATCH])
def test_resume_with_other_options_is_refused(case, ssd_ckpt, files, capsys):
    name, extra, word = case
    prompt = ROOM if extra == ["--prompt-override"] else CUBE
    extra = [] if extra == ["--prompt-override"] else extra
    out = files["d"] / "resumed" / name / "c.ply"
    t0 = time.perf_counter()
    code, err = run_bad([prompt, "--out", str(out), "--resolution", "16", "--views", "1", "--quiet",
                         *extra, "--resume", str(ssd_ckpt)], capsys)
    assert_one_clear_line(code, err, word)
    assert "same options" in err
    assert time.perf_counter() - t0 < 10  # refused before any model loads


def test_resume_with_the_same_options_and_more_steps_goes_on(ssd_ckpt, files, capsys):
    out = files["d"] / "resumed" / "more" / "c.ply"
    assert main([CUBE, "--out", str(out), "--resolution", "16", "--views", "1", "--init-gaussians", "40", "--steps", "3",
                 "--quiet", "--preview-every", "0", "--resume", str(ssd_ckpt)]) == 0
    assert json.loads((out.parent / "run.json").read_text())["steps"] == 3


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(ssd_ckpt, files, capsys):
    """A kill in the middle of writing cannot happen to the new format (one file, renamed into
    place), but a copy cut short can: the newest intact checkpoint of the folder is used, with a note."""
    import shutil

    run = files["d"] / "cut-run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ssd_ckpt, run / "checkpoints" / "step_000001.safetensors")
    data = ssd_ckpt.read_bytes()
    (run / "checkpoints" / "step_000002.safetensors").write_bytes(data[: len(data) // 2])
    from steinsplat.pipeline import find_checkpoint

    notes = []
    assert find_checkpoint(run, say=notes.append).name == "step_000001.safetensors"
    assert notes and "step_000002" in notes[0]
    code, err = run_bad([CUBE, "--out", str(files["d"] / "o" / "y.ply"), "--resume",
                         str(run / "checkpoints" / "step_000002.safetensors")], capsys)
    assert_one_clear_line(code, err, "checkpoint")


def test_every_step_skipped_is_an_error_not_a_result(files, capsys, monkeypatch, one_intra_op_thread):
    """A run whose every step had non-finite gradients fails loudly instead of writing its init."""
    from steinsplat import trainer as train

    def nan_step(self):  # what Trainer.step does when the guidance's gradient is not finite

        self.state.skipped += 1
        self.state.step += 1
        return None

    monkeypatch.setattr(train.Trainer, "step", nan_step)
    out = files["d"] / "skipped" / "c.ply"
    code, err = run_bad([CUBE, "--out", str(out), "--steps", "3", "--resolution", "16", "--views", "1",
                         "--init-gaussians", "40", "--quiet", "--preview-every", "0"], capsys)
    assert_one_clear_line(code, err, "skipped")
    assert not out.exists()


# ---------------------------------------------------------------------------- faults (real processes)
RUN = [CUBE, "--steps", "24", "--resolution", "16", "--views", "1", "--init-gaussians", "60", "--seed", "3",
       "--checkpoint-every", "6", "--preview-every", "0", "--quiet", "--optim.densify.start", "6",
       "--optim.densify.interval", "6"]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEINSPLAT_COMPILE": "0"}
    return subprocess.Popen([sys.executable, "-m", "steinsplat.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run (densifying, so gsplat's random split is exercised), twice in two processes."""
    d = tmp_path_factory.mktemp("reference")
    outs = [d / "a" / "c.ply", d / "b" / "c.ply"]
    procs = [_cli(RUN + ["--out", str(o)]) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    return outs


def test_same_seed_same_bytes_across_processes(reference_run):
    a, b = reference_run
    assert a.read_bytes() == b.read_bytes()
    assert json.loads((a.parent / "run.json").read_text())["gaussians"] > 60  # it did densify


def _interrupt_then_resume(tmp_path: Path, sig: int, reference: Path, seed: int) -> None:
    out = tmp_path / "run" / "c.ply"
    p = _cli(RUN + ["--out", str(out)])
    first = out.parent / "checkpoints" / "step_000006.safetensors"
    deadline = time.time() + 300
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted"
    time.sleep(random.Random(seed).uniform(0.0, 0.6))  # a random point of the run, between or inside steps
    p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    if p.returncode == 0:  # the run was faster than the random delay: nothing to test this time
        pytest.skip("the run finished before the signal")
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    # the splat file exists only if the signal came after the last step, during the exports
    assert not out.exists() or "step_000024" in err
    r = _cli(RUN + ["--out", str(out), "--resume", str(out.parent)])
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err[-2000:]
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_sigint_at_a_random_point_then_resume_gives_the_same_bytes(tmp_path, reference_run):
    _interrupt_then_resume(tmp_path, signal.SIGINT, reference_run[0], seed=1)


@pytest.mark.slow
def test_sigterm_at_a_random_point_then_resume_gives_the_same_bytes(tmp_path, reference_run):
    _interrupt_then_resume(tmp_path, signal.SIGTERM, reference_run[0], seed=2)


@pytest.mark.slow
def test_kill_9_then_resume_from_the_last_periodic_checkpoint(tmp_path, reference_run):
    out = tmp_path / "run" / "c.ply"
    p = _cli(RUN + ["--out", str(out)])
    second = out.parent / "checkpoints" / "step_000012.safetensors"
    while not second.exists() and p.poll() is None:
        time.sleep(0.05)
    p.kill()
    p.communicate(timeout=60)
    r = _cli(RUN + ["--out", str(out), "--resume", str(out.parent)])
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err[-2000:]
    assert out.read_bytes() == reference_run[0].read_bytes()


@pytest.mark.slow
def test_ctrl_c_stops_a_batch_and_a_rerun_resumes_the_interrupted_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"\ufeff{CUBE}\na blue sphere\n")  # with a byte-order mark, as Windows editors write
    opts = ["--steps", "16", "--resolution", "16", "--views", "1", "--init-gaussians", "40", "--checkpoint-every", "4",
            "--preview-every", "0"]
    out = tmp_path / "results"
    p = _cli(["batch", str(prompts), "--out-dir", str(out), *opts])
    first = out / "a-red-cube" / "checkpoints" / "step_000004.safetensors"
    while not first.exists() and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    rec = json.loads((out / "a-red-cube" / "run.json").read_text())
    assert rec["status"] == "interrupted" and rec["checkpoint"]
    assert not (out / "a-blue-sphere").exists()  # the batch stopped
    step_saved = int(Path(rec["checkpoint"]).stem.split("_")[1])
    r = _cli(["batch", str(prompts), "--out-dir", str(out), *opts])
    _, err = r.communicate(timeout=900)
    assert r.returncode == 0, err[-2000:]
    cube = json.loads((out / "a-red-cube" / "run.json").read_text())
    assert cube["status"] == "ok" and cube["config"]["resume"] is not None  # resumed, not restarted
    assert step_saved > 0
    assert json.loads((out / "a-blue-sphere" / "run.json").read_text())["status"] == "ok"
    ref = tmp_path / "ref" / "c.ply"  # the resumed prompt ends as if never interrupted
    q = _cli([CUBE, "--out", str(ref), *opts, "--quiet"])
    _, err = q.communicate(timeout=600)
    assert q.returncode == 0, err[-2000:]
    assert (out / "a-red-cube" / "a-red-cube.ply").read_bytes() == ref.read_bytes()


def test_no_socket_is_opened_without_allow_download(tmp_path, monkeypatch, capsys):
    """--prior sd / the depth estimator with a hub id: nothing touches the network unless --allow-download."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from steinsplat.geometry.transformers_depth import TransformersDepthEstimator
    from steinsplat.priors.base import ModelUnavailableError
    from steinsplat.priors.stable_diffusion import StableDiffusionPrior

    with pytest.raises(ModelUnavailableError, match="--allow-download"):
        StableDiffusionPrior.from_pretrained("someone/not-cached-model", device="cpu")
    with pytest.raises(ModelUnavailableError, match="--allow-download"):
        TransformersDepthEstimator.from_pretrained("someone/not-cached-depth", device="cpu")
    assert attempts == []
    assert "HF_HUB_OFFLINE" not in os.environ  # the offline switch is put back


FAULT_TESTS = [
    test_resume_with_the_same_options_and_more_steps_goes_on,
    test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one,
    test_every_step_skipped_is_an_error_not_a_result,
    test_same_seed_same_bytes_across_processes,
    test_sigint_at_a_random_point_then_resume_gives_the_same_bytes,
    test_sigterm_at_a_random_point_then_resume_gives_the_same_bytes,
    test_kill_9_then_resume_from_the_last_periodic_checkpoint,
    test_ctrl_c_stops_a_batch_and_a_rerun_resumes_the_interrupted_prompt,
    test_no_socket_is_opened_without_allow_download,
]
