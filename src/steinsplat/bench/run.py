"""`steinsplat bench`: configuration, orchestration and the targets check (modules in __init__)."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import config
from .convergence import Run, load_run, run_key, run_one, save_run, summarise
from .cost import measure_cost
from .decomposition import measure_decomposition, summarise_decomposition
from .methods import ABLATIONS, DEFAULT_METHODS, METHODS
from .report import write_report
from .variance import measure_variance

ROOM = "a room with blue walls and a gray floor"
STRATIFIED = ["a red cube", "a blue sphere", "a yellow cylinder", "an orange cone", "a cyan torus", "a gray pyramid",
              "a purple capsule"]  # one pair per shape; blue sphere, orange cone, cyan torus are held out
BANDS = {"all": None, "low": (0.02, 0.35), "middle": (0.35, 0.65), "high": (0.65, 0.98)}  # fractions of T


@dataclass
class BenchConfig:
    """Measure SDS, VSD and SSD on ShapeWorld: variance, convergence, cost, ablations; write a report."""

    out: Path = Path("runs/bench")  # report folder (report.json, report.md, PNG plots)
    quick: bool = False  # CI mode: one object + the room, 1 seed, 30 steps, few draws (structure, not numbers)
    methods: tuple[str, ...] = DEFAULT_METHODS  # estimators to compare (sds must be one of them for the ratios); any of METHODS
    prompts: str = "stratified"  # "all" (56 pairs + room), "stratified" (7 pairs + room) or prompts separated by ';'
    seeds: tuple[int, ...] = (0, 1)  # seeds of the convergence runs
    steps: int = 500  # optimisation steps per run
    eval_every: int = 50  # steps between ShapeWorld evaluations
    views: int = 4  # cameras per step
    resolution: int = 64  # render size
    points: tuple[float, ...] = (0.1, 0.5, 0.9)  # variance snapshots (early, middle, late) as fractions of steps
    bands: tuple[str, ...] = ("all", "low", "middle", "high")  # timestep bands of the variance measurement
    cameras: tuple[str, ...] = ("same", "fresh")  # variance with fixed cameras, fresh cameras per draw, or "stratified" (fresh, azimuths and timesteps stratified across the views)
    draws: int = 48  # paired draws per variance measurement
    warmup: int = -1  # steps of state learning (SSD's mu, VSD's LoRA) on the snapshot before each variance measurement; -1: the snapshot's own step (the state a run has at that step: "at the same number of steps")
    cost_steps: int = 30  # steps per method for time / memory
    ablations: bool = True  # the SSD ablations (variance at the middle snapshot)
    resume: bool = True  # reuse the convergence runs already stored in OUT/runs with the same settings and code (--no-resume: run all again)
    iou_threshold: float = 0.8  # fixed quality threshold: steps / time to reach this mean mask IoU
    decomposition: tuple[int, int, int] = (5, 5, 4)  # K camera batches x T timestep draws x E noise draws: SDS's camera / t / eps variance shares at a snapshot of every prompt's SDS run (seed: the first); 0 0 0: skip
    decomposition_point: float = 0.5  # the snapshot of the decomposition, as a fraction of steps


def quick_config(cfg: BenchConfig) -> BenchConfig:
    return dataclasses.replace(cfg, prompts=f"a red cube;{ROOM}", seeds=(0,), steps=30, eval_every=15, views=2,
                               resolution=32, points=(0.5,), bands=("all", "low"), draws=8, warmup=6, cost_steps=6,
                               decomposition=(2, 2, 2) if cfg.decomposition == BenchConfig.decomposition else cfg.decomposition)


def warmup_at(cfg: BenchConfig, step: int) -> int:
    """State-learning steps before measuring the variance at a snapshot taken at `step`."""
    return step if cfg.warmup < 0 else cfg.warmup


def prompt_list(spec: str) -> list[str]:
    from ..shapeworld.vocab import all_object_prompts, canonical_text, parse_prompt

    if spec == "all":
        return [canonical_text(p) for p in all_object_prompts()] + [ROOM]
    if spec == "stratified":
        return STRATIFIED + [ROOM]
    out = [p.strip() for p in spec.split(";") if p.strip()]
    from ..shapeworld.vocab import PromptError

    for p in out:
        try:
            parse_prompt(p)  # unknown words: one clear error before hours of work
        except PromptError as exc:
            raise config.ConfigError(f"bench runs on ShapeWorld: {exc}") from None
    if not out:
        raise config.ConfigError("no prompts: use 'all', 'stratified' or prompts separated by ';'")
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu}, {platform.platform()}"


def check_targets(rep: dict) -> list[dict]:
    """The issue's targets, each with what was measured and whether it was met."""
    out = []
    ssd_names = [m for m in ("ssd-filter", "ssd", "ssd-depth", "ssd-normal") if m in rep["meta"]["config"]["methods"]]
    var = [r for r in rep["variance"] if r["band"] == "all" and r["ratio_vs_sds"] is not None]
    for m in ssd_names:
        rs = [r["ratio_vs_sds"] for r in var if r["method"] == m]
        if rs:
            out.append({"what": f"{m}: parameter-gradient variance <= 0.6x SDS across the run (all timesteps)",
                        "measured": "ratios " + ", ".join(f"{r['point']}/{r['cameras']} {r['ratio_vs_sds']:.3f}"
                                                           for r in var if r["method"] == m),
                        "met": max(rs) <= 0.6})
    objs = rep["convergence"]["summary"].get("objects", {})
    sds = objs.get("sds")
    for m in ssd_names:
        e = objs.get(m)
        if not (e and sds):
            continue
        reach, sreach = e.get("reach_sds_final_iou"), sds.get("reach_sds_final_iou")
        if reach and sreach and sreach["step"]:
            if reach["step"] is None:
                out.append({"what": f"{m}: reaches SDS's final mean mask IoU in <= 0.75x the steps and <= 0.9x the time",
                            "measured": f"never reached {reach['threshold']:.3f}", "met": False})
            else:
                rs, rt = reach["step"] / sreach["step"], reach["seconds"] / max(1e-9, sreach["seconds"])
                out.append({"what": f"{m}: reaches SDS's final mean mask IoU in <= 0.75x the steps and <= 0.9x the time",
                            "measured": f"{reach['step']} vs {sreach['step']} steps ({rs:.2f}x), {reach['seconds']:.0f} vs "
                                        f"{sreach['seconds']:.0f} s ({rt:.2f}x)", "met": rs <= 0.75 and rt <= 0.9})
        worse = []
        for other in ("sds", "vsd"):
            o = objs.get(other)
            if not o:
                continue
            for k, higher in (("mask_iou", True), ("psnr", True), ("colour_error", False), ("r_precision", True)):
                a, b = e.get(k), o.get(k)
                if a is None or b is None or math.isnan(a) or math.isnan(b):
                    continue
                # the seed spread (with one run per method there is none: then 1 % of the value)
                spread = max(e.get(k + "_std") or 0.0, o.get(k + "_std") or 0.0, 0.01 * abs(b))
                if (higher and a < b - spread) or (not higher and a > b + spread):
                    worse.append(f"{k} {a:.3f} vs {other} {b:.3f}")
        out.append({"what": f"{m}: final quality >= SDS's and VSD's on every metric (within the seed spread)",
                    "measured": "worse on: " + "; ".join(worse) if worse else "no metric worse beyond the spread",
                    "met": not worse})
    return out


