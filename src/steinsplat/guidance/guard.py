"""SSD's guard (ssd.py step 5): per timestep bin, SDS's gradient where the fitted mu does worse.

Per bin, serve SDS's gradient (mu = (1, 0, ..., 0)) instead of the fitted mu's until the bin has
`guard_min_updates` updates, and wherever the fit has shown, on later steps than those it was
fitted on, a larger second moment than SDS's. Step by step, for grad = grad_fit, grad_sds
[B, C, h, w] of the same t, eps and cameras:
    1. the proxy P(g) [B, ...] of the parameters' gradient, one per view (`guard_proxy`):
       "render" (the default where a render graph is at hand): the gradient pulled back through the
         render onto the Gaussians' projected 2D means, P(g)_b = (d x_b / d means2d_b)^T g_b
         [B, N, 2], a vector-Jacobian product (two per measured step: grad_fit and grad_sds; the
         steps are measured every `guard_every` steps, 2 by default: ~+15 % of an SSD step on the
         2-core CPU at 64 px and 4 views, against ~+31 % measuring every step). The means
         carry ~99.7 % of the parameter-space variance of a ShapeWorld snapshot (sum over
         elements, SDS, step 50 of 100), and means3d's gradient is sum_b (d means2d_b / d means)^T
         P(g)_b, so the squared norm of P follows the parameters' (up to the projection's scale,
         the same for both gradients of a view);
       "pooled" (and the fallback without a render graph: toy priors, detached x): g average-pooled
         over f x f blocks, f = guard_pool. It sees the low frequencies only; the means' gradient
         is a derivative of the footprint, a band-pass the pooling misses (a fit 1.13x SDS in
         parameter space passed it, `tests/test_guard_calibration.py`);
    2. the paired difference per view D = sum(P(grad_fit)^2) - sum(P(grad_sds)^2) (mean over
       elements for "pooled"): both gradients have the same mean, so E[D] is exactly the
       difference of their variances (in the proxy's space); a neutral fit has E[D] = 0;
    3. per bin k, EMAs m_k = E[D], m2_k = E[D^2] (decay guard_decay, bias-free start, one update
       per step: the mean of D over the step's views in bin k) and the count n_k;
       n_eff = min(n_k, (1 + decay) / (1 - decay)) the EMA's effective sample size,
       s_k^2 = (m2_k - m_k^2) n_eff / (n_eff - 1), SE_k = s_k / sqrt(n_eff);
    4. the test: the fit is refused in bin k where n_k >= 2 and m_k > c SE_k, with c the
       one-sided (1 - guard_alpha) quantile of Student's t with nu = n_eff - 1 degrees of freedom
       (exact for nu = 1, 2; Cornish-Fisher beyond, `t_quantile`). With equal weights (n_k below
       the EMA's memory) this is exactly the one-sided t-test of E[D] <= 0 at level guard_alpha,
       so a neutral fit is refused on about guard_alpha of its views (measured: 3.3-3.9 % at the
       default 0.05, tests/test_guard_calibration.py; the old rule m > 1 SE refused 17 %).
       A clearly worse fit is caught within a few steps; a better one, or one not shown to be
       worse, is kept. (An earlier guard waited for evidence that the fit was better; noisy
       evidence then kept SDS at steps where the fit halved the parameter-space variance.)
The decision at a step uses the statistics of earlier steps only (3 is updated after 4 is
decided), so the estimator stays unbiased.

What the run did (`Guard.summary`, always on, free): views seen and views served the fit's
gradient per bin, and the proxy's second moments summed over the measured views, of the fit's,
SDS's and the served gradient: served / SDS is the in-run second-moment ratio (the means being
equal, an upper bound of the variance ratio where it is below 1).

State (`GuardState`): (m, m2, n) per bin, saved as "ssd.guard" [3, bins] (unchanged since the
first guard), the run's counts as "ssd.guard.counts" [5, bins] and the call count as
"ssd.guard.calls" (a checkpoint without them starts them at zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssd_config import SSDConfig

Pullback = Callable[[Tensor], Tensor]  # g [B, C, h, w] -> the proxy's squared norm per view [B]

COUNT_ROWS = ("views", "served_fit", "sq_fit", "sq_sds", "sq_served")  # the rows of GuardState.counts


def t_quantile(p: float, nu: float) -> float:
    """The p-quantile of Student's t with nu degrees of freedom (p > 0.5): exact for nu <= 2, the
    Cornish-Fisher expansion to 1 / nu^3 beyond (within 0.3 % of the exact value for nu >= 3 at
    p = 0.95), the normal quantile for nu = inf."""
    if nu <= 1.0:
        return math.tan(math.pi * (p - 0.5))
    if nu <= 2.0:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    if math.isinf(nu):
        return z
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / nu + g2 / nu**2 + g3 / nu**3


@dataclass
class GuardState:
    """The guard's statistics per timestep bin."""

    stats: Tensor  # [3, bins]: EMA of D, EMA of D^2, measurements (float)
    counts: Optional[Tensor] = None  # [5, bins]: COUNT_ROWS summed over the run (float)

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = torch.zeros(len(COUNT_ROWS), self.stats.shape[1], device=self.stats.device)

    @classmethod
    def zeros(cls, bins: int, device: torch.device | str) -> "GuardState":
        return cls(torch.zeros(3, bins, device=device))


