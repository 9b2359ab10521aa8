"""Score Distillation Sampling (DreamFusion, Poole et al. 2022).

Step by step, for model-space renders x [B, C, h, w]:
    1. t ~ U{t_min..t_max} [B],  eps ~ N(0, I) [B, C, h, w]
    2. x_t = alpha_t x + sigma_t eps                                   (forward process)
    3. eps_hat = eps_phi(x_t; y, t) with classifier-free guidance        (no grad through the UNet)
    4. grad = w(t) (eps_hat - eps)                                     (descent gradient on x)
Sign: eps_hat - eps points from the data towards noise (eps_hat ~ -sigma_t * score), so moving x
along -grad moves it up the log-density of the prior. Mean: E[grad] = E[w (eps_hat - eps)] =
E[w eps_hat] because E[eps] = 0; the "- eps" term only cancels variance.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..cameras import Cameras
from ..priors.base import PromptEmbeds
from ..render.common import RenderOutput
from .base import Estimate, Guidance, GuidanceConfig, weighting

SDSConfig = GuidanceConfig  # SDS has no settings beyond the shared ones


class SDS(Guidance):
    def _estimate(self, x: Tensor, t: Tensor, eps: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                  render: Optional[RenderOutput], update_state: bool) -> Estimate:
        prior = self.prior
        x_t = prior.schedule.add_noise(x, eps, t)  # [B, C, h, w]  step 2
        eps_hat = prior.predict_noise(x_t, t, embeds, cameras, self.config.guidance_scale)  # step 3
        w = weighting(prior.schedule, t, self.config.weighting)  # [B, 1, 1, 1]
        return Estimate(grad=w * (eps_hat - eps), x_t=x_t)  # step 4
