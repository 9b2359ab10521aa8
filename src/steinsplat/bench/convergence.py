"""Convergence: full optimisations per (method, prompt, seed) with the ShapeWorld metrics logged
every `eval_every` steps, and what it takes each method to reach a quality threshold.

Wall time counts the optimisation only (the evaluations are timed and subtracted). Every run uses
generation's defaults (init, learning rates, densification) and differs only in the estimator.
Finished runs are stored (`save_run`) so that a long protocol can be resumed where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..gaussians import Gaussians
from ..pipeline import GenerateConfig, build_trainer
from ..shapeworld.metrics import evaluate
from ..shapeworld.vocab import RoomPrompt, parse_prompt
from ..trainer import Trainer
from .methods import build

METRICS = ("mask_iou", "psnr", "colour_error", "depth_error", "r_precision")
HIGHER_IS_BETTER = {"mask_iou": True, "psnr": True, "colour_error": False, "depth_error": False, "r_precision": True}


@dataclass
class CurvePoint:
    step: int
    seconds: float  # optimisation wall time up to this step (evaluations excluded)
    mask_iou: float
    psnr: float
    colour_error: float
    depth_error: float
    r_precision: Optional[float]


@dataclass
class Run:
    method: str
    prompt: str
    seed: int
    room: bool
    steps: int
    seconds: float  # optimisation wall time
    seconds_per_step: float  # median over steps
    skipped_steps: int
    gaussians: int
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def final(self) -> CurvePoint:
        return self.curve[-1]


def is_room(prompt: str) -> bool:
    return isinstance(parse_prompt(prompt), RoomPrompt)


def bench_config(prompt: str, seed: int, steps: int, views: int, resolution: int) -> GenerateConfig:
    """Generation's settings for `prompt` (its mode decided by the prompt: a ShapeWorld room is a scene),
    with the benchmark's seed, steps, views and resolution, on the schedule the benchmarks were built on
    (BENCH_SCHEDULE: base rates, constant, a random init, no colour averaging) whatever generation's
    default schedule: a bench's learning-rate multipliers are relative to those rates."""
    cfg = GenerateConfig(prompt=prompt, seed=seed, steps=steps, mode="scene" if is_room(prompt) else "object",
                         views=views, resolution=resolution, quiet=True, init_color="random")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **BENCH_SCHEDULE))


BENCH_SCHEDULE = dict(lr_mult=1.0, lr_final=1.0, colour_average=0.0)  # OptimConfig fields bench_config pins


def bench_trainer(method: str, prompt: str, seed: int, steps: int, prior, est, views: int, resolution: int,
                  edit_optim: Optional[Callable] = None) -> Trainer:
    """The Trainer generation builds for `prompt` with its defaults (initial Gaussians, base learning
    rates, densification; CPU), with `method`'s guidance; `edit_optim(OptimConfig) -> OptimConfig`
    may change the optimiser's settings (e.g. scale the learning rates)."""
    cfg = bench_config(prompt, seed, steps, views, resolution)
    return build_trainer(cfg, prior, build(method, prior, est, cfg.mode), torch.device("cpu"), edit_optim=edit_optim)


