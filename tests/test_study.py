"""steinsplat study: the crossing rule, the tuning, the bootstrap, reuse of stored runs, one real run."""

from __future__ import annotations

import json
import math
import random

import pytest

from steinsplat import config
from steinsplat.bench import study, study_stats
from steinsplat.bench.study import Result, StudyConfig, Task


def test_reach_steps_reads_thresholds_from_the_evaluated_points_only():
    pts = [(100, 0.5), (200, 0.7), (400, 0.9)]
    assert study_stats.reach_steps(pts, 0.8, True) == pytest.approx(300.0)  # between two evaluations
    assert study_stats.reach_steps(list(reversed(pts)), 0.8, True) == pytest.approx(300.0)  # any order
    # below the first evaluation: that evaluation's steps (an upper bound), never a line from step 0
    assert study_stats.reach_steps(pts, 0.4, True) == 100.0
    assert study_stats.reach_steps(pts, 0.95, True) == math.inf  # censored
    # lower is better (chamfer): 20 -> 10 -> 5 mm; 7.5 mm is reached half-way from 200 to 400
    assert study_stats.reach_steps([(100, 20.0), (200, 10.0), (400, 5.0)], 7.5, False) == pytest.approx(300.0)
    # a dip does not count as reached: the first evaluation at or past the target decides
    assert study_stats.reach_steps([(100, 0.9), (200, 0.5), (400, 0.95)], 0.8, True) == 100.0
    assert study_stats.reach_steps([(50, 0.3), (100, 0.9), (200, 0.5)], 0.8, True) == pytest.approx(50 + 0.5 / 0.6 * 50)


def test_a_runs_trajectory_and_the_curve_prefer_the_run_made_for_that_many_steps():
    t = Task("sds", "a red cube", 0, 400, 1.0, 4, 64, evals=[0.25, 0.5])
    assert t.evals == (0.25, 0.5) and t.eval_steps() == [100, 200] and t.key() == Task("sds", "a red cube", 0, 400, 1.0, 4, 64).key()
    r = _result(t, 0.9)
    r.trajectory = [{"step": 100, "seconds": 1.0, "metrics": {"iou_3d": 0.5}}, {"step": 200, "seconds": 2.0, "metrics": {"iou_3d": 0.7}}]
    assert study_stats.trajectory(r, "iou_3d") == [(100, 0.5), (200, 0.7), (400, 0.9)]
    old = _result(Task("sds", "a red cube", 0, 200, 1.0, 4, 64), 0.8)  # a stored run from before: its end only
    assert study_stats.trajectory(old, "iou_3d") == [(200, 0.8)]
    tab = study_stats.Table([("a red cube", 0)], {}, {"sds": {200: {("a red cube", 0): [(200, 0.8)]},
                                                           400: {("a red cube", 0): [(100, 0.5), (200, 0.7), (400, 0.9)]}}}, {})
    assert study_stats.curve(tab, "sds", (200, 400), [("a red cube", 0)]) == [(100, 0.5), (200, 0.8), (400, 0.9)]


def test_percentile_nearest_rank_with_infinities_last():
    xs = [3.0, 1.0, math.inf, 2.0]
    assert study_stats.percentile(xs, 0.25) == 1.0
    assert study_stats.percentile(xs, 0.5) == 2.0
    assert study_stats.percentile(xs, 1.0) == math.inf
    assert math.isnan(study_stats.percentile([], 0.5))


def _cfg(**kw) -> StudyConfig:
    base = dict(methods=("sds", "ssd"), budgets=(100, 200, 400), lr_mults=(0.5, 1.0, 2.0),
                tune_prompts=("a red cube", "a gray pyramid"), tune_seeds=(0,),
                eval_prompts=("a blue sphere", "a green cube", "an orange cone", "a cyan torus"), eval_seeds=(0, 1),
                views=4, oracle_views=8, resolution=64, bootstrap=300)
    base.update(kw)
    return StudyConfig(**base)


def _result(task: Task, iou: float, seconds_per_step: float = 0.1, curve=None) -> Result:
    """A stored run; with `curve` (steps -> 3D IoU), also its evaluations at the task's eval_steps."""
    def metrics(q):
        m = {k: None for k in study.METRIC_KEYS}
        m.update(iou_3d=q, chamfer_mm=50.0 * (1 - q), top_iou=q)
        return m

    traj = None
    if curve is not None and task.evals:
        traj = [{"step": s, "seconds": seconds_per_step * s, "metrics": metrics(curve(s))} for s in task.eval_steps()]
    return Result(vars(task).copy(), metrics(iou), seconds_per_step * task.steps, seconds_per_step, 100, 0, None, "test",
                  "now", traj)