def pooled_sq(g: Tensor, pool: int) -> Tensor:
    """Step 1's "pooled" proxy: mean of the f x f average-pooled g squared per view, g [B, C, h, w] -> [B]."""
    f = min(pool, g.shape[-1], g.shape[-2])
    return F.avg_pool2d(g, f).pow(2).flatten(1).mean(1)


def render_pullback(x: Tensor, means2d: Tensor) -> Pullback:
    """Step 1's "render" proxy: g [B, C, h, w] -> sum_n ||(d x_b / d means2d_b)^T g_b||^2 [B], one
    vector-Jacobian product through x's graph (kept for the trainer's own backward)."""

    def sq(g: Tensor) -> Tensor:
        (gm,) = torch.autograd.grad(x, means2d, grad_outputs=g.to(x.dtype), retain_graph=True, allow_unused=True)
        if gm is None:  # x does not depend on the means (nothing visible)
            return torch.zeros(g.shape[0], device=g.device)
        return gm.detach().float().pow(2).flatten(1).sum(1)  # [B]

    return sq


class Guard:
    """Step 5 of ssd.py, configured by SSDConfig's guard_* fields (module docstring)."""

    def __init__(self, config: SSDConfig) -> None:
        if config.guard_pool < 1:
            raise ValueError(f"guard_pool must be at least 1 (1: no pooling), got {config.guard_pool}")
        if not 0.0 < config.guard_alpha < 0.5:
            raise ValueError(f"guard_alpha is the test's level, in (0, 0.5) (0.05: a neutral fit refused on ~5 % of "
                             f"its views), got {config.guard_alpha}")
        if config.guard_proxy not in ("render", "pooled"):
            raise ValueError(f"unknown guard_proxy {config.guard_proxy!r}: use 'render' or 'pooled'")
        if config.guard_every < 1:
            raise ValueError(f"guard_every must be at least 1 (1: measure every step), got {config.guard_every}")
        self.config = config
        self.state: Optional[GuardState] = None  # made with the fit's state (SSD's first step)
        self.calls = 0  # state-updating calls so far (the render proxy measures every guard_every-th)

    def init_state(self, device: torch.device | str) -> GuardState:
        self.state = GuardState.zeros(self.config.timestep_bins, device)
        self.calls = 0
        return self.state

    def refused(self) -> Tensor:
        """Step 4 per bin [bins] bool: the fit shown to be worse (from the statistics so far)."""
        cfg = self.config
        assert self.state is not None, "Guard.init_state first"
        m, m2, n = self.state.stats
        cap = (1 + cfg.guard_decay) / (1 - cfg.guard_decay)
        n_eff = n.clamp(max=cap)  # [bins] the EMA's effective sample size
        var = (m2 - m * m).clamp_min(0.0) * n_eff / (n_eff - 1).clamp_min(1.0)  # [bins] unbiased
        se = (var / n_eff.clamp_min(1.0)).sqrt()  # [bins] standard error of mean(D)
        c = torch.tensor([t_quantile(1 - cfg.guard_alpha, max(1.0, float(v) - 1)) for v in n_eff.tolist()],
                         device=m.device, dtype=m.dtype)  # [bins]
        return (n >= 2) & (m > c * se)

    def apply(self, grad: Tensor, grad_sds: Tensor, bins: Tensor, fit_updates: Tensor, update_state: bool,
              pullback: Optional[Pullback] = None) -> Tensor:
        """grad [B, C, h, w] where the fit is trusted, grad_sds [B, C, h, w] elsewhere (step 4 of the docstring),
        then (update_state) this step's D enters the statistics (steps 1-3). bins [B] the samples' timestep
        bins; fit_updates [bins] the fit's update counts (including this step's); pullback: step 1's "render"
        proxy (None: the pooled one)."""
        cfg = self.config
        assert self.state is not None, "Guard.init_state first"
        m, m2, n = self.state.stats  # views: written in place below
        fitted = fit_updates[bins] > cfg.guard_min_updates  # [B]
        use = fitted & ~self.refused()[bins]  # [B]  (lagged: from earlier steps)
        if update_state:
            cnt = self.state.counts
            one = torch.ones_like(bins, dtype=cnt.dtype)
            cnt[0].index_add_(0, bins, one)
            cnt[1].index_add_(0, bins, use.to(cnt.dtype))
            render_proxy = pullback is not None and cfg.guard_proxy == "render"
            due = not render_proxy or self.calls % cfg.guard_every == 0
            self.calls += 1
            if bool(fitted.any()) and due:  # steps 1-2 (nothing to judge before a bin is fitted: no cost then)
                if render_proxy:
                    sq_f, sq_s = pullback(grad), pullback(grad_sds)  # [B]
                else:
                    sq_f, sq_s = pooled_sq(grad, cfg.guard_pool), pooled_sq(grad_sds, cfg.guard_pool)  # [B]
                d = sq_f - sq_s  # [B] D
                f = fitted.to(cnt.dtype)
                cnt[2].index_add_(0, bins, f * sq_f)
                cnt[3].index_add_(0, bins, f * sq_s)
                cnt[4].index_add_(0, bins, f * torch.where(use, sq_f, sq_s))
                for k in bins[fitted].unique().tolist():  # step 3
                    sel = bins == k
                    n[k] += 1
                    r = max(1.0 - cfg.guard_decay, 1.0 / float(n[k]))
                    dk = d[sel].mean()
                    m[k] = (1 - r) * m[k] + r * dk
                    m2[k] = (1 - r) * m2[k] + r * dk * dk
        return torch.where(use.view(-1, 1, 1, 1), grad, grad_sds)

    def summary(self) -> dict:
        """What the run did: views, the share served the fit's gradient, and the proxy's in-run
        second-moment ratios (fit / SDS: what the fit would have given; served / SDS: what was
        given) over the measured views; None where nothing was measured."""
        if self.state is None:
            return {"views": 0, "served_fit_fraction": None, "fit_vs_sds": None, "served_vs_sds": None}
        c = self.state.counts.sum(1).tolist()  # [5]
        views, served, sq_f, sq_s, sq_v = c
        return {"views": int(views), "served_fit_fraction": served / views if views else None,
                "fit_vs_sds": sq_f / sq_s if sq_s > 0 else None, "served_vs_sds": sq_v / sq_s if sq_s > 0 else None,
                "proxy": self.config.guard_proxy}

    # ---- checkpoints
    def state_tensors(self) -> dict[str, Tensor]:
        if self.state is None:
            return {}
        return {"ssd.guard": self.state.stats, "ssd.guard.counts": self.state.counts,
                "ssd.guard.calls": torch.tensor(self.calls)}

    def load_state_tensors(self, tensors: dict[str, Tensor], device: torch.device | str) -> None:
        """Restore "ssd.guard" (and "ssd.guard.counts"); a checkpoint from before the guard gets fresh
        statistics, one from before the counts fresh counts."""
        if "ssd.guard" in tensors:
            stats = tensors["ssd.guard"].to(device).clone()
            if stats.shape != (3, self.config.timestep_bins):
                raise ValueError(f"saved guard state has shape {tuple(stats.shape)}, this SSD's is "
                                 f"(3, {self.config.timestep_bins}): resume with the same timestep_bins")
            counts = tensors.get("ssd.guard.counts")
            self.state = GuardState(stats, None if counts is None else counts.to(device).clone())
            self.calls = int(tensors["ssd.guard.calls"]) if "ssd.guard.calls" in tensors else 0
        else:
            self.init_state(device)
