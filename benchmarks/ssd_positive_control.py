"""Gate 2 of the SSD regime search (the positive control, <= 30 min): does removing eps-noise help?

    python benchmarks/ssd_positive_control.py [--regime mixture] [--out docs/bench/gates/control-mixture]
        [--prompts "a cube;a red shape;a pyramid;a blue shape"] [--seeds 0 1] [--budgets 25 50] [--lr-mults 4 8]
        [--shard K/N] [--no-run]

Before asking whether SSD speeds score distillation up, ask whether anything that lowers the
eps-variance can: SDS against
    sds-eps4   the eps-oracle (4 independent eps per view at the same cameras and t, averaged: a
               quarter of SDS's eps-variance, the ceiling of any eps control variate at K = 4), and
    sds @ 8    SDS with 8 views per step instead of 4 (halves every variance component),
each at its own tuned learning-rate multiplier (the best mean nearest-mode 3D IoU over `lr_mults` on
these units, per budget), at short budgets, on `prompts` x `seeds` (units). A regime is eps-limited
when the eps-oracle gains >= 0.02 nearest-mode 3D IoU or lowers the nearest-mode colour error by
>= 15 %, with the paired 95 % bootstrap interval (units resampled by prompt) above 0.
Runs are the study's (`bench/study.py` Task / run_task, stored one JSON each under OUT/runs and
reused); the regime (`steinsplat.bench.regimes`) sets the prompts, the prior (default or textured),
its camera branch and its guidance scale.
Writes OUT/control.json and prints the gate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import time
from pathlib import Path

import torch

GATE_IOU_GAIN = 0.02  # nearest-mode 3D IoU the eps-oracle must gain
GATE_COLOUR_GAIN = 0.15  # or the relative drop of the nearest-mode colour error


def clustered_paired_interval(diffs: dict[tuple[str, int], float], reps: int = 2000, seed: int = 0) -> dict:
    """Mean of paired differences over units (prompt, seed) with the study's percentile bootstrap
    clustered by prompt (`study_stats.resample`: a prompt drawn brings all its seeds)."""
    from steinsplat.bench.study_stats import percentile, resample

    units = sorted(diffs)
    if not units:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = random.Random(seed)
    means = []
    for _ in range(reps):
        pick = resample(units, rng)
        means.append(sum(diffs[u] for u in pick) / len(pick))
    return {"mean": sum(diffs.values()) / len(units), "lo": percentile(means, 0.025), "hi": percentile(means, 0.975),
            "n": len(units), "prompts": len({p for p, _ in units})}


def main() -> None:
    from steinsplat.bench.convergence import code_fingerprint
    from steinsplat.bench.regimes import regime_priors, regime_prompt
    from steinsplat.bench.run import machine, prompt_list
    from steinsplat.bench.study import Task, load_results, run_task, save_result
    from steinsplat.export.atomic import atomic_write_bytes
    from steinsplat.pipeline import versions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", default="mixture", help="a name of steinsplat.bench.regimes.REGIMES")
    ap.add_argument("--out", type=Path, default=None, help="default docs/bench/gates/control-REGIME")
    ap.add_argument("--prompts", default="a cube;a red shape;a pyramid;a blue shape")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--budgets", type=int, nargs="+", default=[25, 50])
    ap.add_argument("--lr-mults", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=[],
                    help="more methods run like SDS (4 views, each at its own tuned multiplier), e.g. ssd ssd-sham: "
                         "a first, in-sample look at them on the control's units")
    ap.add_argument("--only-methods", action="store_true",
                    help="run only the --methods arms (another process runs the control's own arms)")
    ap.add_argument("--no-run", action="store_true", help="only summarise the stored runs")
    ap.add_argument("--shard", default="0/1", metavar="K/N",
                    help="run only every N-th missing run from the K-th (0-based): N processes with K = 0..N-1 share "
                         "the runs (each stored as it finishes); then summarise with --no-run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path(f"docs/bench/gates/control-{args.regime}")
    prompts = prompt_list(args.prompts)
    prompts = [regime_prompt(args.regime, p) for p in prompts]
    arms = [("sds", args.views), ("sds-eps4", args.views), ("sds", 2 * args.views)] + [(m, args.views) for m in args.methods]
    tasks = [Task(m, p, s, S, lr, v, args.resolution) for S in args.budgets for lr in args.lr_mults for m, v in arms
             for p in prompts for s in args.seeds]
    results = load_results(out / "runs")
    todo = [t for t in tasks if t.key() not in results
            and (not args.only_methods or (t.method, t.views) in [(m, args.views) for m in args.methods])]
    k_shard, n_shard = (int(x) for x in args.shard.split("/"))
    if not 0 <= k_shard < n_shard:
        raise SystemExit(f"--shard {args.shard}: need K/N with 0 <= K < N, e.g. 0/2 and 1/2 for two processes")
    todo = todo[k_shard::n_shard]
    stored = sum(t.key() in results for t in tasks)
    print(f"{len(tasks)} runs, {stored} stored, {len(todo)} to run here", flush=True)
    t_start = time.perf_counter()
    if todo and not args.no_run:
        prior, est = regime_priors(args.regime)  # the regime's prior (default or textured), set for the regime
        for i, t in enumerate(todo):
            r = run_task(t, prior, est)
            save_result(out / "runs", r)
            results[r.key] = r
            print(f"[{i + 1}/{len(todo)}] {t.key()}: 3D IoU {r.metrics['iou_3d']:.3f} colour {r.metrics['colour_error']:.3f} "
                  f"({r.seconds:.0f} s)", flush=True)
    rep = summarise(tasks, results, arms, args)
    rep["meta"] = {"command": "python benchmarks/ssd_positive_control.py " + " ".join(sys.argv[1:]),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "machine": machine(), "versions": versions(), "code": code_fingerprint(),
                   "seconds_this_invocation": time.perf_counter() - t_start,
                   "gate": {"iou_gain_at_least": GATE_IOU_GAIN, "colour_error_drop_at_least": GATE_COLOUR_GAIN}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "control.json", json.dumps(rep, indent=1).encode() + b"\n")
    for S, b in rep["budgets"].items():
        print(f"budget {S}: tuned lr {b['tuned_lr']}; " + "; ".join(
            f"{arm} vs sds: 3D IoU {d['iou_3d']['mean']:+.3f} [{d['iou_3d']['lo']:+.3f}, {d['iou_3d']['hi']:+.3f}], "
            f"colour error drop {d['colour_drop']['mean']:+.1%} [{d['colour_drop']['lo']:+.1%}, {d['colour_drop']['hi']:+.1%}]"
            for arm, d in b["vs_sds"].items()))
    print(f"gate (eps-oracle): {'PASS' if rep['passes'] else 'FAIL'}")


def summarise(tasks, results, arms, args) -> dict:
    """Per budget: each arm's tuned multiplier, its mean metrics, and the paired differences to SDS."""
    def arm_name(m, v):
        return m if v == args.views else f"{m}@{v}"

    out = {"budgets": {}, "passes": False}
    units = sorted({(t.prompt, t.seed) for t in tasks})
    for S in args.budgets:
        cell = {}
        for m, v in arms:
            best = None
            for lr in args.lr_mults:
                rs = [results.get(t.key()) for t in tasks if (t.method, t.views, t.steps, t.lr_mult) == (m, v, S, lr)]
                if any(r is None for r in rs) or not rs:
                    continue
                iou = sum(r.metrics["iou_3d"] for r in rs) / len(rs)
                if best is None or iou > best[1]:
                    best = (lr, iou, {(r.task["prompt"], r.task["seed"]): r.metrics for r in rs})
            if best is not None:
                cell[arm_name(m, v)] = best
        if "sds" not in cell:
            continue
        b = {"tuned_lr": {a: c[0] for a, c in cell.items()},
             "mean_iou_3d": {a: c[1] for a, c in cell.items()},
             "mean_colour_error": {a: sum(mm["colour_error"] for mm in c[2].values()) / len(c[2]) for a, c in cell.items()},
             "vs_sds": {}}
        base = cell["sds"][2]
        for a, c in cell.items():
            if a == "sds":
                continue
            d_iou = {u: c[2][u]["iou_3d"] - base[u]["iou_3d"] for u in units if u in c[2] and u in base}
            d_col = {u: (base[u]["colour_error"] - c[2][u]["colour_error"]) / max(base[u]["colour_error"], 1e-9)
                     for u in units if u in c[2] and u in base}
            b["vs_sds"][a] = {"iou_3d": clustered_paired_interval(d_iou), "colour_drop": clustered_paired_interval(d_col)}
        o = b["vs_sds"].get("sds-eps4")
        if o and ((o["iou_3d"]["mean"] >= GATE_IOU_GAIN and o["iou_3d"]["lo"] > 0)
                  or (o["colour_drop"]["mean"] >= GATE_COLOUR_GAIN and o["colour_drop"]["lo"] > 0)):
            out["passes"] = True
        out["budgets"][str(S)] = b
    return out


if __name__ == "__main__":
    main()