def _curve(S: float) -> float:
    """A saturating quality curve of the steps: 0.3 at 0, approaching a plateau at 0.9."""
    return 0.9 - 0.6 * math.exp(-S / 150.0)


def _synthetic(cfg: StudyConfig, speedup: dict[str, float], lr_best: float = 1.0, noise: float = 0.0,
               prompt_noise: float = 0.0, prompt_speedup: dict | None = None, run_noise: float = 0.0) -> dict:
    """Stored results in which method m after s steps of any run has the quality SDS has after
    speedup[m] * s (at its best multiplier; the others are worse), with noise per unit (`noise`) and
    per prompt (`prompt_noise`), shared by a unit's runs of every method (common random numbers), and
    per (method, unit) (`run_noise`, what two equal methods differ by);
    prompt_speedup[(m, prompt)] overrides speedup[m] for one prompt. The evaluation runs carry their
    trajectories at cfg.eval_fractions."""
    rng = random.Random(0)
    out = {}
    prompt_off = {p: rng.gauss(0.0, prompt_noise) for p in cfg.tune_prompts + cfg.eval_prompts}
    units = [(p, s) for p in cfg.tune_prompts + cfg.eval_prompts for s in (*cfg.tune_seeds, *cfg.eval_seeds)]
    for p, s in units:
        off = rng.gauss(0.0, noise) + prompt_off[p]
        out[Task("init", p, s, 0, 1.0, cfg.views, cfg.resolution).key()] = _result(
            Task("init", p, s, 0, 1.0, cfg.views, cfg.resolution), _curve(0) + off)
        for m, k in speedup.items():
            k = (prompt_speedup or {}).get((m, p), k)
            off_m = off + rng.gauss(0.0, run_noise)
            for S in cfg.budgets:
                for lr in cfg.lr_mults:
                    t = Task(m, p, s, S, lr, cfg.views, cfg.resolution, evals=cfg.eval_fractions if p in cfg.eval_prompts else ())
                    penalty = 0.0 if lr == lr_best else 0.05
                    out[t.key()] = _result(t, _curve(k * S) + off_m - penalty,
                                           curve=lambda st, k=k, o=off_m, penalty=penalty: _curve(k * st) + o - penalty)
    return out


def test_tune_picks_the_best_multiplier_and_skips_incomplete_ones():
    cfg = _cfg()
    res = _synthetic(cfg, {"sds": 1.0, "ssd": 1.0}, lr_best=2.0)
    tuned = study_stats.tune(res, cfg)
    assert tuned == {(m, S): 2.0 for m in ("sds", "ssd") for S in cfg.budgets}
    del res[Task("ssd", "a red cube", 0, 200, 2.0, 4, 64).key()]  # one tuning run missing: 2.0 cannot win there
    assert study_stats.tune(res, cfg)["ssd", 200] != 2.0
    # a tie goes to the multiplier nearest 1
    flat = _synthetic(cfg, {"sds": 1.0}, lr_best=-1.0)  # every multiplier gets the same penalty
    assert study_stats.tune(flat, _cfg(methods=("sds",)))["sds", 100] == 1.0


def test_a_method_twice_as_fast_on_a_plateau_needs_half_the_time_and_the_interval_says_so():
    cfg = _cfg()
    res = _synthetic(cfg, {"sds": 1.0, "ssd": 2.0}, noise=0.02)
    tuned = study_stats.tune(res, cfg)
    rep = study_stats.report(res, cfg, tuned)
    d = rep["metrics"]["iou_3d"]
    assert d["units"] == 8
    est = d["estimate"]
    r, r_sds = est["reach"]["ssd"], est["reach"]["sds"]
    # 95 % of SDS's gain (0.3 -> 0.858 at 400 steps) is 0.830: SDS's curve reaches it at ~322 steps, SSD's at ~161,
    # both read between evaluated points of their runs (the 400-step runs' evaluations at 100 and 200 steps, the ends)
    assert est["sds_target"] == pytest.approx(0.3 + 0.95 * (_curve(400) - 0.3), abs=0.01)
    assert r_sds["sds_quality_steps"] == pytest.approx(322, rel=0.1) and r["sds_quality_steps"] == pytest.approx(161, rel=0.1)
    assert r["sds_quality_time_ratio"] == pytest.approx(0.5, abs=0.05)
    assert r_sds["sds_quality_time_ratio"] == pytest.approx(1.0)  # SDS against itself
    lo, hi = d["interval"]["reach.ssd.sds_quality_time_ratio"]
    assert lo <= r["sds_quality_time_ratio"] <= hi < 1.0
    (target,) = rep["targets"]
    assert target["met"] and "0.5" in target["measured"]
    assert "clustered by prompt" in study_stats.markdown(rep)


