"""Densification: gsplat's strategies (DefaultStrategy, MCMCStrategy) with a schedule and a cap.

Both render backends return the `info` that the strategies read (`means2d` with its grad,
`radii [B, N, 2]`, `width`, `height`, `n_cameras`, `gaussian_ids`), so this is the same
code on CPU and GPU. Two things gsplat does not do, done here:

- a hard cap on the number of Gaussians for DefaultStrategy: at a refinement step whose
  clone/split would overshoot, the gradient threshold is raised to the value that lets just
  enough of the highest-gradient Gaussians grow;
- MCMCStrategy on CPU: gsplat computes MCMC relocation and position noise with CUDA kernels;
  off CUDA they are swapped, for the duration of the call, for the pure-PyTorch versions below
  (the same formulas: Eq. 9 of "3D Gaussian Splatting as Markov Chain Monte Carlo").
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Optional, Union

import torch
from torch import Tensor

from .gaussians import Gaussians, quat_to_rotmat

StrategyName = Literal["auto", "default", "mcmc", "none"]


# A point of the schedule: an integer is a step count, a number with a decimal point a fraction of
# the run's step budget (`--steps`), converted to steps when the Densifier is built (`resolve_schedule`).
Schedule = Union[int, float]


@dataclass
class DensifyConfig:
    """Which densification, when, and how much. The schedule (start, stop, interval, reset_every) is
    given as fractions of the step budget (0.2 = at 20 % of --steps), so that runs of different
    lengths densify at the same points of the run; an integer is still taken as a step count."""

    strategy: StrategyName = "auto"  # "default" (3DGS clone/split/prune), "mcmc", "none"; auto: default for objects, none for scenes
    start: Schedule = 0.2  # refine only after this point (fraction of --steps in [0, 1], or an integer step)
    stop: Schedule = 0.8  # no refinement from this point on (fraction in [0, 1], or an integer step)
    interval: Schedule = 0.1  # refine every this much of the run (fraction in (0, 1], or an integer number of steps)
    cap: int = 20_000  # never more Gaussians than this
    grow_grad2d: float = 0.0002  # default: clone/split above this mean screen-space gradient
    grow_scale3d: float = 0.01  # default: clone below / split above this scale (x scene scale)
    prune_opa: float = 0.005  # default: prune below this opacity
    prune_scale3d: float = 0.1  # default: prune larger than this (x scene scale), after reset_every
    reset_every: Schedule = 3_000  # default: gsplat's opacity-reset period (integer steps, or a fraction of --steps that may exceed 1); gsplat 1.5 never resets (its test has an operator-precedence slip), it only prunes too-large Gaussians after this point
    per_view: bool = False  # default: the statistic is each view's own screen-space gradient (gsplat's factor n_cameras dropped); see `Densifier` (False: gsplat's statistic, B x a view's gradient here, kept for ShapeWorld)
    prune_big_after: Optional[Schedule] = None  # default: prune Gaussians larger than prune_scale3d x scene scale at refinements after this point (None: after reset_every, gsplat's rule)
    mcmc_noise_lr: float = 5e5  # mcmc: scale of the position noise (times the means learning rate)
    mcmc_min_opacity: float = 0.005  # mcmc: relocate Gaussians below this opacity

    def __post_init__(self) -> None:
        if self.strategy not in ("auto", "default", "mcmc", "none"):
            raise ValueError(f"unknown densification strategy {self.strategy!r}: use auto, default, mcmc or none")
        for name, lo_open, hi in (("start", False, 1.0), ("stop", False, 1.0), ("interval", True, 1.0),
                                  ("reset_every", True, math.inf)):
            _check_schedule(name, getattr(self, name), lo_open, hi)
        if self.prune_big_after is not None:
            _check_schedule("prune_big_after", self.prune_big_after, False, 1.0)
        if self.cap <= 0:
            raise ValueError("densify cap must be positive")


def _check_schedule(name: str, v: Schedule, positive: bool, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"densify {name} must be a number (a fraction of --steps, or an integer step), got {v!r}")
    if isinstance(v, int):
        if v < 0 or (positive and v == 0):
            raise ValueError(f"densify {name} = {v} steps must be {'positive' if positive else '>= 0'}")
        return
    if not math.isfinite(v) or v < 0 or (positive and v == 0) or v > hi:
        rng = "(0, 1]" if positive and hi == 1.0 else ("> 0" if positive else "[0, 1]")
        hint = f"; for a step count write an integer ({int(v)})" if math.isfinite(v) and v > 1 and v == int(v) else ""
        raise ValueError(f"densify {name} = {v}: a fraction of --steps must be in {rng} (0.2 = at 20 % of the run)"
                         f"{hint}")


@dataclass(frozen=True)
class DensifySchedule:
    """The schedule in steps for one budget (what gsplat's strategies take)."""

    start: int  # refine_start_iter: refinement only at steps > start
    stop: int  # refine_stop_iter: refinement only at steps < stop
    interval: int  # refine_every: refinement only at multiples of this
    reset_every: int  # reset_every
    prune_big_after: Optional[int] = None  # too-large Gaussians pruned at refinements after this step (None: after reset_every)

    def refine_steps(self, steps: int) -> list[int]:
        """The steps of a `steps`-step run (0 .. steps-1) at which the strategy refines."""
        return [s for s in range(steps) if self.start < s < self.stop and s % self.interval == 0]


def resolve_schedule(cfg: DensifyConfig, steps: Optional[int]) -> DensifySchedule:
    """`cfg`'s schedule in steps for a run of `steps` steps (integers pass through unchanged).

    Fractions become round(fraction * steps), interval at least 1. When start, stop and interval are
    all fractions, start and stop are then moved (by less than one interval) so that the refinements
    fall at the same multiples k of the interval as in fraction space, k * interval strictly between
    start and stop: every budget refines the same number of times at the same fractions of the run
    (at 500 steps, the defaults give exactly 100 / 400 / 50)."""
    fields = ("start", "stop", "interval", "reset_every")
    if any(isinstance(getattr(cfg, f), float) for f in fields) and (steps is None or steps <= 0):
        raise ValueError("the densification schedule is given as fractions of the run: pass the step budget "
                         "(Densifier(..., steps=N)) or give start / stop / interval / reset_every as integer steps")

    def conv(v: Schedule, least: int = 0) -> int:
        return v if isinstance(v, int) else max(least, round(v * steps))

    start, stop, interval, reset = conv(cfg.start), conv(cfg.stop), conv(cfg.interval, 1), conv(cfg.reset_every, 1)
    if all(isinstance(getattr(cfg, f), float) for f in ("start", "stop", "interval")):
        tol = 1e-9
        ks = [k for k in range(1, int(1.0 / cfg.interval) + 2)
              if cfg.start + tol < k * cfg.interval < cfg.stop - tol]
        if ks:
            k0, k1 = ks[0], ks[-1]
            start = min(max(start, (k0 - 1) * interval), k0 * interval - 1)
            stop = min(max(stop, k1 * interval + 1), (k1 + 1) * interval)
    big = None if cfg.prune_big_after is None else conv(cfg.prune_big_after)
    return DensifySchedule(start, stop, interval, reset, big)


def for_mode(cfg: DensifyConfig, mode: str) -> DensifyConfig:
    """Resolve strategy "auto": 3DGS clone/split/prune for objects; none for scenes, whose init
    already covers every wall and whose split children would scatter off the walls (with one fixed
    camera centre no view corrects the depth of a Gaussian that leaves its wall)."""
    if cfg.strategy != "auto":
        return cfg
    return replace(cfg, strategy="default" if mode == "object" else "none")


class Densifier:
    """Drives one gsplat strategy over a `Gaussians` and its per-parameter optimisers.

    optimizers: one optimiser per key of `gaussians.splats` (gsplat's convention).
    Call `pre_backward(step, info)` before `loss.backward()` and `post_backward(step, info, lr)`
    after it (lr: the current learning rate of the means, used by MCMC's noise).
    steps: the run's step budget, which turns the schedule's fractions into steps (`resolve_schedule`).

    The growth statistic (strategy "default"). gsplat accumulates, per Gaussian i and per view v in
    which it is visible, s_iv = n_cameras * || dL/d mu2d_iv * (W/2, H/2) || (screen units of [-1, 1]),
    and grows i when mean_v s_iv > grow_grad2d. The factor n_cameras = B undoes the 1/B of a
    photometric loss averaged over the B views; steinsplat's guidance applies each view's gradient
    unscaled (x.backward(grad), no 1/B), so with gsplat's statistic the same per-view gradient reads
    B times larger at B views. `per_view=True` drops the factor (the strategy is told n_cameras = 1):
    s_iv = || dL_v/d mu2d_iv * (W/2, H/2) ||, one view's own gradient, the same at any B (docs/gpu.md,
    section Units of the densification statistic). `per_view=False` keeps gsplat's statistic
    (ShapeWorld's tuned default).
    Each refinement appends {"step", "before", "after", "over"} to `history`: the counts and the
    fraction of Gaussians whose statistic was over the threshold (before the cap raised it).
    """

    def __init__(self, cfg: DensifyConfig, gaussians: Gaussians, optimizers: dict[str, torch.optim.Optimizer],
                 scene_scale: float = 1.0, steps: Optional[int] = None) -> None:
        if cfg.strategy == "auto":
            raise ValueError('densification strategy "auto" depends on the mode: pass for_mode(cfg, mode)')
        self.cfg = cfg
        self.schedule = resolve_schedule(cfg, steps) if cfg.strategy != "none" else DensifySchedule(0, 0, 1, 1)
        sch = self.schedule
        self.gaussians = gaussians
        self.optimizers = optimizers
        self.strategy: Any = None
        self.state: dict[str, Any] = {}
        self.history: list[dict[str, int]] = []  # one row per refinement step
        if cfg.strategy == "default":
            self.strategy = _capped_default_strategy()(
                cap=cfg.cap,
                prune_opa=cfg.prune_opa,
                grow_grad2d=cfg.grow_grad2d,
                grow_scale3d=cfg.grow_scale3d,
                prune_scale3d=cfg.prune_scale3d,
                refine_start_iter=sch.start,
                refine_stop_iter=sch.stop,
                refine_every=sch.interval,
                reset_every=sch.reset_every,
                prune_big_after=sch.prune_big_after,
            )
            self.state = self.strategy.initialize_state(scene_scale=scene_scale)
        elif cfg.strategy == "mcmc":
            from gsplat.strategy import MCMCStrategy

            self.strategy = MCMCStrategy(
                cap_max=cfg.cap,
                noise_lr=cfg.mcmc_noise_lr,
                refine_start_iter=sch.start,
                refine_stop_iter=sch.stop,
                refine_every=sch.interval,
                min_opacity=cfg.mcmc_min_opacity,
            )
            self.state = self.strategy.initialize_state()
        if self.strategy is not None:
            self.strategy.check_sanity(gaussians.splats, optimizers)

    @property
    def enabled(self) -> bool:
        return self.strategy is not None

    def _strategy_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """`info` as the strategy should read it: with `per_view`, n_cameras = 1 (class docstring)."""
        if self.cfg.per_view and self.cfg.strategy == "default":
            return {**info, "n_cameras": 1}
        return info

    def pre_backward(self, step: int, info: dict[str, Any]) -> None:
        if self.strategy is not None:
            self.strategy.step_pre_backward(self.gaussians.splats, self.optimizers, self.state, step, info)

    def post_backward(self, step: int, info: dict[str, Any], lr: float = 0.0) -> None:
        if self.strategy is None:
            return
        before = len(self.gaussians)
        packed = info.get("gaussian_ids") is not None
        m2d = info.get("means2d")
        if isinstance(m2d, Tensor) and m2d.retains_grad and m2d.grad is None:  # nothing visible: no screen-space gradient
            m2d.grad = torch.zeros_like(m2d)
        if self.cfg.strategy == "default":
            self.strategy.last_over = None
            self.strategy.step_post_backward(self.gaussians.splats, self.optimizers, self.state, step,
                                             self._strategy_info(info), packed=packed)
        else:
            with _cpu_mcmc_ops(self.gaussians.device):
                self.strategy.step_post_backward(self.gaussians.splats, self.optimizers, self.state, step, info, lr=lr)
        after = len(self.gaussians)
        if self._is_refine_step(step):
            row: dict[str, Any] = {"step": step, "before": before, "after": after}
            over = getattr(self.strategy, "last_over", None)
            if over is not None:
                row["over"] = over
            self.history.append(row)

    def _is_refine_step(self, step: int) -> bool:
        c = self.schedule
        return c.start < step < c.stop and step % c.interval == 0

@functools.cache
def _capped_default_strategy() -> type:
    """The class is built on first use, so importing this module does not import gsplat."""
    from gsplat.strategy import DefaultStrategy

    @dataclass
    class CappedDefaultStrategy(DefaultStrategy):
        """gsplat's DefaultStrategy that never grows past `cap` Gaussians.

        At a refinement step whose clone/split would overshoot, the gradient threshold is raised
        to the value that lets only the `cap - N` highest-gradient Gaussians grow (each clone or
        split adds exactly one).
        """

        cap: int = 1_000_000
        prune_big_after: Optional[int] = None  # too-large Gaussians pruned after this step (None: after reset_every)
        last_over: Optional[float] = None  # fraction of Gaussians over grow_grad2d at the last refinement

        def _grow_gs(self, params, optimizers, state, step):  # type: ignore[override]
            original = self.grow_grad2d
            budget = self.cap - len(params["means"])
            grads = state["grad2d"] / state["count"].clamp_min(1)  # [N] mean screen-space gradient
            self.last_over = float((grads > original).float().mean()) if grads.numel() else 0.0
            if int((grads > original).sum()) > max(budget, 0):
                if budget <= 0:
                    self.grow_grad2d = float("inf")
                else:
                    self.grow_grad2d = max(original, float(torch.topk(grads, budget + 1).values[budget]))
            try:
                return super()._grow_gs(params, optimizers, state, step)
            finally:
                self.grow_grad2d = original

        def _prune_gs(self, params, optimizers, state, step):  # type: ignore[override]
            # gsplat prunes too-large Gaussians only at steps > reset_every; prune_big_after moves that
            # point without touching the opacity-reset period
            if self.prune_big_after is None:
                return super()._prune_gs(params, optimizers, state, step)
            original = self.reset_every
            self.reset_every = self.prune_big_after
            try:
                return super()._prune_gs(params, optimizers, state, step)
            finally:
                self.reset_every = original

    return CappedDefaultStrategy


# ---------------------------------------------------------------------------- MCMC on CPU
def relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch twin of gsplat's CUDA `compute_relocation` (3DGS-MCMC, Eq. 9).

    A Gaussian of opacity o copied n times gets opacity o' = 1 - (1 - o)^(1/n) and scale
    s' = s * o / sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1),
    so that the n copies together render like the original.
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).to(torch.int64)  # [N]
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / n.to(opacities.dtype))  # [N]
    i = torch.arange(1, n_max + 1, device=opacities.device)  # [n_max]
    k = torch.arange(n_max, device=opacities.device)  # [n_max]
    coef = binoms[(i - 1)[:, None], k[None, :]].to(opacities.dtype)  # [i, k] = C(i-1, k)
    coef = coef * ((-1.0) ** k.to(opacities.dtype)) / torch.sqrt(k.to(opacities.dtype) + 1.0)
    coef = torch.where(k[None, :] <= (i - 1)[:, None], coef, torch.zeros_like(coef))  # k < i
    powers = new_o[:, None] ** (k[None, :] + 1).to(opacities.dtype)  # [N, k]
    per_i = powers @ coef.T  # [N, i]
    denom = (per_i * (i[None, :] <= n[:, None])).sum(-1)  # sum over i = 1..n
    new_s = (opacities / denom)[:, None] * scales
    return new_o, new_s


