"""Gradient variance and cost of SDS, VSD and SSD (depth, normal) on one fixed Gaussian scene.

    python benchmarks/guidance_variance.py [--draws 64] [--warmup 30] [--views 4] [--gaussians 1000]
                                           [--preopt 100] [--prompt "a red cube"] [--fixed-t T]

Prior and estimator: the trained ShapeWorld models from steinsplat/assets/shapeworld/{prior,estimator} when
they exist; otherwise a tiny *random* pixel-space prior and a tiny random estimator (said in the
output: then the numbers show the machinery and its cost, not what SSD buys with a real estimator).

Protocol, the same for every method, in one process:
  1. scene: `--gaussians` Gaussians in a ball, optimised `--preopt` SDS steps from a fixed seed
     (a scene part-way through optimisation), then frozen;
  2. warm-up: `--warmup` full steps (render, encode, guidance with state updates: VSD trains its
     LoRA, SSD learns mu; backward to the Gaussians; no Gaussian update). Their mean wall time
     (after the first 2) is the "time / step";
  3. variance: `--draws` draws of (t, eps) at the fixed render with the estimator's state frozen;
     the trace of the covariance of the gradient w.r.t. all Gaussian parameters
     (`parameter_gradient_variance`) and the mean gradient's squared norm.
Prints a table with ratios against SDS. Timesteps: uniform in the prior's range at progress
`--progress` (or fixed at `--fixed-t`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from steinsplat.cameras import OrbitSampler
from steinsplat.gaussians import Gaussians
from steinsplat.bench.methods import ABLATIONS, METHODS, build as build_method
from steinsplat.guidance import SSD, SDS, SSDConfig, parameter_gradient_variance
from steinsplat.priors.base import TimestepRange
from steinsplat.render import render


@dataclass
class Row:
    name: str
    variance: float  # trace of the parameter-gradient covariance
    signal: float  # ||E g||^2
    seconds: float  # per full step


def load_models(resolution: int):
    from steinsplat.shapeworld.prior import default_assets_dir

    assets = default_assets_dir()
    if (assets / "prior" / "prior_config.json").exists():
        from steinsplat.priors import ShapeWorldPriorAdapter

        prior = ShapeWorldPriorAdapter.from_pretrained(assets / "prior")
        what = f"ShapeWorld prior from {assets / 'prior'}"
    else:
        from steinsplat.priors.tiny import TinyPixelPrior

        prior = TinyPixelPrior(resolution=resolution, block_out_channels=(16, 32))
        what = (f"NO trained ShapeWorld prior in {assets / 'prior'}: using a tiny RANDOM pixel-space prior "
                f"({resolution}x{resolution}); variance ratios say little about a real prior")
    if (assets / "estimator" / "config.json").exists():
        from steinsplat.geometry import ShapeWorldEstimatorAdapter

        est = ShapeWorldEstimatorAdapter.from_pretrained(assets / "estimator")
        what_e = f"ShapeWorld estimator from {assets / 'estimator'}"
    else:
        from steinsplat.geometry.tiny import TinyConvEstimator

        est = TinyConvEstimator()
        what_e = (f"NO trained ShapeWorld estimator in {assets / 'estimator'}: using a tiny RANDOM estimator "
                  "(its baselines barely correlate with anything)")
    return prior, est, what, what_e


def make_scene(n: int, prior, emb, sampler: OrbitSampler, views: int, steps: int, seed: int) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    gs = Gaussians.random_ball(n, radius=0.5, opacity=0.3, generator=gen)
    with torch.no_grad():
        gs.splats["scales"].add_(0.2 * torch.randn(n, 3, generator=gen))
        gs.splats["quats"].add_(0.2 * torch.randn(n, 4, generator=gen))
    if steps == 0:
        return gs
    opt = torch.optim.Adam(gs.splats.parameters(), lr=0.01)
    sds = SDS(prior)
    for i in range(steps):
        cams = sampler.sample(views, gen)
        r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
        x = prior.encode_images(r.rgb)
        out = sds.step(x, emb, cams, progress=i / steps, generator=gen)
        opt.zero_grad(set_to_none=True)
        x.backward(out.grad)
        opt.step()
    return gs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=64, help="noise draws for the variance")
    ap.add_argument("--warmup", type=int, default=30, help="full steps with state updates before measuring")
    ap.add_argument("--views", type=int, default=4, help="cameras per step")
    ap.add_argument("--size", type=int, default=64, help="render size (pooled to the prior's resolution)")
    ap.add_argument("--resolution", type=int, default=32, help="resolution of the fallback random prior")
    ap.add_argument("--gaussians", type=int, default=1000)
    ap.add_argument("--preopt", type=int, default=100, help="SDS steps to bring the scene part-way")
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--progress", type=float, default=0.0, help="training progress for the timestep range")
    ap.add_argument("--fixed-t", type=int, default=None, help="use this timestep for every draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is steadiest on a shared CPU)")
    ap.add_argument("--mu-granularity", default="channel", choices=["scalar", "channel", "pixel"], help="ssd-const: mu sharing")
    ap.add_argument("--mu-mode", default="least_squares", choices=["least_squares", "optimizer"], help="ssd-const: how mu is picked")
    ap.add_argument("--noise-kernel", type=int, default=3, help="ssd-filter-custom: noise_kernel")
    ap.add_argument("--mix-channels", action=argparse.BooleanOptionalAction, default=True, help="ssd-filter-custom: noise_mix_channels")
    ap.add_argument("--ema-decay", type=float, default=0.95, help="ssd-filter-custom: ema_decay")
    ap.add_argument("--solve-every", type=int, default=4, help="ssd-filter-custom: solve_every")
    ap.add_argument("--noise-maps", default="poly2", choices=["none", "alpha", "poly2"], help="SSD's noise_maps")
    ap.add_argument("--methods", nargs="*", default=["sds", "vsd", "ssd", "ssd-const", "ssd-depth", "ssd-normal", "filter+depth"],
                    help="names of steinsplat.bench.methods (ssd = steinsplat's default: the noise filter; ssd-depth / "
                         "ssd-normal = the paper's), plus ssd-const (the paper's constant term alone) and "
                         "ssd-filter-custom (the filter with --noise-* options)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prior, est, what, what_e = load_models(args.resolution)
    print(f"prior:     {what}\nestimator: {what_e}")
    if args.fixed_t is not None:
        f = args.fixed_t / (prior.schedule.num_train_timesteps - 1)
        prior.timesteps = TimestepRange(f, f, f, f, anneal="none")
    emb = prior.encode_prompt(args.prompt)
    sampler = OrbitSampler(width=args.size, height=args.size)
    t0 = time.perf_counter()
    gs = make_scene(args.gaussians, prior, emb, sampler, args.views, args.preopt, args.seed)
    print(f"scene: {args.gaussians} Gaussians after {args.preopt} SDS steps ({time.perf_counter() - t0:.0f} s); "
          f"{args.views} views of {args.size}x{args.size}; {args.draws} draws; {args.warmup} warm-up steps; "
          f"SSD mu: {args.mu_mode}, per {args.mu_granularity}; {torch.get_num_threads()} torch threads")
    cams = sampler.sample(args.views, torch.Generator().manual_seed(args.seed + 1))  # the fixed views

    def build(name: str):
        if name in METHODS or name in ABLATIONS:
            return build_method(name, prior, est, "object")
        if name == "ssd-const":  # the paper's constant term alone (no estimator): SDS with the optimal mu
            return SSD(prior, [], SSDConfig(mu_mode=args.mu_mode, mu_granularity=args.mu_granularity))
        if name == "ssd-filter-custom":  # the noise filter with this script's options
            return SSD(prior, [], SSDConfig(noise_kernel=args.noise_kernel, noise_mix_channels=args.mix_channels,
                                            noise_maps=args.noise_maps, solve_every=args.solve_every,
                                            ema_decay=args.ema_decay))
        raise SystemExit(f"unknown method {name!r}: {', '.join([*METHODS, *ABLATIONS, 'ssd-const', 'ssd-filter-custom'])}")

    def make_x():
        r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
        return prior.encode_images(r.rgb), r

    params = dict(gs.splats)
    rows: list[Row] = []
    for name in args.methods:
        g = build(name)
        gen = torch.Generator().manual_seed(args.seed + 2)
        times = []
        for i in range(args.warmup):
            s = time.perf_counter()
            x, r = make_x()
            out = g.step(x, emb, cams, render=r, progress=args.progress, generator=gen)
            gs.zero_grad(set_to_none=True)
            x.backward(out.grad)
            times.append(time.perf_counter() - s)
        per_step = sum(times[2:]) / max(1, len(times[2:])) if len(times) > 2 else float("nan")
        pv = parameter_gradient_variance(g, params, make_x, emb, cams, draws=args.draws, progress=args.progress,
                                         generator=torch.Generator().manual_seed(args.seed + 3))
        rows.append(Row(name, pv.total, pv.mean_norm_sq, per_step))
        print(f"  {name:18s} variance {pv.total:.4e}   time/step {per_step * 1e3:7.1f} ms", flush=True)
        gs.zero_grad(set_to_none=True)

    base = next((r for r in rows if r.name == "sds"), rows[0])
    print()
    print(f"{'method':18s} {'param-grad variance':>20s} {'vs SDS':>8s} {'||E g||^2':>12s} {'ms/step':>9s} {'vs SDS':>8s}")
    for r in rows:
        print(f"{r.name:18s} {r.variance:20.4e} {r.variance / base.variance:8.3f} {r.signal:12.4e} "
              f"{r.seconds * 1e3:9.1f} {r.seconds / base.seconds:8.3f}")
    print("\ntarget (issue 4): SSD variance <= 0.6x SDS at <= 1.3x SDS time per step")


if __name__ == "__main__":
    main()