def test_two_equal_methods_give_an_interval_that_contains_one_not_never():
    cfg = _cfg()
    res = _synthetic(cfg, {"sds": 1.0, "ssd": 1.0}, noise=0.02, run_noise=0.01)
    for r in res.values():  # what the SSD runs' guard recorded
        if r.task["method"] == "ssd":
            r.guard = {"views": 400, "served_fit_fraction": 0.5, "fit_vs_sds": 0.98, "served_vs_sds": 0.99}
    rep = study_stats.report(res, cfg, study_stats.tune(res, cfg))
    assert {(g["method"], g["steps"], g["runs"], g["served_fit_fraction"]) for g in rep["guard"]} == {("ssd", S, 8, 0.5) for S in cfg.budgets}
    assert "## What SSD's guard did" in study_stats.markdown(rep)
    est = rep["metrics"]["iou_3d"]["estimate"]
    # on the plateau SSD's final mean is a hair below SDS's: SDS's final quality itself is never reached by it,
    # while 95 % of SDS's gain is reached alike
    assert est["means"]["ssd"][-1] < est["means"]["sds"][-1]
    assert study_stats.reach_steps(study_stats.curve(study_stats.eval_table(res, _cfg(), study_stats.tune(res, cfg), "iou_3d"),
                                                     "ssd", cfg.budgets, [(p, s) for p in cfg.eval_prompts for s in cfg.eval_seeds]),
                                   est["means"]["sds"][-1], True) == math.inf
    d = rep["metrics"]["iou_3d"]
    (target,) = rep["targets"]
    assert not target["met"] and "never" not in target["measured"]
    v = d["estimate"]["reach"]["ssd"]["sds_quality_time_ratio"]
    lo, hi = d["interval"]["reach.ssd.sds_quality_time_ratio"]
    assert v == pytest.approx(1.0, abs=0.05) and lo <= 1.0 <= hi and math.isfinite(hi)


def test_the_cluster_bootstrap_is_wider_than_the_unit_bootstrap_when_prompts_differ():
    """Prompts that differ strongly (a shared offset per prompt, and SSD 2x faster on half of them, 1x on the
    others): the seeds of a prompt are not independent evidence, and resampling prompts shows it."""
    cfg = _cfg(eval_seeds=(0, 1, 2, 3), bootstrap=400)
    fast = {("ssd", p): (2.0 if i % 2 == 0 else 1.0) for i, p in enumerate(cfg.eval_prompts)}
    res = _synthetic(cfg, {"sds": 1.0, "ssd": 1.5}, noise=0.005, prompt_noise=0.05, prompt_speedup=fast)
    tuned = study_stats.tune(res, cfg)
    tab = study_stats.eval_table(res, cfg, tuned, "iou_3d")
    assert len(tab.units) == 16
    clu = study_stats.bootstrap(tab, cfg, True, cluster=True)
    uni = study_stats.bootstrap(tab, cfg, True, cluster=False)
    width = lambda ci, k: ci[k][1] - ci[k][0]  # noqa: E731
    for k in ("means.sds.2", "reach.ssd.sds_quality_time_ratio"):
        assert width(clu, k) > 1.3 * width(uni, k), k
    # a cluster resample keeps every seed of a drawn prompt together
    rs = study_stats.resample(tab.units, random.Random(0))
    assert len(rs) == len(tab.units) and all(sum(1 for u in rs if u[0] == p) % 4 == 0 for p in {u[0] for u in rs})