def covariance_torch(quats: Tensor, scales: Tensor, compute_covar: bool = True, compute_preci: bool = True,
                     triu: bool = False) -> tuple[Tensor | None, Tensor | None]:
    """Pure-PyTorch twin of gsplat's `quat_scale_to_covar_preci` (full 3x3 matrices only)."""
    if triu:
        raise NotImplementedError("triu=True is not needed by the strategies")
    R = quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))
    covar = (R * scales[..., None, :] ** 2) @ R.transpose(-1, -2) if compute_covar else None
    preci = (R / scales[..., None, :] ** 2) @ R.transpose(-1, -2) if compute_preci else None
    return covar, preci


@contextlib.contextmanager
def _cpu_mcmc_ops(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        yield
        return
    import gsplat.strategy.ops as ops

    saved = ops.compute_relocation, ops.quat_scale_to_covar_preci
    ops.compute_relocation, ops.quat_scale_to_covar_preci = relocation_torch, covariance_torch
    try:
        yield
    finally:
        ops.compute_relocation, ops.quat_scale_to_covar_preci = saved


def per_param_optimizers(gaussians: Gaussians, lrs: dict[str, float], eps: float = 1e-15) -> dict[str, Any]:
    """One Adam per parameter (gsplat's convention, needed by its strategies): steinsplat.optim.Adam on a
    CPU (torch.optim.Adam's numbers without importing torch._dynamo, a third of the time to the first
    step), torch.optim.Adam elsewhere."""
    missing = set(gaussians.splats) - set(lrs)
    if missing:
        raise ValueError(f"learning rates missing for {sorted(missing)}")
    from .optim import adam

    return {k: adam([{"params": [p], "lr": lrs[k], "name": k}], eps=eps) for k, p in gaussians.splats.items()}

