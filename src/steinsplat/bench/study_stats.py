"""The study's statistics and report: tuned settings, the oracle, time to a quality, bootstrap intervals.

The quality curve of a method (`curve`): every evaluation its tuned runs made, as (steps, mean over
the units): the final result of each budget S_1 < ... < S_n (each run at the method's tuned
multiplier) and, for runs made with `eval_fractions`, the evaluations part-way through them (step
f S of the S-step run; its schedule is the S-step one). Where two runs were evaluated at the same
step, the shorter budget's point counts (the run made for that many steps).

Time to reach a quality q* (`reach_steps`), read from the curve's evaluated points only:
    1. the first point (in steps) whose mean is at or past q* (higher or lower, by metric);
    2. the steps: linear interpolation between that point and the evaluated point before it
       (both are measurements; the initial state at step 0 is never used: from step 0 the line
       to the first point put every threshold below a run's first evaluation far too early);
       a target met at the first evaluated point already gives that point's steps (an upper
       bound, flagged `censored_below` in the estimates: evaluate earlier to read it);
    3. never reached: infinite (censored above; an interval that contains it is open).
Seconds = steps x the method's seconds per step from the invocation's cost probe (`study.ensure_cost`:
every method x views measured side by side; the stored runs come from sessions whose machines were
loaded differently), or, without a probe, the mean over the evaluation's own runs. Two questions use it:
  - gap: q* = q_init + gap * (q_best - q_init), q_best the best mean of any method at any budget;
  - SDS's quality: q* = q_init + sds_gap * (q_sds - q_init), q_sds SDS's mean at the largest budget
    (sds_gap = 0.95: a method equal to SDS on a plateau reaches 95 % of SDS's gain when SDS does,
    while SDS's final quality itself is reached by chance, or never, by an equal method); the
    ratio is the method's seconds to reach q* over SDS's seconds to reach it, both read from
    their curves: the time ratio at matched quality (the issue's target: <= 0.75 with the
    interval below 1).
Intervals: a paired percentile bootstrap clustered by prompt: each resample draws the evaluation's
prompts with replacement and brings every seed of a drawn prompt along (the seeds of a prompt share
its difficulty: resampling (prompt, seed) units as if independent makes intervals too narrow);
every method is evaluated on the same resampled (prompt, seed) units, which ran with the same seeds
(common random numbers), and each resample recomputes every mean, q_best, q* and the crossing.
`bootstrap(..., cluster=False)` is the unit bootstrap, for comparison.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import random
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_bytes
from .convergence import finite_mean
from .study_plan import METRIC_KEYS, Result, StudyConfig, Task

HIGHER = {"iou_3d": True, "chamfer_mm": False, "top_iou": True, "low_iou": True, "mask_iou": True,
          "colour_error": False, "r_precision": True}
# the shape measures that do not saturate (the choice), and the colour error: a short run's
# speckled, haloed look (visible in a turntable) is scored by it and by none of the shape measures
STUDY_METRICS = ("iou_3d", "chamfer_mm", "top_iou", "colour_error")


def _better(a: float, b: float, higher: bool) -> bool:
    return a >= b if higher else a <= b


# ---------------------------------------------------------------------------- tuning
def cell_runs(results: dict[str, Result], cfg: StudyConfig, method: str, steps: int, lr: float,
              views: Optional[int] = None) -> list[Optional[Result]]:
    """The stored runs of one setting over the tuning prompts x seeds (None where missing)."""
    return [results.get(Task(method, p, s, steps, lr, views or cfg.views, cfg.resolution).key())
            for p in cfg.tune_prompts for s in cfg.tune_seeds]


def tune(results: dict[str, Result], cfg: StudyConfig, metric: str = "iou_3d") -> dict[tuple[str, int], float]:
    """(method, budget) -> the multiplier with the best mean `metric` over the tuning prompts x seeds
    (only multipliers whose runs are all stored count; ties go to the multiplier nearest 1)."""
    out = {}
    for m in cfg.methods:
        for S in cfg.budgets:
            best = None
            for lr in sorted(cfg.lr_mults, key=lambda v: abs(math.log(v))):
                rs = cell_runs(results, cfg, m, S, lr)
                if any(r is None for r in rs):
                    continue
                v = finite_mean(r.metrics[metric] for r in rs)
                if best is None or (not math.isnan(v) and (math.isnan(best[1]) or (v > best[1] if HIGHER[metric] else v < best[1]))):
                    best = (lr, v)
            if best is not None:
                out[m, S] = best[0]
    return out


# ---------------------------------------------------------------------------- crossing
def reach_steps(points: list[tuple[float, float]], target: float, higher: bool) -> float:
    """Steps at which a quality curve first reaches `target` (module docstring, steps 1-3): points
    [(steps, mean)] of evaluations, in any order; inf if never, nan if a point before it is undefined."""
    pts = sorted(points)
    for k, (x, q) in enumerate(pts):
        if math.isnan(q):
            return math.nan
        if _better(q, target, higher):
            if k == 0:
                return float(x)  # met at the first evaluation: an upper bound (censored below)
            x0, q0 = pts[k - 1]  # short of the target (else the loop had stopped at k - 1)
            return x0 + (target - q0) / (q - q0) * (x - x0)
    return math.inf


@dataclasses.dataclass
class Table:
    """The evaluation's results for one metric: runs[method][budget][unit] = [(step, value)] (the run's
    evaluations, its final one last), init[unit], and each method's seconds per step."""

    units: list[tuple[str, int]]
    init: dict[tuple[str, int], float]
    runs: dict[str, dict[int, dict[tuple[str, int], list[tuple[int, float]]]]]
    seconds_per_step: dict[str, float]

    def final(self, m: str, S: int, u: tuple[str, int]) -> float:
        return self.runs[m][S][u][-1][1]