def run_one(method: str, prompt: str, seed: int, steps: int, eval_every: int, prior, est, views: int, resolution: int,
            snapshot_steps: tuple[int, ...] = ()) -> tuple[Run, dict[int, Gaussians]]:
    """One optimisation; returns the run and copies of the Gaussians at `snapshot_steps`."""
    trainer = bench_trainer(method, prompt, seed, steps, prior, est, views, resolution)
    run = Run(method, prompt, seed, is_room(prompt), steps, 0.0, 0.0, 0, 0)
    snaps: dict[int, Gaussians] = {}
    step_times: list[float] = []
    opt_seconds = 0.0

    def record(step: int) -> None:
        with torch.no_grad():
            m = evaluate(trainer.g, prompt, shape=False)  # the shape measures cost seconds per call
        run.curve.append(CurvePoint(step, opt_seconds, m.mask_iou, m.psnr, m.colour_error, m.depth_error, m.r_precision))

    record(0)
    while trainer.state.step < steps:
        t0 = time.perf_counter()
        trainer.step()
        dt = time.perf_counter() - t0
        step_times.append(dt)
        opt_seconds += dt
        s = trainer.state.step
        if s in snapshot_steps:
            snaps[s] = Gaussians.from_state_tensors({k: v.clone() for k, v in trainer.g.state_tensors().items()})
        if s % eval_every == 0 or s == steps:
            record(s)
    run.seconds = opt_seconds
    run.seconds_per_step = sorted(step_times)[len(step_times) // 2] if step_times else math.nan
    run.skipped_steps = trainer.state.skipped
    run.gaussians = len(trainer.g)
    return run, snaps


@functools.cache
def code_fingerprint() -> str:
    """Hash of steinsplat's own source files: a stored run is reused only by the code that made it."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


def run_key(method: str, prompt: str, seed: int, steps: int, eval_every: int, views: int, resolution: int) -> str:
    """File-system-safe name of one convergence run, its settings and the code (the cache key)."""
    from ..naming import slugify

    return (f"{method}--{slugify(prompt)}--seed{seed}--{steps}steps-{views}views-{resolution}px-eval{eval_every}"
            f"--code{code_fingerprint()}")


def save_run(folder: Path, key: str, run: Run, snaps: dict[int, Gaussians]) -> None:
    """Store a finished run (JSON) and its snapshots (safetensors), each written atomically;
    the JSON goes last, so a run counts as finished only when everything is on disk."""
    from safetensors.torch import save

    from ..atomic import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    if snaps:
        tensors = {f"{step}.{k}": v.detach().cpu().contiguous() for step, g in snaps.items()
                   for k, v in g.state_tensors().items()}
        atomic_write_bytes(folder / f"{key}.snapshots.safetensors", save(tensors))
    atomic_write_bytes(folder / f"{key}.json", json.dumps(dataclasses.asdict(run), allow_nan=True).encode())


def load_run(folder: Path, key: str, want_snapshots: tuple[int, ...]) -> Optional[tuple[Run, dict[int, Gaussians]]]:
    """A run stored by `save_run` (None if absent, incomplete or lacking a wanted snapshot)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    jp, sp = folder / f"{key}.json", folder / f"{key}.snapshots.safetensors"
    if not jp.exists():
        return None
    try:
        d = json.loads(jp.read_text())
        curve = [CurvePoint(**c) for c in d.pop("curve")]
        run = Run(**d, curve=curve)
        snaps: dict[int, Gaussians] = {}
        if want_snapshots:
            flat = load_file(str(sp)) if sp.exists() else {}
            for step in want_snapshots:
                part = {k.split(".", 1)[1]: v for k, v in flat.items() if k.split(".", 1)[0] == str(step)}
                if not part:
                    return None
                snaps[step] = Gaussians.from_state_tensors(part)
    except (ValueError, TypeError, KeyError, OSError, SafetensorError):
        return None  # unreadable: run it again
    return run, snaps


def mean_curve(runs: list[Run], key: str) -> list[tuple[int, float, float]]:
    """(step, mean seconds, mean metric) over runs that share their evaluation steps."""
    if not runs:
        return []
    out = []
    for i, p in enumerate(runs[0].curve):
        vals = [getattr(r.curve[i], key) for r in runs if i < len(r.curve)]
        secs = [r.curve[i].seconds for r in runs if i < len(r.curve)]
        out.append((p.step, sum(secs) / len(secs), finite_mean(vals)))
    return out


def first_reaching(curve: list[tuple[int, float, float]], threshold: float, higher: bool = True) -> Optional[tuple[int, float]]:
    """(step, seconds) of the first point of a mean curve at or past `threshold`; None if never."""
    for step, secs, v in curve:
        if not math.isnan(v) and ((v >= threshold) if higher else (v <= threshold)):
            return step, secs
    return None


def summarise(runs: list[Run], methods: list[str], thresholds: dict[str, float]) -> dict:
    """Per method over object runs (and rooms separately): final metrics mean and std across runs;
    steps and time to reach SDS's final mean mask IoU and the fixed thresholds."""
    out: dict = {}
    for group, sel in (("objects", lambda r: not r.room), ("rooms", lambda r: r.room)):
        runs_g = [r for r in runs if sel(r)]
        if not runs_g:
            continue
        by_m = {m: [r for r in runs_g if r.method == m] for m in methods}
        sds_final = None
        if by_m.get("sds"):
            c = mean_curve(by_m["sds"], "mask_iou")
            sds_final = c[-1][2] if c else None
        res = {}
        for m, rs in by_m.items():
            if not rs:
                continue
            entry: dict = {"runs": len(rs), "seconds_per_step": finite_mean([r.seconds_per_step for r in rs]),
                           "skipped_steps": sum(r.skipped_steps for r in rs)}
            for k in METRICS:
                vals = [getattr(r.final, k) for r in rs]
                entry[k] = finite_mean(vals)
                entry[k + "_std"] = _std(vals)
            curve = mean_curve(rs, "mask_iou")
            if sds_final is not None:
                hit = first_reaching(curve, sds_final)
                entry["reach_sds_final_iou"] = {"threshold": sds_final, "step": hit[0] if hit else None,
                                                "seconds": hit[1] if hit else None}
            for k, thr in thresholds.items():
                hit = first_reaching(mean_curve(rs, k), thr, HIGHER_IS_BETTER[k])
                entry[f"reach_{k}_{thr:g}"] = {"threshold": thr, "step": hit[0] if hit else None,
                                               "seconds": hit[1] if hit else None}
            res[m] = entry
        out[group] = res
    return out


def finite_mean(xs) -> float:
    """Mean of the values that are not None or NaN (NaN if none is left)."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if len(xs) < 2:
        return 0.0 if xs else math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
