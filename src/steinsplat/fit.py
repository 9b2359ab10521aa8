"""Fit Gaussians to posed images (photometric 3DGS): the proof that render + optimise + densify work.

This is not text-to-3D; it is the engine's self-test, used by `steinsplat fit-demo`, the fitting
benchmark and the tests: a target scene is rendered by the dense reference from training and
held-out cameras, Gaussians are fitted to the training views from a small random init, and the
held-out PSNR says whether rasteriser, gradients, optimiser and densification work together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from .cameras import Cameras, OrbitSampler, orbit_cameras
from .densify import Densifier, DensifyConfig, for_mode, per_param_optimizers
from .gaussians import Gaussians, rgb_to_sh0
from .render import render
from .render.dense import render_dense


@dataclass
class FitConfig:
    steps: int = 600  # optimisation steps
    batch: int = 4  # views per step
    init_gaussians: int = 300  # random-ball init size
    init_radius: float = 0.5  # radius of the init ball (metres)
    lr_means: float = 2e-3  # Adam learning rates; means decay x0.1 over the run
    lr_scales: float = 1e-2
    lr_quats: float = 2e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 1e-2
    lr_shN: float = 5e-4
    l1_weight: float = 0.8  # loss = l1_weight * L1 + (1 - l1_weight) * L2 (x10)
    seed: int = 0  # seeds the init and the view order
    densify: DensifyConfig = field(
        default_factory=lambda: DensifyConfig(start=50, stop=450, interval=50, cap=8_000, grow_grad2d=2e-4)
    )


@dataclass
class FitResult:
    gaussians: Gaussians
    history: list[dict[str, float]]  # per logged step: step, loss, n, seconds
    seconds: float


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def fit_views(
    images: Tensor,  # [V, H, W, 3] in [0, 1]
    cameras: Cameras,  # V cameras
    cfg: FitConfig,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    callback: Optional[Callable[[int, float, int], None]] = None,
) -> FitResult:
    if images.shape[0] != len(cameras):
        raise ValueError(f"{images.shape[0]} images but {len(cameras)} cameras")
    gen = torch.Generator().manual_seed(cfg.seed)
    g = Gaussians.random_ball(cfg.init_gaussians, radius=cfg.init_radius, opacity=0.3, generator=gen)
    with torch.no_grad():  # start gray: colour comes from the data, not the init
        g.splats["sh0"].copy_(rgb_to_sh0(torch.full((len(g), 1, 3), 0.5)))
    lrs = dict(means=cfg.lr_means, scales=cfg.lr_scales, quats=cfg.lr_quats, opacities=cfg.lr_opacities,
               sh0=cfg.lr_sh0, shN=cfg.lr_shN)
    opt = per_param_optimizers(g, lrs)
    densifier = Densifier(for_mode(cfg.densify, "object"), g, opt, scene_scale=cfg.init_radius, steps=cfg.steps)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr_m = cfg.lr_means * 0.1 ** (step / max(1, cfg.steps))  # exponential decay to 0.1x
        opt["means"].param_groups[0]["lr"] = lr_m
        idx = torch.randperm(len(cameras), generator=gen)[: cfg.batch]
        out = render(g, cameras[idx], background=background)
        densifier.pre_backward(step, out.info)
        diff = out.rgb - images[idx]
        loss = cfg.l1_weight * diff.abs().mean() + (1 - cfg.l1_weight) * 10.0 * (diff**2).mean()
        loss.backward()
        for o in opt.values():
            o.step()
            o.zero_grad(set_to_none=True)
        densifier.post_backward(step, out.info, lr=lr_m)
        if step % 25 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": float(loss.detach()), "n": len(g), "seconds": time.perf_counter() - t0})
            if callback is not None:
                callback(step, float(loss.detach()), len(g))
    return FitResult(gaussians=g, history=history, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------- the demo target
def demo_target(num: int = 1200, seed: int = 0) -> Gaussians:
    """A small object made of Gaussians: a red cube's surface, a blue ball on top of it and a
    yellow ring around them, all inside the radius-0.5 sphere (ShapeWorld object scale)."""
    gen = torch.Generator().manual_seed(seed)
    n_cube, n_ball = num // 2, num // 4
    n_ring = num - n_cube - n_ball
    # cube surface, side 0.5, centred at z = -0.1
    u = torch.rand(n_cube, 3, generator=gen) - 0.5
    face = torch.randint(0, 3, (n_cube,), generator=gen)
    side = torch.randint(0, 2, (n_cube,), generator=gen).float() - 0.5
    u[torch.arange(n_cube), face] = side
    cube = 0.5 * u + torch.tensor([0.0, 0.0, -0.1])
    # ball of radius 0.13 resting on top
    d = torch.nn.functional.normalize(torch.randn(n_ball, 3, generator=gen), dim=-1)
    ball = 0.13 * d + torch.tensor([0.0, 0.0, 0.28])
    # ring of radius 0.42 around the cube's waist
    a = 2 * math.pi * torch.rand(n_ring, generator=gen)
    ring = torch.stack([0.42 * torch.cos(a), 0.42 * torch.sin(a), -0.1 + 0.02 * torch.randn(n_ring, generator=gen)], -1)
    pts = torch.cat([cube, ball, ring])
    cols = torch.cat([
        torch.tensor([0.85, 0.12, 0.10]).expand(n_cube, 3),
        torch.tensor([0.12, 0.30, 0.85]).expand(n_ball, 3),
        torch.tensor([0.95, 0.85, 0.15]).expand(n_ring, 3),
    ]) * (0.85 + 0.15 * torch.rand(num, 1, generator=gen))
    return Gaussians.from_points(pts, cols, scale=0.025, opacity=0.9)


def demo_views(width: int = 64, height: int = 64, n_train: int = 16, n_test: int = 8) -> tuple[Cameras, Cameras]:
    """Training cameras (random orbit, fixed seed) and held-out ones (between them)."""
    train = OrbitSampler(width=width, height=height).sample(n_train, torch.Generator().manual_seed(123))
    az = torch.arange(n_test) * (360.0 / n_test) + 22.5
    test = orbit_cameras(torch.full((n_test,), 30.0), az, 1.8, 40.0, width, height)
    return train, test


@torch.no_grad()
def reference_images(target: Gaussians, cameras: Cameras, background=(1.0, 1.0, 1.0)) -> Tensor:
    """Target views from the dense reference renderer, a few at a time to bound memory."""
    chunks = [render_dense(target, cameras[i : i + 2], background=background).rgb for i in range(0, len(cameras), 2)]
    return torch.cat(chunks)


@torch.no_grad()
def held_out_psnr(g: Gaussians, cameras: Cameras, images: Tensor, background=(1.0, 1.0, 1.0)) -> float:
    out = render(g, cameras, background=background)
    return sum(psnr(out.rgb[i].clamp(0, 1), images[i]) for i in range(len(cameras))) / len(cameras)