def step_cost(cost: Optional[dict], method: str, views: int) -> Optional[float]:
    """Seconds per step of `method` at `views` views from the cost probe (None without one)."""
    return None if cost is None else cost["seconds_per_step"].get(f"{method}@{views}")


def run_seconds(cost: Optional[dict], rs: list[Result]) -> float:
    """Mean seconds of one setting's runs: steps x the probe's cost per step, or the runs' own times."""
    t = rs[0].task
    c = step_cost(cost, t["method"], t["views"])
    return t["steps"] * c if c is not None else finite_mean(r.seconds for r in rs)


def trajectory(r: Result, metric: str) -> list[tuple[int, float]]:
    """[(step, value)] of a run: its part-way evaluations (runs made with eval_fractions), then its final one."""
    pts = [(int(p["step"]), p["metrics"].get(metric)) for p in (r.trajectory or []) if int(p["step"]) < r.task["steps"]]
    pts.append((int(r.task["steps"]), r.metrics[metric]))
    return [(s, math.nan if v is None else float(v)) for s, v in sorted(pts)]


def eval_table(results: dict[str, Result], cfg: StudyConfig, tuned: dict, metric: str, cost: Optional[dict] = None) -> Table:
    units = [(p, s) for p in cfg.eval_prompts for s in cfg.eval_seeds]
    init = {}
    for p, s in units:
        r = results.get(Task("init", p, s, 0, 1.0, cfg.views, cfg.resolution).key())
        if r is not None:
            init[p, s] = r.metrics[metric]
    runs: dict = {}
    sps: dict = {}
    for m in cfg.methods:
        runs[m] = {}
        per_step = []
        for S in cfg.budgets:
            if (m, S) not in tuned:
                continue
            runs[m][S] = {}
            for p, s in units:
                r = results.get(Task(m, p, s, S, tuned[m, S], cfg.views, cfg.resolution).key())
                if r is not None:
                    runs[m][S][p, s] = trajectory(r, metric)
                    per_step.append(r.seconds / max(1, S))
        c = step_cost(cost, m, cfg.views)
        sps[m] = c if c is not None else finite_mean(per_step)
    complete = [u for u in units if u in init and all(u in runs[m].get(S, {}) for m in cfg.methods for S in cfg.budgets)]
    return Table(complete, init, runs, sps)


