"""Variance of the gradient w.r.t. the Gaussians' parameters over repeated draws, all methods paired.

For one frozen scene (a snapshot of an optimisation), one timestep band and one camera mode:
  1. draw a shared list of (cameras, t [B], eps [B, C, h, w]): the *same* draws for every method,
     so differences between methods are paired (far more sensitive than unpaired);
  2. per method: `warmup` steps with state updates on fresh draws of the same band and camera
     mode (SSD learns mu, VSD trains its LoRA), then, with the state frozen, for each shared draw
     the parameter gradient g_d = (d x / d theta)^T grad_d  (what the optimiser would receive);
  3. report tr Cov(g) (unbiased, over draws), ||mean g||^2, the ratio to SDS, and, for the
     methods that must share SDS's mean (every SSD: Stein's identity), the paired test
     z_e = |mean_d (g_m - g_sds)_e| / SE_e per parameter element e: its mean over elements is
     about 0.8 when the means agree (E|N(0, 1)| = 0.80) and grows with any bias.
Cameras "same": one fixed batch of views for every draw (the noise of t and eps only);
"fresh": new cameras every draw (what an optimisation step sees); "stratified": fresh cameras with
the azimuths and timesteps stratified across the views of a draw (`OptimConfig.stratify`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..cameras import InsideOutSampler, OrbitSampler
from ..gaussians import Gaussians
from ..render import render
from .methods import SAME_MEAN_AS_SDS, build


@dataclass
class VarianceRow:
    method: str
    point: str  # "early" | "middle" | "late" | ...
    step: int  # optimisation step of the snapshot
    band: str  # timestep band name
    cameras: str  # "same" | "fresh"
    draws: int
    variance: float  # tr Cov(g) over draws
    mean_norm_sq: float  # ||E g||^2
    ratio_vs_sds: Optional[float] = None
    mean_z_vs_sds: Optional[float] = None  # paired test of equal means (about 0.8 when equal); None: not expected equal
    seconds_per_draw: float = float("nan")
    variance_se: float = float("nan")  # standard error of `variance` over the draws (std of ||g_d - mean g||^2 / sqrt(draws))


def _draws(n: int, views: int, sampler, band: tuple[int, int], x_shape: tuple[int, ...], fixed_cams, gen,
           stratified: bool = False):
    from ..guidance import stratified_timesteps

    out = []
    for _ in range(n):
        cams = fixed_cams if fixed_cams is not None else sampler.sample(views, gen, stratified=stratified)
        if stratified:
            t = stratified_timesteps(views, band, gen)  # [B]
        else:
            t = torch.randint(band[0], band[1] + 1, (views,), generator=gen)
        eps = torch.randn(views, *x_shape, generator=gen)
        out.append((cams, t, eps))
    return out


def measure_variance(scene: Gaussians, point: str, step: int, prior, est, embeds, mode: str, methods: list[str],
                     bands: dict[str, tuple[int, int]], camera_modes: list[str], warmup: int, draws: int,
                     views: int, resolution: int, seed: int) -> list[VarianceRow]:
    import time

    background = (1.0, 1.0, 1.0) if mode == "object" else (0.0, 0.0, 0.0)
    sampler = (OrbitSampler if mode == "object" else InsideOutSampler)(width=resolution, height=resolution)
    C, h = prior.model_channels, prior.model_resolution
    params = dict(scene.splats)
    rows: list[VarianceRow] = []
    for band_name, band in bands.items():
        for cam_mode in camera_modes:
            gen = torch.Generator().manual_seed(seed)
            if cam_mode not in ("same", "fresh", "stratified"):
                raise ValueError(f"unknown camera mode {cam_mode!r}: use same, fresh or stratified")
            strat = cam_mode == "stratified"
            fixed = sampler.sample(views, gen) if cam_mode == "same" else None
            shared = _draws(draws, views, sampler, band, (C, h, h), fixed, gen, strat)
            per_method: dict[str, Tensor] = {}
            for name in methods:
                g = build(name, prior, est, mode)
                wgen = torch.Generator().manual_seed(seed + 1)
                for cams, t, eps in _draws(warmup, views, sampler, band, (C, h, h), fixed, wgen, strat):  # 2. warm-up
                    r = render(scene, cams, background=background)
                    x = prior.encode_images(r.rgb)
                    g.step(x, embeds, cams, render=r, t=t, eps=eps, update_state=True)
                cache = None
                G = []
                t0 = time.perf_counter()
                for cams, t, eps in shared:
                    if cache is None or fixed is None:
                        r = render(scene, cams, background=background)
                        cache = (prior.encode_images(r.rgb), r)
                    x, r = cache
                    out = g.step(x, embeds, cams, render=r, t=t, eps=eps, update_state=False)
                    grads = torch.autograd.grad(x, list(params.values()), grad_outputs=out.grad, retain_graph=True,
                                                allow_unused=True)
                    G.append(torch.cat([(torch.zeros_like(p) if q is None else q.detach()).flatten()
                                        for p, q in zip(params.values(), grads)]))
                per_method[name] = torch.stack(G)  # [draws, P]
                dt = (time.perf_counter() - t0) / draws
                Gm = per_method[name]
                dev = (Gm - Gm.mean(0)).pow(2).sum(1) * draws / (draws - 1)  # [draws], mean = tr Cov
                rows.append(VarianceRow(name, point, step, band_name, cam_mode, draws,
                                        float(Gm.var(0, unbiased=True).sum()), float(Gm.mean(0).pow(2).sum()),
                                        seconds_per_draw=dt, variance_se=float(dev.std() / math.sqrt(draws))))
            base = per_method.get("sds")
            if base is not None:
                group = rows[-len(methods):]
                sds_var = next(r.variance for r in group if r.method == "sds")
                for row in group:
                    row.ratio_vs_sds = row.variance / sds_var if sds_var > 0 else math.nan
                    if row.method in SAME_MEAN_AS_SDS:
                        row.mean_z_vs_sds = paired_mean_z(per_method[row.method], base)
    return rows


def sds_snapshot(prompt: str, seed: int, steps: int, at: int, prior, est, views: int,
                 resolution: int) -> tuple[Gaussians, str]:
    """(Gaussians, mode) of an SDS run of `steps` steps with generation's defaults, after `at` steps:
    the part-way scene the variance measurements of the benchmarks start from."""
    from .convergence import bench_trainer

    tr = bench_trainer("sds", prompt, seed, steps, prior, est, views, resolution)
    while tr.state.step < at:
        tr.step()
    return Gaussians.from_state_tensors({k: v.detach().clone() for k, v in tr.g.state_tensors().items()}), tr.mode


def paired_mean_z(a: Tensor, b: Tensor) -> float:
    """Mean over elements of |mean(a - b)| / SE for paired draws a, b [N, P] (elements that never
    differ are left out)."""
    d = a - b
    se = d.std(0, unbiased=True) / math.sqrt(d.shape[0])
    keep = se > 1e-12 * (d.abs().max() + 1e-30)
    if not bool(keep.any()):
        return 0.0
    return float((d.mean(0)[keep].abs() / se[keep]).mean())