def test_incomplete_units_are_left_out_and_reported_missing():
    cfg = _cfg()
    res = _synthetic(cfg, {"sds": 1.0, "ssd": 1.0})
    tuned = study_stats.tune(res, cfg)
    del res[Task("ssd", "a blue sphere", 1, 400, tuned["ssd", 400], 4, 64).key()]
    rep = study_stats.report(res, cfg, tuned)
    assert rep["metrics"]["iou_3d"]["units"] == 7
    assert rep["missing"]["eval"] == 1


def test_oracle_rows_pair_the_same_wall_clock_time():
    cfg = _cfg(methods=("sds",))
    res = {}
    for p in cfg.tune_prompts:
        for S in cfg.budgets:
            for v in (4, 8):
                t = Task("sds", p, 0, S, 1.0, v, 64)
                res[t.key()] = _result(t, _curve(S * v / 4), seconds_per_step=0.025 * v)
    o = study_stats.oracle(res, cfg)
    assert len(o["rows"]) == 6
    # 8 views x 100 steps against 4 views x 200 steps: same time, same quality in this world
    first = o["per_second"][0]
    assert (first["oracle_steps"], first["default_steps"]) == (100, 200)
    assert first["oracle_seconds"] == pytest.approx(first["default_seconds"])
    assert first["iou_3d"]["oracle"] == pytest.approx(first["iou_3d"]["default"])


def test_views_per_step_pair_runs_of_about_the_same_time_at_the_tuned_multipliers():
    cfg = _cfg(methods=("sds",), budgets=(50, 100, 200, 400), view_options=(2, 8))
    tuned = {("sds", 50): 4.0, ("sds", 100): 4.0, ("sds", 200): 2.0, ("sds", 400): 1.0}
    tasks = study.views_tasks(cfg, tuned)
    # 2 views x S against 4 views x S/2 (S = 100, 200, 400); 8 views x S against 4 views x 2S (S = 50, 100, 200)
    assert sorted({(t.views, t.steps, t.lr_mult) for t in tasks}) == [
        (2, 100, 4.0), (2, 200, 2.0), (2, 400, 1.0), (8, 50, 4.0), (8, 100, 4.0), (8, 200, 2.0)]
    assert len(tasks) == 6 * len(cfg.tune_prompts) and {t.prompt for t in tasks} == set(cfg.tune_prompts)
    # a world where only steps x views count (variance-limited) and a step costs its views: pairs tie
    res = {}
    for t in tasks + [Task("sds", p, 0, S, tuned["sds", S], 4, 64) for p in cfg.tune_prompts for S in cfg.budgets]:
        res[t.key()] = _result(t, _curve(t.steps * t.views / 4), seconds_per_step=0.025 * t.views)
    del res[tasks[0].key()]  # one run missing: its cell is left out, the others stay
    rows = study_stats.views_table(res, cfg, tuned)
    assert len(rows) == 5
    for r in rows:
        assert r["partner_steps"] * 4 == r["steps"] * r["views"] and r["partner_lr_mult"] == tuned["sds", r["partner_steps"]]
        assert r["seconds"]["views"] == pytest.approx(r["seconds"]["partner"])
        assert r["iou_3d"]["views"] == pytest.approx(r["iou_3d"]["partner"])
    md = study_stats.markdown(study_stats.report(res, cfg, tuned))
    assert "## Views per step" in md and "| sds | 8 x 50 (4) |" in md
    with pytest.raises(config.ConfigError, match="--view-options"):
        study.check_config(_cfg(view_options=(4,)))


def test_seconds_come_from_the_side_by_side_cost_not_from_the_runs_own_times():
    cfg = _cfg()
    res = _synthetic(cfg, {"sds": 1.0, "ssd": 1.0})
    for r in res.values():  # SSD's runs were made on a faster day: their own times are half SDS's
        if r.task["method"] == "ssd":
            r.seconds /= 2
    tuned = study_stats.tune(res, cfg)
    own = study_stats.report(res, cfg, tuned)["metrics"]["iou_3d"]["estimate"]["reach"]["ssd"]
    cost = {"seconds_per_step": {"sds@4": 0.1, "ssd@4": 0.1}, "date": "today"}
    rep = study_stats.report(res, cfg, tuned, cost)
    assert own["gap_time_ratio"] == pytest.approx(0.5) and own["sds_quality_time_ratio"] == pytest.approx(0.5)
    assert rep["metrics"]["iou_3d"]["estimate"]["reach"]["ssd"]["gap_time_ratio"] == pytest.approx(1.0)
    assert "measured side by side on today" in study_stats.markdown(rep)