def curve(tab: Table, m: str, budgets, units: list) -> list[tuple[int, float]]:
    """The method's quality curve on `units` (module docstring): (step, mean) of every evaluation step of
    its runs, the shortest budget's point where two runs share a step. Units must share their steps
    per budget (runs of one invocation do); a step some units lack averages the others."""
    out: dict[int, float] = {}
    for S in sorted(budgets, reverse=True):  # the shorter budget's point overwrites
        per_step: dict[int, list[float]] = {}
        for u in units:
            for st, v in tab.runs[m][S][u]:
                per_step.setdefault(st, []).append(v)
        for st, vs in per_step.items():
            out[st] = finite_mean(vs)
    return sorted(out.items())


def estimates(tab: Table, cfg: StudyConfig, units: list, higher: bool) -> dict:
    """Point estimates for one set of units (a bootstrap resample or all of them)."""
    q0 = finite_mean(tab.init[u] for u in units)
    means = {m: [finite_mean(tab.final(m, S, u) for u in units) for S in cfg.budgets] for m in cfg.methods}
    curves = {m: curve(tab, m, cfg.budgets, units) for m in cfg.methods}
    allv = [v for vs in means.values() for v in vs if not math.isnan(v)]
    q_best = (max if higher else min)(allv) if allv else math.nan
    target = q0 + cfg.gap * (q_best - q0)
    ref = cfg.methods[0]
    sds_target = q0 + cfg.sds_gap * (means[ref][-1] - q0)
    out = {"q_init": q0, "q_best": q_best, "target": target, "sds_target": sds_target, "means": means, "reach": {}}
    for m in cfg.methods:
        steps = reach_steps(curves[m], target, higher)
        steps_ref = reach_steps(curves[m], sds_target, higher)
        first = curves[m][0][0] if curves[m] else math.nan
        out["reach"][m] = {"gap_steps": steps, "gap_seconds": steps * tab.seconds_per_step[m],
                           "gap_censored_below": float(steps == first),
                           "sds_quality_steps": steps_ref, "sds_quality_seconds": steps_ref * tab.seconds_per_step[m],
                           "sds_quality_censored_below": float(steps_ref == first)}
    for m in cfg.methods:
        for what in ("gap", "sds_quality"):
            a, b = out["reach"][m][f"{what}_seconds"], out["reach"][ref][f"{what}_seconds"]
            out["reach"][m][f"{what}_time_ratio"] = (a / b if b and not math.isinf(b) and not math.isnan(b) else math.nan)
    return out


def resample(units: list[tuple[str, int]], rng: random.Random, cluster: bool = True) -> list[tuple[str, int]]:
    """One bootstrap resample of (prompt, seed) units: the prompts drawn with replacement, each bringing
    all its seeds (cluster=True), or the units themselves drawn (cluster=False)."""
    if not cluster:
        return [rng.choice(units) for _ in units]
    by_prompt: dict[str, list[tuple[str, int]]] = {}
    for u in units:
        by_prompt.setdefault(u[0], []).append(u)
    prompts = list(by_prompt)
    return [u for _ in prompts for u in by_prompt[rng.choice(prompts)]]


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank; inf and nan sort last."""
    xs = sorted(xs, key=lambda v: (math.isnan(v), v))
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def bootstrap(tab: Table, cfg: StudyConfig, higher: bool, seed: int = 0, cluster: bool = True) -> dict:
    """95 % percentile intervals of every scalar in `estimates`: the paired bootstrap clustered by prompt
    (module docstring; cluster=False: (prompt, seed) units drawn as if independent)."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(cfg.bootstrap):
        units = resample(tab.units, rng, cluster)
        for k, v in _flatten(estimates(tab, cfg, units, higher)).items():
            samples.setdefault(k, []).append(v)
    return {k: (percentile(v, 0.025), percentile(v, 0.975)) for k, v in samples.items()}


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, list):
            out.update({f"{name}.{i}": x for i, x in enumerate(v)})
        else:
            out[name] = v
    return out


