"""What SDS, VSD and SSD share: the typed output, timesteps, weighting, the surrogate loss,
running moments, and the parameter-space variance helper.

Conventions (docs/architecture.md, section The gradient estimators; `priors/base.py` has the notation):
    x_t = alpha_t x + sigma_t eps,   eps ~ N(0, I),   t ~ U{t_min, ..., t_max}
    w(t) = sigma_t^2 by default (threestudio's weighting), or 1 ("uniform").
Every estimator returns a **descent** gradient `grad` on x, shape [B, C, h, w]: the update is
x <- x - lr * grad (through the render, by `x.backward(grad)` or the surrogate below).

The surrogate: L(x) = 0.5 * || x - (x - grad).detach() ||^2 (summed). Its gradient is
dL/dx = x - (x - grad) = grad, so minimising L moves x along -grad, i.e. exactly the descent
step above; the value of L is 0.5 ||grad||^2, which says nothing about convergence (log it for
scale only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import Tensor

from ..cameras import Cameras
from ..priors.base import DiffusionPrior, NoiseSchedule, PromptEmbeds
from ..render.common import RenderOutput

Weighting = Literal["sigma2", "uniform"]


# ---------------------------------------------------------------------------- helpers
def sample_timesteps(batch: int, t_range: tuple[int, int], generator: Optional[torch.Generator] = None,
                     device: torch.device | str = "cpu") -> Tensor:
    """Integer timesteps [B], uniform on {t_min, ..., t_max} (inclusive), one per view."""
    t_min, t_max = t_range
    return torch.randint(t_min, t_max + 1, (batch,), generator=generator).to(device)


def stratified_timesteps(batch: int, t_range: tuple[int, int], generator: Optional[torch.Generator] = None,
                         device: torch.device | str = "cpu") -> Tensor:
    """Integer timesteps [B], one per stratum: the range {t_min, ..., t_max} cut into B equal parts,
    view i drawn uniformly in part perm(i) for a random permutation. Each view's t is uniform on the
    whole range by itself (perm(i) is a uniform stratum, the draw uniform within it), so every
    estimator keeps its mean; the B timesteps of a step never bunch up."""
    t_min, t_max = t_range
    perm = torch.randperm(batch, generator=generator)  # [B]
    u = (perm.to(torch.float64) + torch.rand(batch, generator=generator, dtype=torch.float64)) / batch  # [B] in [0, 1)
    n = t_max - t_min + 1
    return (t_min + torch.floor(u * n).long().clamp_max(n - 1)).to(device)


def weighting(schedule: NoiseSchedule, t: Tensor, kind: Weighting = "sigma2") -> Tensor:
    """w(t) as [B, 1, 1, 1]: sigma_t^2 = 1 - alphabar_t ("sigma2", threestudio's default) or 1."""
    if kind == "sigma2":
        return schedule.sigma_t(t) ** 2
    if kind == "uniform":
        return torch.ones_like(schedule.sigma_t(t))
    raise ValueError(f"unknown weighting {kind!r}: use 'sigma2' or 'uniform'")


def surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 * ||x - (x - grad).detach()||^2, whose gradient w.r.t. x is exactly `grad` (module docstring)."""
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum()


def per_element_variance(samples: Tensor) -> float:
    """Mean over elements of the unbiased variance across the first axis ([K, ...] -> float)."""
    if samples.shape[0] < 2:
        return float("nan")
    return float(samples.var(dim=0, unbiased=True).mean())


@dataclass
class RunningMoments:
    """EMA of the first and second moments of a tensor; `variance` = mean of E[g^2] - E[g]^2.

    Across optimisation steps x moves, so this mixes the noise variance with the drift of the
    mean: a cheap, always-on indicator, not a measurement (use `variance_draws` for that).
    """

    decay: float = 0.99  # EMA decay
    mean: Optional[Tensor] = None  # E[g], the shape of one gradient sample [C, h, w]
    sq: Optional[Tensor] = None  # E[g^2]
    count: int = 0  # number of updates so far

    def update(self, g: Tensor) -> None:
        """g: [B, C, h, w]; the batch counts as B samples (one vectorised update)."""
        g = g.detach().float()
        B = g.shape[0]
        self.count += B
        r = max(1.0 - self.decay, B / self.count)  # bias-free start
        m, sq = g.mean(0), (g * g).mean(0)
        if self.mean is None:
            self.mean, self.sq = m, sq
        else:
            self.mean.mul_(1 - r).add_(m, alpha=r)
            self.sq.mul_(1 - r).add_(sq, alpha=r)

    @property
    def variance(self) -> Optional[float]:
        if self.mean is None or self.count < 2:
            return None
        return float((self.sq - self.mean**2).clamp_min(0).mean())


# ---------------------------------------------------------------------------- typed outputs
@dataclass
class GuidanceDiagnostics:
    """Per-step numbers to log. Variances are per element of x, averaged over elements."""

    t: Tensor  # [B] the timesteps used
    weight: Tensor  # [B] w(t)
    grad_second_moment: float  # mean of grad^2 over all elements of this step
    running_variance: Optional[float] = None  # from EMA moments over steps (None until 2 samples)
    mc_variance: Optional[float] = None  # over `variance_draws` fresh eps at the same x and t (None if off)
    lora_loss: Optional[float] = None  # VSD: the LoRA's diffusion loss this step
    phi: Optional[Tensor] = None  # SSD: [B, K-1] baseline values phi_k(x_t) (without the constant)
    mu: Optional[Tensor] = None  # SSD: [K] mean mu per control variate (constant first) used this step


@dataclass
class GuidanceOutput:
    grad: Tensor  # [B, C, h, w] descent gradient on x (apply with x.backward(grad) or surrogate_loss)
    loss: Tensor  # [] detached 0.5 * ||grad||^2 / B, for logging only
    diagnostics: GuidanceDiagnostics
    eps: Tensor  # [B, C, h, w] the noise drawn (to reproduce or compare estimators)
    x_t: Tensor  # [B, C, h, w] the noised input alpha_t x + sigma_t eps

    def surrogate(self, x: Tensor) -> Tensor:
        """The loss whose gradient w.r.t. x is `grad` (see `surrogate_loss`)."""
        return surrogate_loss(x, self.grad)


@dataclass
class GuidanceConfig:
    guidance_scale: Optional[float] = None  # classifier-free guidance; None: the prior's default
    weighting: Weighting = "sigma2"  # w(t)
    variance_draws: int = 0  # K >= 2: per step, also estimate the model-space variance from K fresh eps (K more UNet calls)
    running_decay: float = 0.99  # EMA decay of the always-on running moments


@dataclass
class Estimate:
    """What an algorithm's `_estimate` returns: the gradient and optional extras."""

    grad: Tensor  # [B, C, h, w]
    x_t: Tensor  # [B, C, h, w]
    lora_loss: Optional[float] = None
    phi: Optional[Tensor] = None  # [B, K-1] (SSD)
    mu: Optional[Tensor] = None  # [K] (SSD)


class Guidance:
    """Base class of SDS / VSD / SSD: draws t and eps, calls `_estimate`, adds diagnostics."""

    def __init__(self, prior: DiffusionPrior, config: Optional[GuidanceConfig] = None) -> None:
        self.prior = prior
        self.config = config or GuidanceConfig()
        self.moments = RunningMoments(self.config.running_decay)

    def _estimate(self, x: Tensor, t: Tensor, eps: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                  render: Optional[RenderOutput], update_state: bool) -> Estimate:
        raise NotImplementedError

    # ---- checkpoints (the training loop saves and restores these for an exact resume)
    def state_tensors(self) -> dict[str, Tensor]:
        """Learned state as named tensors (subclasses add theirs)."""
        t: dict[str, Tensor] = {}
        if self.moments.mean is not None:
            t["moments.mean"], t["moments.sq"] = self.moments.mean, self.moments.sq
            t["moments.count"] = torch.tensor(self.moments.count)
        return t

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "moments.mean" in tensors:
            dev = self.prior.device
            self.moments.mean = tensors["moments.mean"].to(dev).clone()
            self.moments.sq = tensors["moments.sq"].to(dev).clone()
            self.moments.count = int(tensors["moments.count"])

    def step(self, x: Tensor, embeds: PromptEmbeds, cameras: Cameras, render: Optional[RenderOutput] = None,
             progress: float = 0.0, t: Optional[Tensor] = None, eps: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None, update_state: bool = True) -> GuidanceOutput:
        """One guidance evaluation at x [B, C, h, w] (model space, may carry a graph; used detached).

        render: the RenderOutput x came from (SSD reads its detached depth / normals).
        progress: training progress in [0, 1] (timestep annealing). t [B] and eps [B, C, h, w]
        may be given (same-noise comparisons); else drawn with `generator`.
        update_state: False leaves learned state alone (VSD's LoRA, SSD's mu statistics, moments).
        """
        xd = x.detach().float()
        B = xd.shape[0]
        if t is None:
            t = sample_timesteps(B, self.prior.timestep_range(progress), generator, xd.device)
        t = t.to(xd.device).long()
        if eps is None:
            eps = torch.randn(xd.shape, generator=generator).to(xd.device)  # [B, C, h, w]
        est = self._estimate(xd, t, eps, embeds, cameras, render, update_state)
        w = weighting(self.prior.schedule, t, self.config.weighting).view(-1)
        mc = None
        if self.config.variance_draws >= 2:
            draws = [est.grad]
            for _ in range(self.config.variance_draws - 1):
                e = torch.randn(xd.shape, generator=generator).to(xd.device)
                draws.append(self._estimate(xd, t, e, embeds, cameras, render, update_state=False).grad)
            mc = per_element_variance(torch.stack(draws))
        if update_state:
            self.moments.update(est.grad)
        diag = GuidanceDiagnostics(
            t=t, weight=w, grad_second_moment=float((est.grad**2).mean()), running_variance=self.moments.variance,
            mc_variance=mc, lora_loss=est.lora_loss, phi=est.phi, mu=est.mu,
        )
        loss = (0.5 * (est.grad.detach() ** 2).sum() / B)
        return GuidanceOutput(grad=est.grad.detach(), loss=loss, diagnostics=diag, eps=eps, x_t=est.x_t.detach())


# ---------------------------------------------------------------------------- parameter-space variance
@dataclass
class ParameterVariance:
    """Variance of the gradient w.r.t. 3D parameters over repeated noise draws at a fixed scene."""

    total: float  # sum over all parameter elements of the per-element variance (trace of the covariance)
    per_parameter: dict[str, float]  # the same sum, per parameter name
    mean_norm_sq: float  # ||E[g]||^2 (the signal)
    second_moment: float  # E[||g||^2] = total + mean_norm_sq (up to the n/(n-1) factor)
    draws: int  # number of draws
    seconds_per_draw: float  # wall time of one guidance step + backward to the parameters


def parameter_gradient_variance(
    guidance: Guidance,
    params: dict[str, Tensor],
    make_x: Callable[[], tuple[Tensor, Optional[RenderOutput]]],
    embeds: PromptEmbeds,
    cameras: Cameras,
    draws: int = 32,
    progress: float = 0.0,
    generator: Optional[torch.Generator] = None,
    update_state: bool = False,
) -> ParameterVariance:
    """Draw (t, eps) `draws` times at a fixed scene and measure the spread of d x/d theta^T grad.

    make_x() renders and encodes once: it returns x [B, C, h, w] with its graph to `params`
    and the RenderOutput. Each draw runs `guidance.step` and `torch.autograd.grad(x, params,
    grad_outputs=grad)`, i.e. the gradient the optimiser would see. With update_state=False
    the estimator's learned state is frozen during the measurement.
    """
    if draws < 2:
        raise ValueError("need at least 2 draws to estimate a variance")
    names = list(params)
    x, render = make_x()
    s1 = {n: torch.zeros_like(params[n]) for n in names}
    s2 = {n: torch.zeros_like(params[n]) for n in names}
    t0 = time.perf_counter()
    for _ in range(draws):
        out = guidance.step(x, embeds, cameras, render=render, progress=progress, generator=generator,
                            update_state=update_state)
        grads = torch.autograd.grad(x, [params[n] for n in names], grad_outputs=out.grad, retain_graph=True,
                                    allow_unused=True)
        for n, g in zip(names, grads):
            g = torch.zeros_like(params[n]) if g is None else g.detach()
            s1[n] += g
            s2[n] += g * g
    dt = (time.perf_counter() - t0) / draws
    per: dict[str, float] = {}
    mean_norm_sq = 0.0
    for n in names:
        m = s1[n] / draws
        var = (s2[n] / draws - m * m).clamp_min(0) * draws / (draws - 1)
        per[n] = float(var.sum())
        mean_norm_sq += float((m * m).sum())
    total = sum(per.values())
    return ParameterVariance(total, per, mean_norm_sq, total + mean_norm_sq, draws, dt)