def test_the_cost_probe_times_every_cell_in_one_process():
    from steinsplat.geometry import ShapeWorldEstimatorAdapter
    from steinsplat.priors import ShapeWorldPriorAdapter

    prior, est = ShapeWorldPriorAdapter.from_pretrained(None), ShapeWorldEstimatorAdapter.from_pretrained(None)
    cfg = _cfg(probe_steps=2, resolution=32)
    cost = study.measure_cost(["sds@2", "ssd@2", "sds@1"], cfg, prior, est)
    assert list(cost) == ["sds@2", "ssd@2", "sds@1"] and all(0 < v < 60 and math.isfinite(v) for v in cost.values())


def test_results_round_trip_and_unreadable_files_are_skipped(tmp_path):
    t = Task("ssd", "a red cube", 2, 100, 0.5, 4, 64)
    study.save_result(tmp_path, _result(t, 0.8))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "renamed.json").write_text((tmp_path / f"{t.key()}.json").read_text())  # key does not match its name
    got = study.load_results(tmp_path)
    assert list(got) == [t.key()]
    assert got[t.key()].metrics["iou_3d"] == 0.8 and Task(**got[t.key()].task) == t


def test_the_study_runs_what_is_missing_once_and_stops_at_the_deadline(tmp_path, monkeypatch):
    calls = []

    def fake_work(task):
        calls.append(task)
        return _result(task, _curve(task.steps) * (1.0 + 0.1 * (task.lr_mult == 2.0)))

    probes = []

    def fake_cost(cells, cfg, prior, est, rounds=2):
        probes.append(list(cells))
        return {c: 0.01 * int(c.rsplit("@", 1)[1]) for c in cells}

    monkeypatch.setattr(study, "_init_worker", lambda: None)
    monkeypatch.setattr(study, "_work", fake_work)
    monkeypatch.setattr(study, "measure_cost", fake_cost)
    cfg = _cfg(out=tmp_path, jobs=1, bootstrap=50)
    rep = study.run_study(cfg, log=lambda s: None)
    n_first = len(calls)
    # the cost is measured once, before the runs, for every method x views the report needs
    assert probes == [["sds@4", "sds@2", "sds@8", "ssd@4", "ssd@2", "ssd@8"]]
    assert rep["metrics"]["iou_3d"]["seconds_per_step"] == {"sds": 0.04, "ssd": 0.04}
    # the oracle's profiled run shares its settings with a tuning run: it is run once, profiled
    assert sorted((c.steps, c.views, c.prompt) for c in calls if c.profile) == [(100, 4, "a red cube"), (100, 8, "a red cube")]
    # init (2 + 8 units) + oracle 8-view (2 x 3) + tuning (2 methods x 3 budgets x 3 lr x 2) + eval (2 x 3 x 8)
    # + views per step (2 methods x (2 views at 200, 400 + 8 views at 100, 200) x 2 prompts)
    assert n_first == 10 + 6 + 36 + 48 + 16
    assert sorted({(c.views, c.steps, c.lr_mult) for c in calls if c.views != 4}) == [
        (2, 200, 2.0), (2, 400, 2.0), (8, 100, 1.0), (8, 100, 2.0), (8, 200, 1.0), (8, 200, 2.0), (8, 400, 1.0)]
    assert rep["tuned"] == {f"{m}@{S}": 2.0 for m in ("sds", "ssd") for S in (100, 200, 400)}
    assert len(list((tmp_path / "runs").glob("*.json"))) == n_first
    assert all(v == 0 for k, v in rep["missing"].items() if k != "eval_untuned_cells")
    # a second invocation reuses everything; a deleted file is run again
    (tmp_path / "runs" / f"{Task('sds', 'a cyan torus', 1, 200, 2.0, 4, 64).key()}.json").unlink()
    study.run_study(cfg, log=lambda s: None)
    assert len(calls) == n_first + 1 and calls[-1].prompt == "a cyan torus"
    assert len(probes) == 1  # the stored cost covers the same cells: reused
    # a deadline already past: nothing new starts, and the report counts what is missing
    more = _cfg(out=tmp_path, jobs=1, bootstrap=50, eval_seeds=(0, 1, 2), max_minutes=1e-9)
    rep = study.run_study(more, log=lambda s: None)
    assert len(calls) == n_first + 1
    assert rep["meta"]["unrun"] > 0 and rep["missing"]["eval"] == 2 * 3 * 4 and rep["missing"]["init"] == 4
    # a method the stored cost lacks: every cell is measured again, side by side
    study.run_study(_cfg(out=tmp_path, jobs=1, bootstrap=50, methods=("sds", "ssd-depth"), max_minutes=1e-9), log=lambda s: None)
    assert probes[-1] == ["sds@4", "sds@2", "sds@8", "ssd-depth@4", "ssd-depth@2", "ssd-depth@8", "ssd@4", "ssd@2", "ssd@8"]
    assert json.loads((tmp_path / "cost.json").read_text())["seconds_per_step"]["ssd-depth@8"] == pytest.approx(0.08)
    files = study_stats.write_report(rep, tmp_path, "report-more")
    assert [f.name for f in files] == ["report-more.json", "report-more.md"]
    assert json.loads(files[0].read_text())["missing"]["eval"] == 24
    assert "## Targets" in files[1].read_text()


