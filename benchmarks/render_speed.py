"""Rasteriser speed: ms per 64x64 view, forward + backward, torch backend vs the dense reference.

    python benchmarks/render_speed.py [--sizes 1000 4000 16000] [--views 4] [--repeats 5]

Scene: N Gaussians in a ball of radius 0.5 (the ShapeWorld object scale), log-scales spread
around the nearest-neighbour spacing, random rotations, opacities sigmoid(U(-2, 2)); B random
orbit cameras (training ranges of docs/shapeworld.md, section Cameras). Both renderers run in the same process on the
same scene; the dense one is skipped above --dense-max Gaussians (it needs O(H W N) memory).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from steinsplat.cameras import OrbitSampler
from steinsplat.gaussians import Gaussians
from steinsplat.render import render
from steinsplat.render.dense import render_dense


def make_scene(n: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    g = Gaussians.random_ball(n, radius=0.5, opacity=0.5, generator=gen)
    with torch.no_grad():
        g.splats["opacities"].uniform_(-2.0, 2.0, generator=gen)
        g.splats["quats"].normal_(generator=gen)
        g.splats["scales"].add_(0.3 * torch.randn(n, 3, generator=gen))
    return g


def time_fwd_bwd(fn, g: Gaussians, cams, repeats: int) -> float:
    """Best wall time (s) of forward + backward over `repeats` runs after one warm-up."""
    best = float("inf")
    for i in range(repeats + 1):
        g.zero_grad(set_to_none=True)
        t = time.perf_counter()
        out = fn(g, cams)
        (out.rgb.sum() + out.depth.sum() + out.normal.sum()).backward()
        dt = time.perf_counter() - t
        if i > 0:
            best = min(best, dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense-max", type=int, default=16000)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.views} views of {args.resolution}x{args.resolution}")
    print(f"{'N':>7} {'pairs/view':>11} {'torch ms/view':>14} {'dense ms/view':>14} {'speed-up':>9}")
    for n in args.sizes:
        g = make_scene(n)
        sampler = OrbitSampler(width=args.resolution, height=args.resolution)
        cams = sampler.sample(args.views, torch.Generator().manual_seed(1))
        fast = lambda g, c: render(g, c, background=(1.0, 1.0, 1.0), backend="torch")  # noqa: E731
        t_fast = time_fwd_bwd(fast, g, cams, args.repeats) / args.views
        pairs = render(g, cams, backend="torch").info["n_pairs"] / args.views
        if n <= args.dense_max:
            dense = lambda g, c: render_dense(g, c, background=(1.0, 1.0, 1.0))  # noqa: E731
            t_dense = time_fwd_bwd(dense, g, cams, max(1, args.repeats // 3)) / args.views
            ratio = f"{t_dense / t_fast:8.1f}x"
            dense_s = f"{1e3 * t_dense:14.1f}"
        else:
            ratio, dense_s = f"{'-':>9}", f"{'-':>14}"
        print(f"{n:>7} {pairs:>11.0f} {1e3 * t_fast:>14.1f} {dense_s} {ratio}", flush=True)


if __name__ == "__main__":
    main()