def run_bench(cfg: BenchConfig, log=print) -> dict:
    from ..provenance import versions
    from ..priors import ShapeWorldPriorAdapter
    from ..geometry import ShapeWorldEstimatorAdapter

    if cfg.quick:
        cfg = quick_config(cfg)
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise config.ConfigError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    if "sds" not in cfg.methods:
        raise config.ConfigError("the comparison needs sds among --methods (every ratio is against it)")
    if cfg.warmup < -1 or cfg.draws < 2:
        raise config.ConfigError("--warmup must be >= 0 (or -1: the snapshot's step) and --draws at least 2")
    if cfg.steps <= 0 or cfg.eval_every <= 0 or cfg.views <= 0 or cfg.cost_steps <= 0 or cfg.resolution < 8:
        raise config.ConfigError("--steps, --eval-every, --views and --cost-steps must be positive and --resolution at least 8")
    if not cfg.seeds or not cfg.points or not all(0 < p < 1 for p in cfg.points):
        raise config.ConfigError("--seeds needs at least one seed and --points fractions strictly between 0 and 1")
    if not cfg.cameras or any(c not in ("same", "fresh", "stratified") for c in cfg.cameras):
        raise config.ConfigError("--cameras: choose from same, fresh, stratified")
    if len(cfg.decomposition) != 3 or not (all(n == 0 for n in cfg.decomposition) or all(n >= 2 for n in cfg.decomposition)):
        raise config.ConfigError("--decomposition K T E: three numbers, each at least 2 (0 0 0: skip the decomposition)")
    if not 0 < cfg.decomposition_point < 1:
        raise config.ConfigError("--decomposition-point must be a fraction strictly between 0 and 1")
    if not 0 < cfg.iou_threshold <= 1:
        raise config.ConfigError("--iou-threshold must be in (0, 1]")
    prompts = prompt_list(cfg.prompts)
    t_start = time.perf_counter()
    prior = ShapeWorldPriorAdapter.from_pretrained(None)
    est = ShapeWorldEstimatorAdapter.from_pretrained(None)
    methods = list(cfg.methods)

    # convergence (the SDS run of the first prompt and seed also provides the variance snapshots)
    snap_steps = tuple(sorted({max(1, round(p * cfg.steps)) for p in cfg.points}))
    decompose = all(n >= 2 for n in cfg.decomposition)
    decomp_step = max(1, round(cfg.decomposition_point * cfg.steps))
    runs: list[Run] = []
    reused = 0
    snapshots = {}
    decomp_snaps = {}  # prompt -> the SDS run's snapshot at decomp_step (first seed)
    for prompt in prompts:
        for seed in cfg.seeds:
            for m in methods:
                first = m == "sds" and seed == cfg.seeds[0]
                want = snap_steps if (first and prompt == prompts[0]) else ()
                if first and decompose:
                    want = tuple(sorted({*want, decomp_step}))
                key = run_key(m, prompt, seed, cfg.steps, cfg.eval_every, cfg.views, cfg.resolution)
                stored = load_run(cfg.out / "runs", key, want) if cfg.resume else None
                if stored is not None:
                    run, snaps = stored
                    reused += 1
                else:
                    run, snaps = run_one(m, prompt, seed, cfg.steps, cfg.eval_every, prior, est, cfg.views,
                                         cfg.resolution, want)
                    save_run(cfg.out / "runs", key, run, snaps)
                if first and prompt == prompts[0]:
                    snapshots.update({k: v for k, v in snaps.items() if k in snap_steps})
                if first and decompose:
                    decomp_snaps[prompt] = snaps[decomp_step]
                runs.append(run)
                f = run.final
                log(f"convergence {m:<11} {prompt[:34]:<34} seed {seed}: IoU {f.mask_iou:.3f} colour {f.colour_error:.3f} "
                    f"PSNR {f.psnr:.2f} in {run.seconds:.0f} s")

    if reused:
        log(f"convergence: {reused} of {len(runs)} runs reused from {cfg.out / 'runs'} (--no-resume to run them again)")

    # variance at the snapshots
    from ..shapeworld.vocab import RoomPrompt, parse_prompt

    mode = "scene" if isinstance(parse_prompt(prompts[0]), RoomPrompt) else "object"
    T = prior.schedule.num_train_timesteps
    lo, hi = prior.timestep_range(0.0)
    bands = {}
    for b in cfg.bands:
        if b not in BANDS:
            raise config.ConfigError(f"unknown band {b!r}: choose from {', '.join(BANDS)}")
        bands[b] = (lo, hi) if BANDS[b] is None else (int(BANDS[b][0] * (T - 1)), int(BANDS[b][1] * (T - 1)))
    names = {0: "early", 1: "middle", 2: "late"} if len(snap_steps) == 3 else {i: f"p{i}" for i in range(len(snap_steps))}
    if len(snap_steps) == 1:
        names = {0: "middle"}
    embeds = prior.encode_prompt(prompts[0])
    variance = []
    for i, s in enumerate(snap_steps):
        rows = measure_variance(snapshots[s], names[i], s, prior, est, embeds, mode, methods, bands, list(cfg.cameras),
                                warmup_at(cfg, s), cfg.draws, cfg.views, cfg.resolution, seed=1234 + i)
        variance += [dataclasses.asdict(r) for r in rows]
        for r in rows:
            log(f"variance {r.point:<6} {r.band:<6} {r.cameras:<5} {r.method:<11} {r.variance:.4g} "
                f"({'-' if r.ratio_vs_sds is None else f'{r.ratio_vs_sds:.3f}'}x SDS)")

    ablations = []
    if cfg.ablations:
        mid = snap_steps[len(snap_steps) // 2]
        names_ab = ["sds", *ABLATIONS] if not cfg.quick else ["sds", "mu-scalar", "no-constant", "half-res-estimator"]
        rows = measure_variance(snapshots[mid], "middle", mid, prior, est, embeds, mode, names_ab, {"all": bands.get("all", (lo, hi))},
                                ["same"], warmup_at(cfg, mid), cfg.draws, cfg.views, cfg.resolution, seed=4321)
        ablations = [dataclasses.asdict(r) for r in rows]
        for r in rows:
            log(f"ablation {r.method:<20} {r.variance:.4g} ({'-' if r.ratio_vs_sds is None else f'{r.ratio_vs_sds:.3f}'}x SDS)")

    decomposition: dict = {"rows": [], "summary": None}
    if decompose:
        K, T_, E = cfg.decomposition
        for i, prompt in enumerate(prompts):
            pmode = "scene" if isinstance(parse_prompt(prompt), RoomPrompt) else "object"
            row = measure_decomposition(decomp_snaps[prompt], prompt, decomp_step, cfg.steps, prior,
                                        prior.encode_prompt(prompt), pmode, K, T_, E, cfg.views, cfg.resolution,
                                        seed=777 + i)
            decomposition["rows"].append(dataclasses.asdict(row))
            log(f"decomposition {prompt[:34]:<34} step {decomp_step}: camera {row.camera_share:.3f} t "
                f"{row.timestep_share:.3f} eps {row.noise_share:.3f} (eps-only ceiling {row.eps_cv_ceiling:.3f}x SDS)")
        decomposition["summary"] = summarise_decomposition(decomposition["rows"])

    cost = [dataclasses.asdict(r) for r in measure_cost(methods, prompts[0], cfg.seeds[0], cfg.cost_steps, prior, est,
                                                         cfg.views, cfg.resolution)]
    for r in cost:
        log(f"cost {r['method']:<11} {r['seconds_per_step'] * 1e3:.1f} ms/step ({r['ratio_vs_sds']:.2f}x SDS), "
            f"peak +{r['peak_memory_mb']:.0f} MB")

    rep = {
        "meta": {"command": "steinsplat bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"]
                 else "steinsplat bench", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine(), "versions": versions(), "prompts": prompts,
                 "config": {**dataclasses.asdict(cfg), "out": str(cfg.out)}, "seconds": time.perf_counter() - t_start,
                 "reused_runs": reused},
        "variance": variance,
        "convergence": {"runs": [dataclasses.asdict(r) for r in runs],
                        "summary": summarise(runs, methods, {"mask_iou": cfg.iou_threshold})},
        "cost": cost,
        "ablations": ablations,
        "decomposition": decomposition,
    }
    rep["targets"] = check_targets(rep)
    return rep


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config.parse(BenchConfig, list(argv or []), prog="steinsplat bench", description=BenchConfig.__doc__)
    from rich.console import Console

    console = Console(stderr=True)
    rep = run_bench(cfg, log=lambda s: console.print(s, highlight=False))
    files = write_report(rep, cfg.out)
    for t in rep["targets"]:
        console.print(("[green]met[/green]     " if t["met"] else "[red]NOT met[/red] ") + f"{t['what']}: {t['measured']}")
    console.print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