# ---------------------------------------------------------------------------- oracle
def oracle(results: dict[str, Result], cfg: StudyConfig, cost: Optional[dict] = None) -> dict:
    """SDS at cfg.views vs cfg.oracle_views views per step (default lr), per budget, on the tuning units;
    `per_second` pairs the oracle at S with the default at the budget of about the same time."""
    if cfg.oracle_views <= 0:
        return {}
    rows = []
    for S in cfg.budgets:
        for v in (cfg.views, cfg.oracle_views):
            rs = cell_runs(results, cfg, "sds", S, 1.0, v)
            if any(r is None for r in rs):
                continue
            rows.append({"steps": S, "views": v, "runs": len(rs), "seconds": run_seconds(cost, rs),
                         **{k: finite_mean(r.metrics[k] for r in rs) for k in METRIC_KEYS}})
    per_second = []  # the oracle at S against the default at 2S (about the same wall-clock time)
    by = {(r["steps"], r["views"]): r for r in rows}
    for S in cfg.budgets:
        a, b = by.get((S, cfg.oracle_views)), by.get((S * cfg.oracle_views // cfg.views, cfg.views))
        if a and b:
            per_second.append({"oracle_steps": S, "default_steps": b["steps"], "oracle_seconds": a["seconds"],
                               "default_seconds": b["seconds"],
                               **{k: {"oracle": a[k], "default": b[k]} for k in STUDY_METRICS}})
    prof = [r.profile for r in results.values() if r.profile and r.task["method"] == "sds"
            and r.task["views"] == cfg.views]
    profile = None
    if prof:
        p = prof[0]
        tot = sum(p.values())
        profile = {k: {"seconds": v, "share": v / tot} for k, v in p.items()}
    return {"rows": rows, "per_second": per_second, "profile": profile}


# ---------------------------------------------------------------------------- views per step
def views_table(results: dict[str, Result], cfg: StudyConfig, tuned: dict, cost: Optional[dict] = None) -> list[dict]:
    """Per method, V (`view_options`) and budget S: V views x S steps at the tuned multiplier against its
    partner of about the same time, `cfg.views` views x S*V/views steps at that budget's tuned multiplier
    (means over the tuning units; a cell with any run missing is left out)."""
    from .study_plan import views_partner

    rows = []
    for m in cfg.methods:
        for V in cfg.view_options:
            for S in cfg.budgets:
                P = views_partner(cfg, S, V)
                if P is None or (m, S) not in tuned or (m, P) not in tuned:
                    continue
                a, b = cell_runs(results, cfg, m, S, tuned[m, S], V), cell_runs(results, cfg, m, P, tuned[m, P])
                if any(r is None for r in a + b):
                    continue
                rows.append({"method": m, "views": V, "steps": S, "lr_mult": tuned[m, S], "partner_steps": P,
                             "partner_lr_mult": tuned[m, P], "runs": len(a),
                             **{k: {"views": finite_mean(r.metrics[k] for r in a),
                                         "partner": finite_mean(r.metrics[k] for r in b)} for k in STUDY_METRICS},
                             "seconds": {"views": run_seconds(cost, a), "partner": run_seconds(cost, b)}})
    return rows


# ---------------------------------------------------------------------------- report
def _clean(o):
    if isinstance(o, dict):
        return {(k if isinstance(k, str) else str(k)): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float):
        return "inf" if math.isinf(o) else (None if math.isnan(o) else o)
    return o


def report(results: dict[str, Result], cfg: StudyConfig, tuned: dict, cost: Optional[dict] = None) -> dict:
    from ..provenance import versions
    from .run import machine

    rep: dict = {"meta": {"command": "steinsplat study", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "machine": machine(), "versions": versions(),
                          "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
                          "stored_runs": len(results),
                          "codes": sorted({r.code for r in results.values()}),
                          "cost": cost or "none: the runs' own times (from sessions that may have been loaded differently)"},
                 "tuned": {f"{m}@{S}": lr for (m, S), lr in sorted(tuned.items())},
                 "tuning": _tuning_table(results, cfg), "oracle": oracle(results, cfg, cost),
                 "views": views_table(results, cfg, tuned, cost), "guard": guard_table(results, cfg, tuned), "metrics": {}}
    targets = []
    for metric in STUDY_METRICS:
        tab = eval_table(results, cfg, tuned, metric, cost)
        if len(tab.units) < 2:
            rep["metrics"][metric] = {"units": len(tab.units)}
            continue
        est = estimates(tab, cfg, tab.units, HIGHER[metric])
        ci = bootstrap(tab, cfg, HIGHER[metric])
        rep["metrics"][metric] = {"units": len(tab.units), "seconds_per_step": tab.seconds_per_step, "estimate": est,
                                  "interval": ci}
        if metric == "iou_3d":
            ref = cfg.methods[0]
            pct = f"{cfg.sds_gap * 100:g} %"
            for m in cfg.methods[1:]:
                k = f"reach.{m}.sds_quality_time_ratio"
                v, (lo, hi) = est["reach"][m]["sds_quality_time_ratio"], ci.get(k, (math.nan, math.nan))
                rr, rs = est["reach"][m], est["reach"][ref]
                cens = " (read at the first evaluation: an upper bound)" if rr["sds_quality_censored_below"] or rs["sds_quality_censored_below"] else ""
                targets.append({"what": f"{m}: reaches {pct} of SDS's 3D IoU gain at {cfg.budgets[-1]} steps in <= 0.75x the "
                                        f"wall-clock time SDS needs for it, 95 % interval below 1.0 (held-out prompts, "
                                        f"{len(tab.units)} prompt x seed units, bootstrap clustered by prompt)",
                                "measured": (f"{fmt(v, 2)}x" if not math.isinf(v) else "never reached") +
                                            f" (95 % interval {fmt(lo, 2)} to {fmt(hi, 2)}; target {fmt(est['sds_target'])}: SDS at "
                                            f"{fmt(rs['sds_quality_steps'], 0)} steps, {m} at {fmt(rr['sds_quality_steps'], 0)}{cens}; "
                                            f"SDS {fmt(est['means'][ref][-1], 3)}, {m} {fmt(est['means'][m][-1], 3)} at {cfg.budgets[-1]} steps)",
                                "met": bool(v <= 0.75 and hi < 1.0)})
    missing = _missing(results, cfg, tuned)
    rep["missing"] = missing
    rep["targets"] = targets
    return _clean(rep)


def guard_table(results: dict[str, Result], cfg: StudyConfig, tuned: dict) -> list[dict]:
    """Per method x budget, over the evaluation runs that recorded their guard (SSD runs made since the
    record exists): mean share of views served the fitted gradient and the in-run second-moment ratios
    to SDS's in the guard's proxy (guidance/guard.py, `Guard.summary`)."""
    rows = []
    for m in cfg.methods:
        for S in cfg.budgets:
            if (m, S) not in tuned:
                continue
            gs = [r.guard for p in cfg.eval_prompts for sd in cfg.eval_seeds
                  if (r := results.get(Task(m, p, sd, S, tuned[m, S], cfg.views, cfg.resolution).key())) is not None and r.guard]
            if gs:
                rows.append({"method": m, "steps": S, "runs": len(gs),
                             **{k: finite_mean(g.get(k) for g in gs) for k in ("served_fit_fraction", "fit_vs_sds", "served_vs_sds")}})
    return rows


def _tuning_table(results, cfg) -> list[dict]:
    rows = []
    for m in cfg.methods:
        for S in cfg.budgets:
            for lr in cfg.lr_mults:
                rs = [r for r in cell_runs(results, cfg, m, S, lr) if r is not None]
                if rs:
                    rows.append({"method": m, "steps": S, "lr_mult": lr, "runs": len(rs),
                                 **{k: finite_mean(r.metrics[k] for r in rs) for k in STUDY_METRICS},
                                 "seconds": finite_mean(r.seconds for r in rs)})
    return rows


def _missing(results, cfg, tuned) -> dict:
    from .study_plan import eval_tasks, init_tasks, oracle_tasks, tune_tasks, views_tasks

    phases = {"init": init_tasks(cfg), "oracle": oracle_tasks(cfg), "tune": tune_tasks(cfg), "eval": eval_tasks(cfg, tuned),
              "views": views_tasks(cfg, tuned)}
    out = {k: sum(1 for t in ts if t.key() not in results) for k, ts in phases.items()}
    out["eval_untuned_cells"] = [f"{m}@{S}" for m in cfg.methods for S in cfg.budgets if (m, S) not in tuned]
    return out


def markdown(rep: dict) -> str:
    meta, cfg = rep["meta"], rep["meta"]["config"]
    L = ["# SSD convergence study", "",
         f"- command: `{meta['command']}`; date {meta['date']}; machine: {meta['machine']}",
         f"- methods {', '.join(cfg['methods'])}; budgets {cfg['budgets']}; lr multipliers {cfg['lr_mults']}; "
         f"{cfg['views']} views at {cfg['resolution']} px",
         f"- tuning: {len(cfg['tune_prompts'])} prompts x seeds {cfg['tune_seeds']}; evaluation (held out): "
         f"{len(cfg['eval_prompts'])} prompts x seeds {cfg['eval_seeds']}",
         "- times: " + (f"the cost per step measured side by side on {meta['cost']['date']} ("
                        + ", ".join(f"{k} {v:.3f} s" for k, v in meta["cost"]["seconds_per_step"].items())
                        + "); s/run in the tuning table: the run's own time" if isinstance(meta["cost"], dict) else meta["cost"]),
         f"- stored runs {meta['stored_runs']} (code {', '.join(meta['codes'])}); missing: "
         + ", ".join(f"{k} {v}" for k, v in rep["missing"].items() if k != "eval_untuned_cells"), ""]
    L += ["## Targets", ""] + [f"- **{'met' if t['met'] else 'NOT met'}** — {t['what']}: {t['measured']}"
                               for t in rep["targets"]] + [""]
    L += ["## Tuned learning-rate multipliers (best mean 3D IoU on the tuning prompts)", "",
          "| method | steps | lr x | 3D IoU | chamfer mm | top IoU | s/run (own) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rep["tuning"]:
        star = " **(tuned)**" if rep["tuned"].get(f"{r['method']}@{r['steps']}") == r["lr_mult"] else ""
        L.append(f"| {r['method']} | {r['steps']} | {r['lr_mult']:g}{star} | {fmt(r['iou_3d'])} | {fmt(r['chamfer_mm'], 1)} | "
                 f"{fmt(r['top_iou'])} | {fmt(r['seconds'], 0)} |")
    o = rep["oracle"]
    if o and o.get("rows"):
        L += ["", f"## Oracle: SDS with more views per step (default lr, tuning prompts)", "",
              "| steps | views | 3D IoU | chamfer mm | top IoU | s/run |", "|---:|---:|---:|---:|---:|---:|"]
        L += [f"| {r['steps']} | {r['views']} | {fmt(r['iou_3d'])} | {fmt(r['chamfer_mm'], 1)} | {fmt(r['top_iou'])} | "
              f"{fmt(r['seconds'], 0)} |" for r in o["rows"]]
        for r in o.get("per_second", []):
            L.append(f"\nSame time: {cfg['oracle_views']} views x {r['oracle_steps']} steps ({fmt(r['oracle_seconds'], 0)} s) vs "
                     f"{cfg['views']} views x {r['default_steps']} steps ({fmt(r['default_seconds'], 0)} s): 3D IoU "
                     f"{fmt(r['iou_3d']['oracle'])} vs {fmt(r['iou_3d']['default'])}, chamfer {fmt(r['chamfer_mm']['oracle'], 1)} vs "
                     f"{fmt(r['chamfer_mm']['default'], 1)} mm")
        if o.get("profile"):
            L += ["", "Where a step's time goes (one SDS run): " + ", ".join(
                f"{k} {v['share'] * 100:.0f} %" for k, v in o["profile"].items())]
    if rep.get("views"):
        L += ["", f"## Views per step at the tuned multiplier (tuning prompts), against {cfg['views']} views at about the same time", "",
              "| method | views x steps (lr x) | s/run | 3D IoU | chamfer mm | colour err | "
              f"{cfg['views']} views x steps (lr x) | s/run | 3D IoU | chamfer mm | colour err |", "|---|---|" + "---:|" * 4 + "---|" + "---:|" * 4]
        for r in rep["views"]:
            side = lambda k: (f"{fmt(r['seconds'][k], 0)} | {fmt(r['iou_3d'][k])} | {fmt(r['chamfer_mm'][k], 1)} | "
                              f"{fmt(r['colour_error'][k])}")
            L.append(f"| {r['method']} | {r['views']} x {r['steps']} ({r['lr_mult']:g}) | {side('views')} | "
                     f"{cfg['views']} x {r['partner_steps']} ({r['partner_lr_mult']:g}) | {side('partner')} |")
    if rep.get("guard"):
        L += ["", "## What SSD's guard did (evaluation runs; second moments in the guard's proxy, served / SDS an upper "
              "bound of the variance ratio where below 1)", "",
              "| method | steps | runs | views served the fit | fit / SDS | served / SDS |", "|---|---:|---:|---:|---:|---:|"]
        L += [f"| {r['method']} | {r['steps']} | {r['runs']} | {fmt(r['served_fit_fraction'], 2)} | {fmt(r['fit_vs_sds'], 3)} | "
              f"{fmt(r['served_vs_sds'], 3)} |" for r in rep["guard"]]
    for metric, d in rep["metrics"].items():
        if "estimate" not in d:
            L += ["", f"## {metric}: not enough complete evaluation units ({d['units']})"]
            continue
        est, ci = d["estimate"], d["interval"]
        L += ["", f"## {metric} on the held-out prompts ({d['units']} units; 95 % bootstrap intervals clustered by prompt)", "",
              f"initial {fmt(est['q_init'])}, best {fmt(est['q_best'])}, {cfg['gap'] * 100:g} %-of-gap target {fmt(est['target'])}, "
              f"{cfg['sds_gap'] * 100:g} % of SDS's gain {fmt(est['sds_target'])} (steps read from the runs' evaluations)", "",
              "| method | " + " | ".join(f"{S} steps" for S in cfg["budgets"]) + " | steps to target | s to target | "
              f"steps to {cfg['sds_gap'] * 100:g} % of SDS | time vs SDS at that quality |", "|---|" + "---:|" * (len(cfg["budgets"]) + 4)]
        for m in cfg["methods"]:
            cells = [f"{fmt(v)} [{fmt(ci[f'means.{m}.{i}'][0])}, {fmt(ci[f'means.{m}.{i}'][1])}]"
                     for i, v in enumerate(est["means"][m])]
            rr = est["reach"][m]
            le = lambda c: "<= " if c else ""  # noqa: E731  met at the first evaluation: an upper bound
            L.append(f"| {m} | " + " | ".join(cells) + f" | {le(rr['gap_censored_below'])}{_ci(rr['gap_steps'], ci[f'reach.{m}.gap_steps'], 0)} | "
                     f"{_ci(rr['gap_seconds'], ci[f'reach.{m}.gap_seconds'], 0)} | "
                     f"{le(rr['sds_quality_censored_below'])}{_ci(rr['sds_quality_steps'], ci[f'reach.{m}.sds_quality_steps'], 0)} | "
                     f"{_ci(rr['sds_quality_time_ratio'], ci[f'reach.{m}.sds_quality_time_ratio'], 2)} |")
        L.append(f"\nseconds per step: " + ", ".join(f"{m} {v:.3f}" for m, v in d["seconds_per_step"].items()))
    return "\n".join(L) + "\n"


def fmt(v, d: int = 3) -> str:
    """A number for the report: '-' when missing (None, NaN), 'never' when infinite (also as "inf" in JSON)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == "inf" or (isinstance(v, float) and math.isinf(v)):
        return "never"
    return f"{v:.{d}f}"


def _ci(v, ci, d) -> str:
    return f"{fmt(v, d)} [{fmt(ci[0], d)}, {fmt(ci[1], d)}]"


def write_report(rep: dict, folder: Path, name: str = "report") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{name}.json", folder / f"{name}.md"]
    atomic_write_bytes(files[0], (json.dumps(rep, indent=1) + "\n").encode())
    atomic_write_bytes(files[1], markdown(rep).encode())
    return files