def test_one_real_run_is_timed_profiled_and_leaves_the_prior_as_it_was():
    from steinsplat import trainer as train
    from steinsplat.geometry import ShapeWorldEstimatorAdapter
    from steinsplat.priors import ShapeWorldPriorAdapter

    prior, est = ShapeWorldPriorAdapter.from_pretrained(None), ShapeWorldEstimatorAdapter.from_pretrained(None)
    render_before = train.render
    r = study.run_task(Task("ssd", "a red cube", 0, 4, 2.0, 2, 32, profile=True, evals=(0.5,)), prior, est)
    assert "predict_noise" not in vars(prior) and train.render is render_before
    # evaluated part-way (untimed: the step-2 seconds are the first two steps'), and the guard's record
    (mid,) = r.trajectory
    assert mid["step"] == 2 and 0 < mid["seconds"] < r.seconds and 0 <= mid["metrics"]["iou_3d"] <= 1
    assert set(r.guard) >= {"views", "served_fit_fraction", "fit_vs_sds", "served_vs_sds"} and r.guard["views"] == 8
    assert r.guard["proxy"] == "render"
    assert set(r.profile) == {"prior", "render", "rest"} and all(v >= 0 for v in r.profile.values())
    assert sum(r.profile.values()) == pytest.approx(r.seconds, rel=1e-6) and r.profile["prior"] > 0
    assert 0 <= r.metrics["iou_3d"] <= 1 and r.metrics["chamfer_mm"] > 0 and r.gaussians > 0
    init = study.run_task(Task("init", "a red cube", 0, 0, 1.0, 2, 32), prior, est)
    assert init.trajectory is None and init.guard is None
    assert init.seconds == 0.0 and init.metrics["iou_3d"] != r.metrics["iou_3d"]


def test_scaled_optim_scales_every_learning_rate():
    from steinsplat.trainer import OptimConfig

    a, b = OptimConfig(), study.scaled_optim(OptimConfig(), 2.0)
    for n in ("lr_means", "lr_means_final", "lr_scales", "lr_quats", "lr_opacities", "lr_sh0", "lr_shN"):
        assert getattr(b, n) == pytest.approx(2 * getattr(a, n))
    assert b.densify == a.densify and b.steps == a.steps


@pytest.mark.parametrize("args, word", [
    (["--methods", "ssd", "sds"], "start with sds"),
    (["--methods", "sds", "magic"], "magic"),
    (["--budgets", "200", "100"], "--budgets"),
    (["--lr-mults", "0"], "--lr-mults"),
    (["--eval-prompts", "a red cube"], "held out"),
    (["--tune-prompts", "a room with blue walls and a gray floor"], "rooms"),
    (["--eval-prompts", "a corgi"], "corgi"),
    (["--gap", "1.5"], "--gap"),
    (["--sds-gap", "0"], "--sds-gap"),
    (["--eval-fractions", "1.0"], "--eval-fractions"),
    (["--view-options", "0"], "--view-options"),
    (["--report-name", "../x"], "--report-name"),
    (["--probe-steps", "-1"], "--probe-steps"),
])
def test_bad_study_options_give_one_clear_error(args, word, tmp_path):
    cfg = config.parse(StudyConfig, [*args, "--out", str(tmp_path)], prog="steinsplat study")
    with pytest.raises(config.ConfigError, match=word):
        study.run_study(cfg, log=lambda s: None)
