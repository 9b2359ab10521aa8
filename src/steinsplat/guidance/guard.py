"""SSD's guard (ssd.py step 5): per timestep bin, SDS's gradient where the fitted mu does worse.

Per bin, serve SDS's gradient (mu = (1, 0, ..., 0)) instead of the fitted mu's until the bin has
`guard_min_updates` updates, and wherever the fit has shown, on later steps than those it was
fitted on, a larger second moment than SDS's. Step by step, for grad = grad_fit, grad_sds
[B, C, h, w] of the same t, eps and cameras:
    1. pool: P(g) = g average-pooled over f x f blocks, f = guard_pool (the parameters' gradient
       sums the image gradient over each Gaussian's footprint, so it sees the low frequencies first);
    2. the paired difference per sample D = mean(P(grad_fit)^2) - mean(P(grad_sds)^2): both
       gradients have the same mean, so E[D] is exactly the difference of their variances;
    3. per bin k, EMAs m_k = E[D], m2_k = E[D^2] (decay guard_decay, bias-free start) and the
       count n_k; SE_k = sqrt((m2_k - m_k^2) / n_eff), n_eff = min(n_k, (1 + decay) / (1 - decay))
       the EMA's effective sample size;
    4. the fit is refused in bin k where n_k >= 2 and m_k > guard_z SE_k: a clearly worse fit (few
       updates, hundreds of CVs, a tiny residual) is caught within a few steps, and a fit that is
       better, or not clearly worse, is kept. (An earlier guard waited for evidence that the fit
       was better; noisy evidence then kept SDS at steps where the fit halved the parameter-space
       variance.)
The decision at a step uses the statistics of earlier steps only (3 is updated after 4 is
decided), so the estimator stays unbiased.

State (`GuardState`): (m, m2, n) per bin, saved as "ssd.guard" [3, bins].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssd_config import SSDConfig


@dataclass
class GuardState:
    """The guard's statistics per timestep bin."""

    stats: Tensor  # [3, bins]: EMA of D, EMA of D^2, measurements (float)

    @classmethod
    def zeros(cls, bins: int, device: torch.device | str) -> "GuardState":
        return cls(torch.zeros(3, bins, device=device))


class Guard:
    """Step 5 of ssd.py, configured by SSDConfig's guard_* fields (module docstring)."""

    def __init__(self, config: SSDConfig) -> None:
        if config.guard_pool < 1:
            raise ValueError(f"guard_pool must be at least 1 (1: no pooling), got {config.guard_pool}")
        self.config = config
        self.state: Optional[GuardState] = None  # made with the fit's state (SSD's first step)

    def init_state(self, device: torch.device | str) -> GuardState:
        self.state = GuardState.zeros(self.config.timestep_bins, device)
        return self.state

    def apply(self, grad: Tensor, grad_sds: Tensor, bins: Tensor, fit_updates: Tensor, update_state: bool) -> Tensor:
        """grad [B, C, h, w] where the fit is trusted, grad_sds [B, C, h, w] elsewhere (step 4 of the docstring),
        then (update_state) this step's D enters the statistics (steps 1-3). bins [B] the samples' timestep
        bins; fit_updates [bins] the fit's update counts (including this step's)."""
        cfg = self.config
        assert self.state is not None, "Guard.init_state first"
        m, m2, n = self.state.stats  # views: written in place below
        n_eff = n.clamp(1.0, (1 + cfg.guard_decay) / (1 - cfg.guard_decay))  # [bins] the EMA's effective sample size
        se = ((m2 - m * m).clamp_min(0.0) / n_eff).sqrt()  # [bins] standard error of mean(D)
        worse = (n >= 2) & (m > cfg.guard_z * se)  # [bins] (lagged: from earlier steps)
        use = (fit_updates[bins] > cfg.guard_min_updates) & ~worse[bins]  # [B]
        if update_state:
            f = min(cfg.guard_pool, grad.shape[-1], grad.shape[-2])  # step 1
            d = (F.avg_pool2d(grad, f).pow(2) - F.avg_pool2d(grad_sds, f).pow(2)).flatten(1).mean(1)  # [B] D, step 2
            for k in bins.unique().tolist():  # step 3
                if int(fit_updates[k]) <= cfg.guard_min_updates:  # not fitted yet: nothing to judge
                    continue
                sel = bins == k
                n[k] += 1
                r = max(1.0 - cfg.guard_decay, 1.0 / float(n[k]))
                dk = d[sel].mean()
                m[k] = (1 - r) * m[k] + r * dk
                m2[k] = (1 - r) * m2[k] + r * dk * dk
        return torch.where(use.view(-1, 1, 1, 1), grad, grad_sds)

    # ---- checkpoints
    def state_tensors(self) -> dict[str, Tensor]:
        return {} if self.state is None else {"ssd.guard": self.state.stats}

    def load_state_tensors(self, tensors: dict[str, Tensor], device: torch.device | str) -> None:
        """Restore "ssd.guard"; a checkpoint from before the guard gets fresh statistics."""
        if "ssd.guard" in tensors:
            self.state = GuardState(tensors["ssd.guard"].to(device).clone())
        else:
            self.init_state(device)
