"""Score Distillation Sampling (DreamFusion, Poole et al. 2022), optionally with antithetic noise.

Step by step, for model-space renders x [B, C, h, w]:
    1. t ~ U{t_min..t_max} [B],  eps ~ N(0, I) [B, C, h, w]
    2. x_t = alpha_t x + sigma_t eps                                   (forward process)
    3. eps_hat = eps_phi(x_t; y, t) with classifier-free guidance        (no grad through the UNet)
    4. grad = w(t) (eps_hat - eps)                                     (descent gradient on x)
Sign: eps_hat - eps points from the data towards noise (eps_hat ~ -sigma_t * score), so moving x
along -grad moves it up the log-density of the prior. Mean: E[grad] = E[w (eps_hat - eps)] =
E[w eps_hat] because E[eps] = 0; the "- eps" term only cancels variance.

Antithetic noise (`antithetic=True`): each eps is paired with -eps at the same t (one more prior
call per view):
    3'. x_t^- = alpha_t x - sigma_t eps,  eps_hat^- = eps_phi(x_t^-; y, t)
    4'. grad = w(t) 0.5 [(eps_hat - eps) + (eps_hat^- - (-eps))] = w(t) 0.5 (eps_hat + eps_hat^-)
-eps has the law of eps, so both halves have SDS's mean and so has their average. Writing
eps_hat(alpha_t x + sigma_t eps) = sum_k a_k(eps) with a_k homogeneous of order k in eps (Taylor),
the average keeps the even orders only: every odd-order noise term, the first-order
sigma_t J eps and the "- eps" included, cancels exactly, and grad(eps) = grad(-eps).

The eps-oracle (`eps_draws = K > 1`): K independent noises per view at the same t and camera,
the K SDS gradients averaged (K prior calls per view):
    3''. eps_1 = eps, eps_2..eps_K ~ N(0, I) i.i.d.,  x_t^k = alpha_t x + sigma_t eps_k
    4''. grad = w(t) (1/K) sum_k (eps_hat(x_t^k) - eps_k)
Each term has SDS's mean, so the average has too, and its variance given (camera, t) is 1/K of
SDS's: no control variate in eps alone (every SSD term) can do better than K -> infinity, so
this is the ceiling of what one can gain, the positive control of the benchmarks. The extra
noises come from torch's global generator (they are not reproduced by passing `eps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..cameras import Cameras
from ..priors.base import PromptEmbeds
from ..render.common import RenderOutput
from .base import Estimate, Guidance, GuidanceConfig, weighting


@dataclass
class SDSConfig(GuidanceConfig):
    antithetic: bool = False  # pair each eps with -eps (one more prior call per view): removes the odd-order noise terms
    eps_draws: int = 1  # K > 1: the eps-oracle, K independent eps per view averaged (K prior calls per view)


class SDS(Guidance):
    def __init__(self, prior, config: Optional[GuidanceConfig] = None) -> None:
        super().__init__(prior, config or SDSConfig())
        self.eps_draws = int(getattr(self.config, "eps_draws", 1))  # a plain GuidanceConfig has none: 1
        if self.eps_draws < 1:
            raise ValueError(f"eps_draws must be at least 1 (1 = plain SDS), got {self.eps_draws}")
        if self.eps_draws > 1 and getattr(self.config, "antithetic", False):
            raise ValueError("choose antithetic or eps_draws > 1, not both")

    def _estimate(self, x: Tensor, t: Tensor, eps: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                  render: Optional[RenderOutput], update_state: bool) -> Estimate:
        prior = self.prior
        x_t = prior.schedule.add_noise(x, eps, t)  # [B, C, h, w]  step 2
        eps_hat = prior.predict_noise(x_t, t, embeds, cameras, self.config.guidance_scale)  # step 3
        w = weighting(prior.schedule, t, self.config.weighting)  # [B, 1, 1, 1]
        if getattr(self.config, "antithetic", False):
            x_t_minus = prior.schedule.add_noise(x, -eps, t)  # [B, C, h, w]  step 3'
            eps_hat_minus = prior.predict_noise(x_t_minus, t, embeds, cameras, self.config.guidance_scale)
            return Estimate(grad=w * 0.5 * (eps_hat + eps_hat_minus), x_t=x_t)  # step 4'
        K = self.eps_draws
        if K > 1:  # steps 3'' and 4''
            total = eps_hat - eps
            for _ in range(K - 1):
                e = torch.randn(eps.shape, dtype=eps.dtype).to(eps.device)  # [B, C, h, w]
                total = total + prior.predict_noise(prior.schedule.add_noise(x, e, t), t, embeds, cameras,
                                                    self.config.guidance_scale) - e
            return Estimate(grad=w * total / K, x_t=x_t)
        return Estimate(grad=w * (eps_hat - eps), x_t=x_t)  # step 4
