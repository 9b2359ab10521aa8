"""Stein Score Distillation (SteinDreamer, Wang et al. 2023): SDS with Stein control variates.

Stein's identity. For x_t | x ~ N(alpha_t x, sigma_t^2 I) and any differentiable phi of x_t
(never of eps except through x_t), E[eps phi(x_t)] = sigma_t E[grad_{x_t} phi(x_t)], so
CV = eps phi(x_t) - sigma_t grad phi(x_t) has E_eps[CV] = 0 (baselines.py has the derivation and
the sign convention; stein_pixel.py the per-pixel form).

The estimator, step by step (one code path; the parts live in their own modules):
    1. t ~ U{t_min..t_max} [B],  eps ~ N(0, I),  x_t = alpha_t x + sigma_t eps
    2. eps_hat = CFG noise prediction at x_t                             (no grad through the UNet)
    3. control variates CV_k, k = 0, ..., K-1:
         a. CV_0 = eps            (phi_0 = 1: the constant term; grad phi_0 = 0)
         b. (noise_kernel k > 1 or noise_maps != "none") CV_(j, c', dy, dx) = m_j ⊙ S_(c', dy, dx) eps:
            the noise shifted by (dy, dx) within a k x k window (zero outside the image), taken from
            channel c + c' (mod C) when mixing channels, and multiplied by a map m_j of the
            *detached* render: 1, the rendered alpha, the channels x_c of x and their products
            x_c x_c' ("poly2"). m_j does not depend on eps, so each CV is zero-mean by itself
            (E[m ⊙ S eps] = m ⊙ S E[eps] = 0); with mu per channel, sum mu ⊙ CV over them is a
            content-dependent k x k filter M(x) applied to eps. This is Stein's identity with a
            constant vector field per output element (E[eps g^T] = sigma E[grad g] = 0 for g
            constant in x_t), the matrix-valued generalisation of phi_0's scalar mu_0.
            Why it helps: to first order in eps, eps_hat(x_t) - eps = (sigma_t J - I) eps + const,
            J = d eps_hat / d x_t the denoiser's Jacobian at alpha_t x; the optimal M is
            sigma_t E[J] (Stein again), which is local, mixes channels and changes with the image
            content, while a diagonal mu_0 can only cancel its diagonal. On a Gaussian data
            distribution eps_hat is exactly linear in x_t and a wide enough M removes all the
            eps-variance.
            (noise_cv.py builds these CVs as one set of features and never materialises them.)
         c. CV_k = each baseline's `control_variate` (baselines.py): the paper's scalar
            eps phi_k(x_t) - sigma_t grad phi_k(x_t) (depth, normal, ...), or a per-pixel field's
            eps ⊙ g_k(x_t) - sigma_t diag(d g_k / d x_t) (stein_pixel.py)
    4. grad = w(t) (eps_hat - sum_k mu_k ⊙ CV_k)                          (descent gradient on x)
       with mu from earlier steps only (mu_fit.py: least squares per channel and timestep bin, or
       Adam), then this step's data enter the fit
    5. the guard (guard.py): per timestep bin, SDS's grad instead for the first updates and
       wherever the fitted mu has shown a larger second moment than SDS's on later steps
    6. (`sham=True`, the negative control "ssd-sham") steps 1-5 run as above, with their full cost
       (the same prior call, baselines, mu fit and guard bookkeeping), and then the served mu is
       frozen at SDS's (1, 0, ..., 0): grad = w(t) (eps_hat - eps), exactly SDS's gradient for the
       same t, eps and cameras. A study that finds SSD ahead of SDS must find the sham tied with
       SDS: what the sham's runs differ by is the cost of SSD's bookkeeping, never its variance.
With mu_0 = 1 and mu_k = 0 this is exactly SDS. Whatever mu (as long as it does not depend on
this step's eps), E[grad] = E[w eps_hat]: only the variance changes. mu minimises E||grad||^2
(which, the mean being fixed, is the variance). On the Gaussian toy (tests/test_guidance.py) the
least-squares fit wins clearly over Adam (variance vs SDS at random t 0.87x against 1.14x; at
t = 200 0.001x against 0.05x; at t = 500 0.03x against 2.5x): it is the default.

Presets (ssd_config.py SSD_PRESETS). `constant` = SSDConfig(): steps 3a + 3c, the paper's family.
`filter` = steps 3a + 3b (noise_kernel=3, noise_mix_channels=True, noise_maps="poly2"), what
generation uses, with the depth baseline for scenes: measured on ShapeWorld, the estimator
baselines add no variance reduction on top of step 3b at ~1.3-1.6x the cost of an SDS step
(README, docs/benchmarks.md).

State: the fit's (mu_fit.MuState), the guard's (guard.GuardState) and the baselines' own (e.g.
the per-pixel baselines' probe generators); `state_tensors` / `load_state_tensors` save all three
for an exact resume.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..cameras import Cameras
from ..priors.base import DiffusionPrior, PromptEmbeds
from ..render.common import RenderOutput
from .base import Estimate, Guidance, weighting
from .baselines import Baseline, BaselineContext
from .guard import Guard, render_pullback
from .mu_fit import MuFit
from .noise_cv import NoiseFeatures, noise_maps, noise_shifts, num_noise_maps
from .ssd_config import SSDConfig


class SSD(Guidance):
    """Stein Score Distillation: the constant term, optionally step 3b's noise filter, plus baselines."""

    def __init__(self, prior: DiffusionPrior, baselines: Sequence[Baseline] = (), config: Optional[SSDConfig] = None) -> None:
        super().__init__(prior, config or SSDConfig())
        self.config: SSDConfig
        self.baselines = list(baselines)
        C = prior.model_channels
        self.shifts = noise_shifts(self.config.noise_kernel, self.config.noise_mix_channels, C)  # step 3b
        self.K_noise = len(self.shifts) * num_noise_maps(self.config.noise_maps, C)  # CV_0 and step 3b's
        if not self.config.constant_term:
            if self.K_noise > 1:
                raise ValueError("constant_term=False leaves out CV_0 = eps: use it without noise_kernel > 1 or noise_maps")
            if not self.baselines:
                raise ValueError("constant_term=False needs at least one baseline")
            self.K_noise = 0
        self.K = self.K_noise + len(self.baselines)  # number of control variates (constant first)
        self.guard = Guard(self.config)  # step 5
        if self.K_noise > 1 and self.config.mu_mode == "optimizer":
            raise ValueError("SSD's shifted-noise control variates (noise_kernel > 1 or noise_maps) need "
                             "mu_mode='least_squares' (or 'fixed')")
        self.fit = MuFit(self.config, self.K, prior.schedule.num_train_timesteps)  # step 4's mu

    def current_mu(self, t: Tensor) -> Tensor:
        """mu for timesteps t [B] -> [B, K, *mu_shape] (from earlier steps only)."""
        return self.fit.current(t)

    def init_state(self, x: Tensor) -> None:
        """A fresh fit and guard for x [B, C, h, w] (the first step does it; tests may too)."""
        if self.config.mu_granularity == "pixel" and self.K_noise > 1:
            raise ValueError(f"mu per pixel with {self.K} control variates needs {self.K}^2 moments per pixel: "
                             "use mu_granularity='channel' (or 'scalar') with noise_kernel > 1 or noise_maps")
        self.fit.init_state(x)
        self.guard.init_state(x.device)

    # ---- checkpoints
    def state_tensors(self) -> dict[str, Tensor]:
        t = super().state_tensors()
        if self.fit.state is None:
            return t
        t.update(self.fit.state_tensors())
        t.update(self.guard.state_tensors())
        for i, bl in enumerate(self.baselines):  # e.g. the per-pixel baselines' probe generators
            if hasattr(bl, "state_tensors"):
                t.update({f"ssd.baseline{i}.{k}": v for k, v in bl.state_tensors().items()})
        return t

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        if "ssd.mu_table" not in tensors:
            return
        self.fit.load_state_tensors(tensors, self.prior.device)
        self.guard.load_state_tensors(tensors, self.prior.device)
        for i, bl in enumerate(self.baselines):
            pre = f"ssd.baseline{i}."
            if hasattr(bl, "load_state_tensors"):
                bl.load_state_tensors({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})

    # ---- the estimator
    def step(self, x: Tensor, embeds: PromptEmbeds, cameras: Cameras, render: Optional[RenderOutput] = None,
             *args, **kw):
        """Guidance.step, keeping x's graph for the guard's "render" proxy (step 5; x itself is used detached)."""
        self._x_graph = x if x.requires_grad else None
        try:
            return super().step(x, embeds, cameras, render, *args, **kw)
        finally:
            self._x_graph = None  # never keep a step's graph alive

    def _pullback(self, render: Optional[RenderOutput]):
        """Step 5's "render" proxy for this step, or None (no graph to the render's 2D means: the pooled proxy)."""
        x = getattr(self, "_x_graph", None)
        m2 = None if render is None else render.info.get("means2d")
        if self.config.guard_proxy != "render" or x is None or not isinstance(m2, Tensor) or not m2.requires_grad:
            return None
        if m2.dim() != 3 or m2.shape[0] != x.shape[0]:  # packed (gsplat's [nnz, 2]): no per-view means, pool instead
            return None
        return render_pullback(x, m2)

    def _estimate(self, x: Tensor, t: Tensor, eps: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                  render: Optional[RenderOutput], update_state: bool) -> Estimate:
        prior, cfg = self.prior, self.config
        if self.fit.state is None:
            self.init_state(x)
        alpha, sigma = prior.schedule.alpha_t(t), prior.schedule.sigma_t(t)  # [B, 1, 1, 1]
        x_t = alpha * x + sigma * eps  # [B, C, h, w]  step 1
        eps_hat = prior.predict_noise(x_t, t, embeds, cameras, cfg.guidance_scale).float()  # step 2
        ctx = BaselineContext(t=t, alpha=alpha, sigma=sigma, cameras=cameras, render=render, prior=prior)
        bl_cvs, phis = [], []
        for bl in self.baselines:  # step 3c
            cv_k, phi_k = bl.control_variate(ctx, x_t, eps)  # [B, C, h, w], [B]
            bl_cvs.append(cv_k)
            phis.append(phi_k)
        mu = self.fit.current(t)  # [B, K, *s]  (lagged: from earlier steps)
        w = weighting(prior.schedule, t, cfg.weighting)  # [B, 1, 1, 1]
        fitting = update_state and cfg.mu_mode != "fixed"
        if self.K_noise <= 1:  # the paper's family: CV_0 = eps (step 3a, unless left out) and the baselines
            cv = torch.stack([eps] * self.K_noise + bl_cvs, dim=1)  # [B, K, C, h, w]
            grad = w * (eps_hat - (mu * cv).sum(1))  # [B, C, h, w]  step 4
            if fitting:
                self.fit.update(eps_hat, cv, w, t)
        else:  # steps 3a + 3b as features, never materialised (noise_cv.py)
            noise = NoiseFeatures(eps.float(), noise_maps(cfg.noise_maps, x, render), self.shifts, cfg.noise_kernel)
            mu_n = mu[:, : self.K_noise, :, 0, 0].expand(-1, -1, eps.shape[1])  # [B, K_noise, C]
            cv_b = torch.stack(bl_cvs, dim=1) if bl_cvs else None  # [B, K_b, C, h, w]
            residual = eps_hat - noise.combine(mu_n)  # [B, C, h, w]
            est_b = (mu[:, self.K_noise :] * cv_b).sum(1) if cv_b is not None else 0.0
            grad = w * (residual - est_b)  # step 4
            if fitting:
                self.fit.update(eps_hat, cv_b, w, t, noise=noise, residual=residual)
        if cfg.guard and cfg.constant_term and cfg.mu_mode != "fixed":  # step 5 (the fit's counts include this step)
            grad = self.guard.apply(grad, w * (eps_hat - eps), self.fit.bins(t), self.fit.state.n, update_state,
                                    pullback=self._pullback(render) if update_state else None)
        phi = torch.stack(phis, 1) if phis else None
        if cfg.sham:  # step 6: everything above was paid for; serve SDS's mu = (1, 0, ..., 0)
            grad = w * (eps_hat - eps)  # [B, C, h, w]
            mu = self.fit.initial_mu(x.device).unsqueeze(0).expand(len(t), -1, *mu.shape[2:])  # [B, K, *s]
        return Estimate(grad=grad, x_t=x_t, phi=phi, mu=mu.flatten(2).mean((0, 2)).detach())
