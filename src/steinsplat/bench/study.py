"""`steinsplat study`: does SSD converge faster than SDS once each is run at its own best settings?

The protocol (every run uses generation's defaults; a budget S is the whole schedule given S steps:
the learning-rate decay, the timestep annealing and the densification are fractions of it, so a
100-step run is the 400-step run compressed):

  1. initial state: the shape metrics of the initial Gaussians of every (prompt, seed);
  2. oracle (is the optimisation variance-limited?): SDS with `oracle_views` views per step at the
     default learning rate, on the tuning prompts at every budget; compared per step and per
     second (an 8-view step costs about two 4-view steps); one run also records where a step's
     time goes (prior, render, the rest);
  3. tuning: every method x learning-rate multiplier x budget on the tuning prompts; the multiplier
     with the best mean 3D IoU is that method's setting at that budget;
  4. views per step: every method at its tuned multiplier with V views per step (`view_options`) on
     the tuning prompts, each run against the run at `views` views that costs about as much
     (V views x S steps against `views` views x S*V/views steps, both budgets of the study): more
     views lower the variance, fewer buy more steps;
  5. evaluation: every method at its tuned multiplier x budget on the held-out prompts x seeds,
     evaluated at the end and part-way, at `eval_fractions` of the run (the 3D IoU, chamfer and
     colour error along the run: thresholds below a budget's final quality are read from these
     evaluations; each costs one evaluation, ~4-9 s on the 2-core machine, not counted in the run's
     seconds); `study_stats` turns these into steps and seconds to reach 90 % of the gap between the
     initial and the best result, and the time ratio to SDS at 95 % of SDS's gain at the largest
     budget, with a paired bootstrap clustered by prompt. Every SSD run also records what its guard
     did (the share of views served the fitted gradient, the in-run second-moment ratio to SDS's in
     the guard's proxy: `guidance/guard.py`, `Guard.summary`).

Times: runs made in different sessions ran on differently loaded machines (10-30 % apart, more under
load), so the report does not compare the runs' own times. Before it runs anything, each invocation
measures every method x views per step side by side in one process (`measure_cost`: short runs of
the whole schedule, two rounds in opposite orders, the faster round kept) and stores it in
OUT/cost.json; every "seconds" in the report is steps x that cost. The stored cost is reused while
it covers every method x views of the invocation; a new method re-measures all of them together.

Each finished run is one small JSON file under OUT/runs, named by its settings; a later invocation
(another session, more seeds, more methods) reuses every file it finds and runs only what is
missing. `--max-minutes` stops starting new runs once the time is spent; the report then covers
what exists (and says what is missing). Runs go to `jobs` worker processes of one thread each.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .. import config
from ..atomic import atomic_write_bytes
from .methods import METHODS
from .study_plan import (  # the plan: settings, tasks, results (also imported from here)
    EVAL_PROMPTS, METRIC_KEYS, SET_KEYS, TUNE_PROMPTS, Result, StudyConfig, Task, eval_tasks, init_tasks, oracle_tasks,
    quick_config, tune_tasks, views_partner, views_tasks,
)


# ---------------------------------------------------------------------------- one run
def scaled_optim(optim, lr_mult: float):
    """The optimiser settings with every learning rate (and the means' final rate) scaled by lr_mult."""
    names = ("lr_means", "lr_means_final", "lr_scales", "lr_quats", "lr_opacities", "lr_sh0", "lr_shN")
    return dataclasses.replace(optim, **{n: getattr(optim, n) * lr_mult for n in names})


class _Timed:
    """Wraps a callable and adds its wall time to `total`."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.total = fn, 0.0

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.total += time.perf_counter() - t0


def run_task(task: Task, prior, est) -> Result:
    """Run one task on CPU with generation's defaults (learning rates scaled) and evaluate it."""
    from .. import train as train_mod
    from ..shapeworld.metrics import evaluate
    from .convergence import bench_trainer, code_fingerprint

    steps = max(1, task.steps)
    # the initial state: SDS's trainer is built only for its Gaussians (building it does not move them)
    trainer = bench_trainer(task.method if task.steps > 0 else "sds", task.prompt, task.seed, steps, prior, est,
                            task.views, task.resolution, lambda optim: scaled_optim(optim, task.lr_mult))
    step_times: list[float] = []
    profile = None
    traj: list[dict] = []
    at = set(task.eval_steps()) if task.steps > 0 else set()
    if task.steps > 0:
        timers = {}
        if task.profile:  # the prior's calls and the rasteriser, timed where the trainer and guidance reach them
            timers["prior"] = _Timed(prior.predict_noise)
            prior.predict_noise = timers["prior"]
            timers["render"] = _Timed(train_mod.render)
            train_mod.render = timers["render"]
        try:
            while trainer.state.step < steps:
                t0 = time.perf_counter()
                trainer.step()
                step_times.append(time.perf_counter() - t0)
                if trainer.state.step in at:  # part-way: the study's metrics (not timed)
                    with torch.no_grad():
                        mm = evaluate(trainer.g, task.prompt, shape=True, r_precision=False)
                    traj.append({"step": trainer.state.step, "seconds": sum(step_times),
                                 "metrics": {k: getattr(mm, k) for k in METRIC_KEYS if k != "r_precision"}})
        finally:
            if task.profile:
                del prior.predict_noise  # back to the class's method
                train_mod.render = timers["render"].fn
        if task.profile:
            total = sum(step_times)
            profile = {"prior": timers["prior"].total, "render": timers["render"].total,
                       "rest": total - timers["prior"].total - timers["render"].total}
    with torch.no_grad():
        m = evaluate(trainer.g, task.prompt, shape=True)
    metrics = {k: getattr(m, k) for k in METRIC_KEYS}
    metrics.update({k: getattr(m, k) for k in SET_KEYS if hasattr(m, k)})  # open prompts: the chosen mode, its purity
    guard = getattr(trainer.guidance, "guard", None)
    return Result(dataclasses.asdict(task), metrics, sum(step_times),
                  sorted(step_times)[len(step_times) // 2] if step_times else 0.0, len(trainer.g),
                  trainer.state.skipped, profile, code_fingerprint(),
                  datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  traj if at else None, guard.summary() if guard is not None and task.steps > 0 else None)


# ---------------------------------------------------------------------------- storage
def save_result(folder: Path, r: Result) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / f"{r.key}.json", (json.dumps(dataclasses.asdict(r), indent=1) + "\n").encode())


def load_results(folder: Path) -> dict[str, Result]:
    """Every readable run under `folder` by key (unreadable files are skipped: they run again)."""
    out = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            r = Result(**json.loads(f.read_text()))
            if r.key == f.stem:
                out[r.key] = r
        except (ValueError, TypeError, KeyError, OSError):
            continue
    return out


# ---------------------------------------------------------------------------- cost, side by side
COST_FILE = "cost.json"


def cost_cells(cfg: StudyConfig) -> list[str]:
    """The "method@views" whose cost per step the report needs."""
    cells = [(m, v) for m in cfg.methods for v in (cfg.views, *cfg.view_options)]
    if cfg.oracle_views > 0:
        cells.append(("sds", cfg.oracle_views))
    return list(dict.fromkeys(f"{m}@{v}" for m, v in cells))


def measure_cost(cells: Sequence[str], cfg: StudyConfig, prior, est, rounds: int = 2) -> dict[str, float]:
    """Seconds per step of each "method@views", side by side in this process: each round runs every
    cell once (`probe_steps` steps, the whole schedule, on the first tuning prompt), the order
    reversed every other round; a cell keeps its fastest round (the least disturbed one)."""
    from .convergence import bench_trainer

    times: dict[str, list[float]] = {c: [] for c in cells}
    for k in range(rounds):
        for c in (cells if k % 2 == 0 else list(reversed(cells))):
            m, v = c.rsplit("@", 1)
            tr = bench_trainer(m, cfg.tune_prompts[0], 0, cfg.probe_steps, prior, est, int(v), cfg.resolution)
            t0 = time.perf_counter()
            while tr.state.step < cfg.probe_steps:
                tr.step()
            times[c].append((time.perf_counter() - t0) / cfg.probe_steps)
    return {c: min(ts) for c, ts in times.items()}


def load_cost(folder: Path) -> Optional[dict]:
    try:
        d = json.loads((folder / COST_FILE).read_text())
        return d if isinstance(d.get("seconds_per_step"), dict) and isinstance(d.get("settings"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def ensure_cost(cfg: StudyConfig, log: Callable[[str], None]) -> Optional[dict]:
    """The stored cost if it covers this invocation's cells at the same probe settings; otherwise (when
    running) a new measurement of all of them and of the stored ones, saved. None: use the runs' times."""
    if cfg.probe_steps <= 0:
        return None
    settings = {"probe_steps": cfg.probe_steps, "resolution": cfg.resolution, "prompt": cfg.tune_prompts[0]}
    stored = load_cost(cfg.out)
    if stored is not None and stored["settings"] != settings:
        stored = None
    need = cost_cells(cfg)
    if stored is not None and all(c in stored["seconds_per_step"] for c in need):
        return stored
    if not cfg.run:
        return None
    cells = list(dict.fromkeys([*need, *(stored["seconds_per_step"] if stored else [])]))
    log(f"study: measuring the cost per step of {', '.join(cells)} side by side ({cfg.probe_steps}-step runs, 2 rounds)")
    if "models" not in _WORKER:
        _init_worker()
    from ..provenance import versions
    from .convergence import code_fingerprint
    from .run import machine

    cost = {"settings": settings, "seconds_per_step": measure_cost(cells, cfg, *_WORKER.get("models", (None, None))),
            "machine": machine(), "versions": versions(), "code": code_fingerprint(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cfg.out / COST_FILE, (json.dumps(cost, indent=1) + "\n").encode())
    return cost


# ---------------------------------------------------------------------------- running
_WORKER: dict = {}


def _init_worker() -> None:
    from ..geometry import ShapeWorldEstimatorAdapter
    from ..priors import ShapeWorldPriorAdapter

    torch.set_num_threads(1)
    _WORKER["models"] = (ShapeWorldPriorAdapter.from_pretrained(None), ShapeWorldEstimatorAdapter.from_pretrained(None))


def _work(task: Task) -> Result:
    prior, est = _WORKER["models"]
    return run_task(task, prior, est)


def run_missing(tasks: Sequence[Task], cfg: StudyConfig, results: dict[str, Result], deadline: float,
                log: Callable[[str], None], ordered: bool = False) -> int:
    """Run the tasks that have no stored result (longest first unless `ordered`), `cfg.jobs` at a time,
    saving each as it finishes. Returns how many were left unrun because the deadline passed."""
    unique: dict[str, Task] = {}  # the oracle's default-view runs are tuning runs too (the profiled copy wins)
    for t in tasks:
        if t.key() not in unique or t.profile:
            unique[t.key()] = t
    todo = [t for k, t in unique.items() if k not in results]
    if not ordered:
        todo.sort(key=lambda t: -(t.steps * t.views))  # longest first: the workers end together
    if not todo:
        return 0
    total, done = len(todo), 0
    log(f"study: {total} runs to do ({len(unique) - total} of {len(unique)} found in {cfg.out / 'runs'})")
    t_start = time.perf_counter()

    from .study_stats import fmt

    def finished(r: Result) -> None:
        nonlocal done
        done += 1
        save_result(cfg.out / "runs", r)
        results[r.key] = r
        t = r.task
        el = time.perf_counter() - t_start
        log(f"[{done}/{total}] {t['method']:<5} {t['prompt'][:22]:<22} seed {t['seed']} {t['steps']:>4} steps lr x{t['lr_mult']:g} "
            f"{t['views']} views: 3D IoU {fmt(r.metrics['iou_3d'])} chamfer {fmt(r.metrics['chamfer_mm'], 1)} mm, "
            f"{r.seconds:.0f} s (elapsed {el / 60:.1f} min)")

    if cfg.jobs <= 1:
        if "models" not in _WORKER:  # the cost probe may have loaded them already
            _init_worker()
        for t in todo:
            if time.perf_counter() > deadline:
                return total - done
            finished(_work(t))
        return 0
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker) as ex:
        pending: set = set()
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < cfg.jobs and time.perf_counter() < deadline:
                pending.add(ex.submit(_work, queue.pop(0)))
            if not pending:
                break
            ready, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in ready:
                finished(fut.result())
    return total - done


def check_config(cfg: StudyConfig) -> None:
    from .run import prompt_list

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise config.ConfigError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    if not cfg.methods or cfg.methods[0] != "sds":
        raise config.ConfigError("--methods must start with sds (the reference every ratio is taken against)")
    if not cfg.budgets or any(S <= 0 for S in cfg.budgets) or list(cfg.budgets) != sorted(set(cfg.budgets)):
        raise config.ConfigError("--budgets: positive step counts in increasing order, e.g. 100 200 400")
    if not cfg.lr_mults or any(not (lr > 0 and math.isfinite(lr)) for lr in cfg.lr_mults):
        raise config.ConfigError("--lr-mults: positive finite multipliers, e.g. 0.5 1 2")
    if any(v <= 0 or v == cfg.views for v in cfg.view_options):
        raise config.ConfigError(f"--view-options: positive view counts other than --views ({cfg.views}), e.g. 2 8")
    if not cfg.report_name or any(c in cfg.report_name for c in "/\\") or cfg.report_name.startswith("."):
        raise config.ConfigError("--report-name: a plain file name without folders, e.g. report-depth")
    if cfg.views <= 0 or cfg.oracle_views < 0 or cfg.resolution < 8 or cfg.jobs <= 0 or cfg.bootstrap < 10 or cfg.probe_steps < 0:
        raise config.ConfigError("--views and --jobs must be positive, --oracle-views and --probe-steps >= 0, --resolution >= 8, "
                                 "--bootstrap >= 10")
    if not 0 < cfg.gap <= 1 or not 0 < cfg.sds_gap <= 1 or not cfg.max_minutes > 0:
        raise config.ConfigError("--gap and --sds-gap must be in (0, 1] and --max-minutes positive")
    if any(not 0 < f < 1 for f in cfg.eval_fractions):
        raise config.ConfigError("--eval-fractions: fractions of a run strictly between 0 and 1, e.g. 0.25 0.5")
    if not cfg.tune_prompts or not cfg.eval_prompts or not cfg.tune_seeds or not cfg.eval_seeds:
        raise config.ConfigError("the study needs tuning and evaluation prompts and seeds")
    for p in (*cfg.tune_prompts, *cfg.eval_prompts):
        prompt_list(p)  # a ShapeWorld prompt (one clear error otherwise)
    from .convergence import is_room

    if any(is_room(p) for p in (*cfg.tune_prompts, *cfg.eval_prompts)):
        raise config.ConfigError("the study measures objects (3D IoU, chamfer): leave rooms out of its prompts")
    if set(cfg.tune_prompts) & set(cfg.eval_prompts):
        raise config.ConfigError("the evaluation prompts must be held out from the tuning: "
                                 f"{', '.join(sorted(set(cfg.tune_prompts) & set(cfg.eval_prompts)))} in both")


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict:
    from . import study_stats

    if cfg.quick:
        cfg = quick_config(cfg)
    check_config(cfg)
    t0 = time.perf_counter()
    deadline = t0 + 60 * cfg.max_minutes
    results = load_results(cfg.out / "runs")
    cost = ensure_cost(cfg, log)
    unrun = 0
    phase1 = init_tasks(cfg) + oracle_tasks(cfg) + tune_tasks(cfg)
    if cfg.run:
        unrun += run_missing(phase1, cfg, results, deadline, log)
    tuned = study_stats.tune(results, cfg)
    if cfg.run:
        # the evaluation first (seed-major: a cut leaves whole units missing), then the views per step
        unrun += run_missing(eval_tasks(cfg, tuned) + views_tasks(cfg, tuned), cfg, results, deadline, log, ordered=True)
    rep = study_stats.report(results, cfg, tuned, cost)
    rep["meta"].update(seconds=time.perf_counter() - t0, unrun=unrun)
    return rep


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import study_stats

    cfg = config.parse(StudyConfig, list(argv or []), prog="steinsplat study", description=StudyConfig.__doc__)
    from rich.console import Console

    console = Console(stderr=True)
    rep = run_study(cfg, log=lambda s: console.print(s, highlight=False))
    rep["meta"]["command"] = " ".join(["steinsplat study", *(argv or [])])
    files = study_stats.write_report(rep, cfg.out, cfg.report_name)
    for t in rep["targets"]:
        console.print(("[green]met[/green]     " if t["met"] else "[red]NOT met[/red] ") + f"{t['what']}: {t['measured']}")
    if rep["meta"]["unrun"]:
        console.print(f"{rep['meta']['unrun']} runs not started (--max-minutes reached): run the same command again to add them")
    console.print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
