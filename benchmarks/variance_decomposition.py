"""Where SDS's gradient variance comes from, and what stratifying the views of a step removes.

    python benchmarks/variance_decomposition.py [--out docs/bench/decomposition_2026-12-02.json]
        [--prompts "a red cube;a blue pyramid;a yellow cylinder;a room with blue walls and a gray floor"]
        [--steps 200] [--point 0.5] [--design 8 6 4] [--draws 96] [--methods sds ssd] [--fresh]

Per prompt, at the snapshot `point * steps` of an SDS run with generation's defaults (seed 0, the
budget `steps`: every schedule is a fraction of it):
  1. the camera / timestep / noise shares of SDS's parameter-gradient variance with fresh cameras
     (`steinsplat.bench.decomposition`: K camera batches x T timestep draws x E noise draws) and the
     ceiling they imply for a control variate in eps alone (1 - noise share);
  2. the parameter-gradient variance with fresh cameras against "stratified" (azimuths evenly spaced
     from one random offset, timesteps one per stratum: `OptimConfig.stratify`), for each method
     (`steinsplat.bench.variance`, `draws` draws each, SSD's mu learned on the snapshot for as many
     steps as the snapshot's step), timesteps from the range the run uses at that step.
Results are stored per prompt in --out (small JSON) and reused on the next invocation when the
settings match (--fresh measures again), so the study can be extended prompt by prompt; the summary
(means with bootstrap intervals over prompts) is recomputed over every stored prompt each time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from steinsplat.bench.convergence import code_fingerprint, is_room
from steinsplat.bench.decomposition import bootstrap_mean, measure_decomposition, summarise_decomposition
from steinsplat.bench.run import ROOM, machine, prompt_list
from steinsplat.bench.variance import measure_variance, sds_snapshot
from steinsplat.geometry import ShapeWorldEstimatorAdapter
from steinsplat.pipeline import versions
from steinsplat.priors import ShapeWorldPriorAdapter


def stratification_summary(rows: list[dict], methods: list[str]) -> dict:
    """Per method: variance ratio stratified / fresh (each prompt, and the mean with a bootstrap
    interval over prompts)."""
    out = {}
    for m in methods:
        ratios = [r["stratification"][m]["ratio"] for r in rows if m in r.get("stratification", {})]
        out[m] = bootstrap_mean(ratios)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/bench/decomposition_2026-12-02.json"))
    ap.add_argument("--prompts", default=f"a red cube;a blue pyramid;a yellow cylinder;{ROOM}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--point", type=float, default=0.5)
    ap.add_argument("--design", type=int, nargs=3, default=[8, 6, 4], metavar=("K", "T", "E"))
    ap.add_argument("--draws", type=int, default=96)
    ap.add_argument("--methods", nargs="+", default=["sds", "ssd"])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--fresh", action="store_true", help="measure every prompt again (default: reuse stored ones)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prompts = prompt_list(args.prompts)
    at = max(1, round(args.point * args.steps))
    settings = {"seed": args.seed, "steps": args.steps, "step": at, "design": list(args.design), "draws": args.draws,
                "methods": list(args.methods), "views": args.views, "resolution": args.resolution}
    stored = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    by_prompt = {r["prompt"]: r for r in stored.get("prompts", []) if r.get("settings") == settings}
    prior, est = ShapeWorldPriorAdapter.from_pretrained(None), ShapeWorldEstimatorAdapter.from_pretrained(None)
    t_start = time.perf_counter()
    reused = 0
    for i, prompt in enumerate(prompts):
        if prompt in by_prompt:
            reused += 1
            print(f"{prompt}: reused from {args.out}", flush=True)
            continue
        t0 = time.perf_counter()
        mode = "scene" if is_room(prompt) else "object"
        scene, _ = sds_snapshot(prompt, args.seed, args.steps, at, prior, None, args.views, args.resolution)
        embeds = prior.encode_prompt(prompt)
        K, T, E = args.design
        dec = measure_decomposition(scene, prompt, at, args.steps, prior, embeds, mode, K, T, E, args.views,
                                    args.resolution, seed=777 + i)
        print(f"{prompt}: camera {dec.camera_share:.3f} t {dec.timestep_share:.3f} eps {dec.noise_share:.3f} "
              f"(eps-only ceiling {dec.eps_cv_ceiling:.3f}x SDS) in {dec.seconds:.0f} s", flush=True)
        t_range = tuple(prior.timestep_range(at / args.steps))
        rows = measure_variance(scene, "middle", at, prior, est, embeds, mode, list(args.methods), {"run": t_range},
                                ["fresh", "stratified"], at, args.draws, args.views, args.resolution, seed=4242 + i)
        strat = {}
        for m in args.methods:
            f = next(r for r in rows if r.method == m and r.cameras == "fresh")
            s = next(r for r in rows if r.method == m and r.cameras == "stratified")
            ratio = s.variance / f.variance
            rel = math.sqrt((s.variance_se / s.variance) ** 2 + (f.variance_se / f.variance) ** 2)
            strat[m] = {"fresh": f.variance, "fresh_se": f.variance_se, "stratified": s.variance,
                        "stratified_se": s.variance_se, "ratio": ratio, "ratio_se": ratio * rel,
                        "vs_sds_fresh": f.ratio_vs_sds, "vs_sds_stratified": s.ratio_vs_sds,
                        "mean_z_vs_sds_stratified": s.mean_z_vs_sds}
            print(f"{prompt}: {m} fresh {f.variance:.4g} (se {f.variance_se:.3g}) stratified {s.variance:.4g} "
                  f"(se {s.variance_se:.3g}): {ratio:.3f}x", flush=True)
        by_prompt[prompt] = {"prompt": prompt, "settings": settings, "decomposition": dataclasses.asdict(dec),
                             "stratification": strat, "seconds": time.perf_counter() - t0,
                             "code": code_fingerprint()}
        write(args, prompts, by_prompt, settings, reused, t_start)  # after every prompt: an interrupted run keeps its part
    write(args, prompts, by_prompt, settings, reused, t_start)


def write(args, prompts: list[str], by_prompt: dict, settings: dict, reused: int, t_start: float) -> None:
    from steinsplat.export.atomic import atomic_write_bytes

    done = [by_prompt[p] for p in prompts if p in by_prompt] + [r for p, r in by_prompt.items() if p not in prompts]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    doc = {
        "meta": {"command": "python benchmarks/variance_decomposition.py " + " ".join(sys.argv[1:]),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine(), "versions": versions(), "commit": commit, "settings": settings,
                 "seconds_this_invocation": time.perf_counter() - t_start, "reused_prompts": reused},
        "summary": {"decomposition": summarise_decomposition([r["decomposition"] for r in done]),
                    "stratification": stratification_summary(done, settings["methods"])},
        "prompts": done,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps(doc, indent=1, allow_nan=False).encode() + b"\n")


if __name__ == "__main__":
    main()
