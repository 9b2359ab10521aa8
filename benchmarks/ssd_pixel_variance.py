"""Per-pixel Stein control variates against SDS, the default SSD, the paper's SSD and antithetic SDS
(issue 15, item 4), with the bench's own machinery (bench/variance.py, bench/cost.py).

For each prompt: an SDS run of a `--budget`-step schedule stopped at `--snapshot` (the mid-run state of
that run, as `steinsplat bench` snapshots it); then `measure_variance` (paired draws, all methods on
the same (cameras, t, eps); warm-up of each method's mu on fresh draws first) and the rms of the two
terms of each baseline's control variate, rms(sigma * Stein term) / rms(eps * phi); finally
`measure_cost` (time per optimisation step, one process per method) on the first prompt.
Writes one small JSON.

    OMP_NUM_THREADS=1 python benchmarks/ssd_pixel_variance.py --out docs/bench/ssd_pixel_variance_2026-12-02.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from steinsplat.bench.cost import measure_cost
from steinsplat.bench.variance import measure_variance, sds_snapshot
from steinsplat.cameras import InsideOutSampler, OrbitSampler
from steinsplat.geometry import ShapeWorldEstimatorAdapter
from steinsplat.guidance import BASELINES
from steinsplat.guidance.ssd import BaselineContext
from steinsplat.priors import ShapeWorldPriorAdapter
from steinsplat.render import render

METHODS = ["sds", "ssd", "ssd-depth", "ssd-normal", "ssd-depth-pixel", "ssd-normal-pixel", "ssd-filter-depth-pixel",
           "sds-antithetic"]


def term_ratios(scene, mode, prior, est, embeds, views, resolution, draws, seed):
    """rms(sigma * Stein term) / rms(eps * phi) of each baseline's CV over `draws` (cameras, t, eps)."""
    gen = torch.Generator().manual_seed(seed)
    sampler = (OrbitSampler if mode == "object" else InsideOutSampler)(width=resolution, height=resolution)
    background = (1.0, 1.0, 1.0) if mode == "object" else (0.0, 0.0, 0.0)
    lo, hi = prior.timestep_range(0.0)
    acc = {n: [0.0, 0.0] for n in BASELINES}
    for _ in range(draws):
        cams = sampler.sample(views, gen)
        t = torch.randint(lo, hi + 1, (views,), generator=gen)
        with torch.no_grad():
            r = render(scene, cams, background=background)
            x = prior.encode_images(r.rgb)
        eps = torch.randn(x.shape, generator=gen)
        alpha, sigma = prior.schedule.alpha_t(t), prior.schedule.sigma_t(t)
        x_t = alpha * x + sigma * eps
        ctx = BaselineContext(t=t, alpha=alpha, sigma=sigma, cameras=cams, render=r, prior=prior)
        for name, cls in BASELINES.items():
            if name.endswith("-pixel"):
                bl = cls(est)
                bl.control_variate(ctx, x_t, eps)
                e, s = bl.last.eps_term, bl.last.stein_term
            else:
                phi = cls(est).build(ctx)
                xx = x_t.detach().requires_grad_(True)
                val = phi(xx)
                (gp,) = torch.autograd.grad(val.sum(), xx)
                e, s = eps * val.detach().view(-1, 1, 1, 1), sigma * gp
            acc[name][0] += float((e**2).mean())
            acc[name][1] += float((s**2).mean())
    return {n: (v[1] / v[0]) ** 0.5 if v[0] > 0 else float("nan") for n, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default="a red cube;a room with blue walls and a gray floor")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--budget", type=int, default=200, help="steps of the SDS schedule the snapshot is taken from")
    ap.add_argument("--snapshot", type=int, default=100, help="step of the snapshot (mid-run)")
    ap.add_argument("--warmup", type=int, default=50, help="steps of mu fitting on the snapshot before measuring")
    ap.add_argument("--draws", type=int, default=24)
    ap.add_argument("--cameras", default="fresh", help="same, fresh or both (comma separated)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--term-draws", type=int, default=6)
    ap.add_argument("--cost-steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    prior = ShapeWorldPriorAdapter.from_pretrained(None)
    est = ShapeWorldEstimatorAdapter.from_pretrained(None)
    methods = a.methods.split(",")
    lo, hi = prior.timestep_range(0.0)
    res = {"command": "OMP_NUM_THREADS=1 python benchmarks/ssd_pixel_variance.py " + " ".join(
        f"--{k.replace('_', '-')} {json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in vars(a).items()),
        "settings": vars(a), "band": [lo, hi], "prompts": {}}
    for prompt in [p.strip() for p in a.prompts.split(";") if p.strip()]:
        ts = time.perf_counter()
        scene, mode = sds_snapshot(prompt, a.seed, a.budget, a.snapshot, prior, est, a.views, a.resolution)
        embeds = prior.encode_prompt(prompt)
        print(f"{prompt}: snapshot at {a.snapshot}/{a.budget} in {time.perf_counter() - ts:.0f} s", flush=True)
        ratios = term_ratios(scene, mode, prior, est, embeds, a.views, a.resolution, a.term_draws, a.seed + 7)
        print(f"  rms(sigma Stein term) / rms(eps phi): {ratios}", flush=True)
        rows = measure_variance(scene, "middle", a.snapshot, prior, est, embeds, mode, methods, {"all": (lo, hi)},
                                a.cameras.split(","), a.warmup, a.draws, a.views, a.resolution, seed=1234)
        for r in rows:
            print(f"  {r.cameras:<5} {r.method:<24} var {r.variance:.4g}  {r.ratio_vs_sds:.3f}x SDS  z {r.mean_z_vs_sds}  "
                  f"{r.seconds_per_draw:.2f} s/draw", flush=True)
        res["prompts"][prompt] = {"mode": mode, "term_ratio": ratios, "variance": [dataclasses.asdict(r) for r in rows],
                                  "seconds": time.perf_counter() - ts}
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    first = [p.strip() for p in a.prompts.split(";") if p.strip()][0]
    cost = measure_cost(methods, first, a.seed, a.cost_steps, prior, est, a.views, a.resolution)
    res["cost"] = {"prompt": first, "rows": [dataclasses.asdict(r) for r in cost]}
    for r in cost:
        print(f"cost {r.method:<24} {r.seconds_per_step * 1e3:.0f} ms/step ({r.ratio_vs_sds:.2f}x SDS)", flush=True)
    res["seconds"] = time.perf_counter() - t0
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.out} in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
