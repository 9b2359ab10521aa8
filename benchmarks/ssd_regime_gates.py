"""Gate 1 of the SSD regime search (screening, minutes): is a regime's gradient noise eps-dominated?

    python benchmarks/ssd_regime_gates.py [--out docs/bench/gates/screen.json]
        [--regimes mixture mixture-guided single blind blind-mixture] [--prompts "a cube;a red shape;a pyramid;a blue shape"]
        [--steps 100] [--point 0.5] [--lr-mult 4] [--design 6 4 4] [--draws 32] [--fresh]

A regime (`steinsplat.bench.regimes`: single, mixture, mixture-guided, blind, blind-mixture, textured,
textured-blind) is a kind of prompt, a prior (the default or the textured one), a camera branch of the
prior and a guidance scale. For each regime and prompt (the
ordinary-prompt regimes run the open prompt's first answer, "a cube" -> "a red cube"), at the
snapshot `point * steps` of an SDS run with generation's defaults and the
learning rates x `lr_mult` (x4 is the study's tuned multiplier at 100 steps):
  1. the camera / timestep / noise shares of SDS's parameter-gradient variance with fresh cameras
     (`bench/decomposition.py`, nested K x T x E design);
  2. the parameter-gradient variance of SDS, SSD (default), the paper's SSD (depth) and the
     eps-oracle (sds-eps4: 4 eps per view averaged) on `draws` shared draws, with fresh cameras
     and with one fixed camera batch (`bench/variance.py`). The eps-oracle is the measurement's own
     positive control: with fixed cameras it must come out near 1 - 3/4 (noise share at fixed
     cameras), whatever SSD does.
The gate passes for a regime when, averaged over its prompts, the noise share is >= 0.5 and
SSD / SDS <= 0.7 with fresh cameras. Results per (regime, prompt) are stored in --out and reused
when the settings match (--fresh measures again).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

GATE_NOISE_SHARE = 0.5  # the noise share of SDS's variance a regime needs (fresh cameras)
GATE_SSD_RATIO = 0.7  # the SSD / SDS variance ratio a regime needs (fresh cameras)
METHODS = ("sds", "ssd", "ssd-depth", "sds-eps4")


def main() -> None:
    from steinsplat.bench.convergence import bench_trainer, code_fingerprint
    from steinsplat.bench.decomposition import bootstrap_mean, measure_decomposition
    from steinsplat.bench.run import machine, prompt_list
    from steinsplat.bench.variance import measure_variance
    from steinsplat.geometry import ShapeWorldEstimatorAdapter
    from steinsplat.export.atomic import atomic_write_bytes
    from steinsplat.gaussians import Gaussians
    from steinsplat.pipeline import versions
    from steinsplat.priors import ShapeWorldPriorAdapter
    from steinsplat.bench.regimes import REGIMES, apply_regime, regime_prior_dir, regime_prompt
    from steinsplat.bench.study import scaled_optim

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/bench/gates/screen.json"))
    ap.add_argument("--regimes", nargs="+", default=["mixture", "mixture-guided", "single"])
    ap.add_argument("--prompts", default="a cube;a red shape;a pyramid;a blue shape")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--point", type=float, default=0.5)
    ap.add_argument("--lr-mult", type=float, default=4.0)
    ap.add_argument("--design", type=int, nargs=3, default=[6, 4, 4], metavar=("K", "T", "E"))
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    prompts = prompt_list(args.prompts)
    at = max(1, round(args.point * args.steps))
    settings = {"seed": args.seed, "steps": args.steps, "step": at, "lr_mult": args.lr_mult, "design": list(args.design),
                "draws": args.draws, "views": args.views, "resolution": args.resolution, "methods": list(METHODS)}
    stored = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    rows = {(r["regime"], r["prompt"]): r for r in stored.get("rows", []) if r.get("settings") == settings}
    est = ShapeWorldEstimatorAdapter.from_pretrained(None)
    priors = {}  # prior folder (None: the default) -> adapter, loaded once
    t_start = time.perf_counter()
    unknown = [r for r in args.regimes if r not in REGIMES]
    if unknown:  # one clear error before minutes of work
        raise SystemExit(f"unknown regime(s) {', '.join(unknown)}: choose from {', '.join(REGIMES)}")
    for regime in args.regimes:
        folder = regime_prior_dir(regime)  # the textured regimes run the textured prior
        if folder not in priors:
            priors[folder] = ShapeWorldPriorAdapter.from_pretrained(folder)
        prior = priors[folder]
        apply_regime(prior, regime)
        for i, p in enumerate(prompts):
            prompt = regime_prompt(regime, p)
            if (regime, prompt) in rows:
                print(f"{regime} {prompt}: reused", flush=True)
                continue
            t0 = time.perf_counter()
            tr = bench_trainer("sds", prompt, args.seed, args.steps, prior, est, args.views, args.resolution,
                               lambda optim: scaled_optim(optim, args.lr_mult))
            while tr.state.step < at:
                tr.step()
            scene = Gaussians.from_state_tensors({k: v.detach().clone() for k, v in tr.g.state_tensors().items()})
            embeds = prior.encode_prompt(prompt)
            K, T, E = args.design
            dec = measure_decomposition(scene, prompt, at, args.steps, prior, embeds, "object", K, T, E, args.views,
                                        args.resolution, seed=777 + i)
            t_range = tuple(prior.timestep_range(at / args.steps))
            var = measure_variance(scene, "snapshot", at, prior, est, embeds, "object", list(METHODS), {"run": t_range},
                                   ["fresh", "same"], at, args.draws, args.views, args.resolution, seed=4242 + i)
            ratios = {cams: {r.method: r.ratio_vs_sds for r in var if r.cameras == cams} for cams in ("fresh", "same")}
            mean_z = {r.method: r.mean_z_vs_sds for r in var if r.cameras == "same"}
            row = {"regime": regime, "prompt": prompt, "settings": settings, "guidance_scale": prior.guidance_scale,
                   "camera_blind": prior.camera_blind,
                   "t_range": list(t_range), "decomposition": dataclasses.asdict(dec), "ratio_vs_sds": ratios,
                   "mean_z_vs_sds_same": mean_z, "variance": [dataclasses.asdict(r) for r in var],
                   "seconds": time.perf_counter() - t0, "code": code_fingerprint()}
            rows[(regime, prompt)] = row
            print(f"{regime} {prompt}: noise share {dec.noise_share:.3f} (camera {dec.camera_share:.3f}, t "
                  f"{dec.timestep_share:.3f}); SSD/SDS fresh {ratios['fresh']['ssd']:.3f} same {ratios['same']['ssd']:.3f}; "
                  f"ssd-depth fresh {ratios['fresh']['ssd-depth']:.3f}; eps-oracle fresh {ratios['fresh']['sds-eps4']:.3f} "
                  f"same {ratios['same']['sds-eps4']:.3f} ({row['seconds']:.0f} s)", flush=True)
            write(args, rows, settings, t_start, bootstrap_mean, machine, versions, atomic_write_bytes)
    write(args, rows, settings, t_start, bootstrap_mean, machine, versions, atomic_write_bytes)


def summarise(rows: list[dict], bootstrap_mean) -> dict:
    """Per regime: mean noise share and SSD / SDS (fresh), with bootstrap intervals over prompts, and the gate."""
    out = {}
    for regime in dict.fromkeys(r["regime"] for r in rows):
        rs = [r for r in rows if r["regime"] == regime]
        noise = bootstrap_mean([r["decomposition"]["noise_share"] for r in rs])
        s = {"prompts": [r["prompt"] for r in rs], "noise_share": noise}
        for m in METHODS[1:]:
            for cams in ("fresh", "same"):
                s[f"{m}_{cams}"] = bootstrap_mean([r["ratio_vs_sds"][cams][m] for r in rs])
        s["passes"] = bool(noise["mean"] >= GATE_NOISE_SHARE and s["ssd_fresh"]["mean"] <= GATE_SSD_RATIO)
        s["passes_with_paper_ssd"] = bool(noise["mean"] >= GATE_NOISE_SHARE and s["ssd-depth_fresh"]["mean"] <= GATE_SSD_RATIO)
        out[regime] = s
    return out


def write(args, rows: dict, settings: dict, t_start: float, bootstrap_mean, machine, versions, atomic_write_bytes) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    if args.out.exists() and not args.fresh:  # rows another invocation on the same --out stored meanwhile (parallel prompts) are kept
        try:
            on_disk = json.loads(args.out.read_text()).get("rows", [])
        except (OSError, ValueError):
            on_disk = []
        for r in on_disk:
            if r.get("settings") == settings and (r["regime"], r["prompt"]) not in rows:
                rows[(r["regime"], r["prompt"])] = r
    done = list(rows.values())
    doc = {"meta": {"command": "python benchmarks/ssd_regime_gates.py " + " ".join(sys.argv[1:]),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "versions": versions(), "commit": commit, "settings": settings,
                    "gate": {"noise_share_at_least": GATE_NOISE_SHARE, "ssd_ratio_at_most": GATE_SSD_RATIO},
                    "seconds_this_invocation": time.perf_counter() - t_start},
           "summary": summarise(done, bootstrap_mean), "rows": done}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps(doc, indent=1, allow_nan=False).encode() + b"\n")


if __name__ == "__main__":
    main()
