"""Open prompts as mixtures of conditionals: "a cube" is any of 8 coloured cubes.

An open prompt y (ShapeWorld's "a cube", "a red shape", "an object") allows M answers c_1..c_M,
each an ordinary prompt the prior was trained on (or composes). Its image distribution is the
mixture p(x_0 | y) = sum_c pi_c p(x_0 | c), pi_c = 1 / M. Noised, p(x_t | y) = sum_c pi_c p(x_t | c),
and its score is a posterior-weighted sum of the conditionals' scores:

    grad log p(x_t | y) = sum_c w_c(x_t) grad log p(x_t | c),   w_c(x_t) = pi_c p(x_t | c) / sum_c' pi_c' p(x_t | c')

With eps_hat = -sigma_t * score (Tweedie) the same weights mix the noise predictions. The
weights need p(x_t | c), which a denoiser does not give; the approximation used here treats each
conditional posterior as a point at its mean x0_c (for ShapeWorld's prior the spread of x0_c over
eps is 0.01-0.02 in model space, docs/benchmarks.md), so p(x_t | c) ~ N(alpha_t x0_c, sigma_t^2 I).

Step by step, for x_t [B, C, h, w] and the conditional v-predictions v_c [B, M, C, h, w]
(v = alpha_t eps - sigma_t x_0, the ShapeWorld prior's parametrisation):
    1. eps_c = alpha_t v_c + sigma_t x_t                         each mode's noise prediction
       (x0_c = alpha_t x_t - sigma_t v_c, its posterior mean)
    2. E_c = ||x_t - alpha_t x0_c||^2 / (2 sigma_t^2) = ||eps_c||^2 / 2       [B, M], summed over C, h, w
       since x_t - alpha_t x0_c = (1 - alpha_t^2) x_t + alpha_t sigma_t v_c = sigma_t eps_c
    3. w_c = softmax_c(log pi_c - E_c)                            [B, M], the posterior of the mode
    4. v_mix = sum_c w_c v_c                                      [B, C, h, w]
       (equivalently eps_mix = sum_c w_c eps_c: v -> eps is affine in v with the same x_t and sum_c w_c = 1)
The guided variant (classifier-free guidance against the unconditional branch v_u, scale s):
    5. v_hat = v_u + s (v_mix - v_u)
Limits: at zero terminal SNR (alpha_t = 0) every eps_c = x_t, the weights are uniform and v_mix is
the mean of the conditionals; a mode that takes all the weight gives exactly its conditional. The
weights carry no gradient (they are a posterior, not a model output to train through).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def mode_energies(v: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """E_c = ||eps_c||^2 / 2 [B, M] (steps 1-2) for v [B, M, C, h, w], x_t [B, C, h, w], alpha_t/sigma_t [B, 1, 1, 1]."""
    eps = alpha_t[:, None] * v + sigma_t[:, None] * x_t[:, None]  # [B, M, C, h, w]
    return 0.5 * eps.float().pow(2).flatten(2).sum(-1)  # [B, M]


def mode_weights(energies: Tensor, log_prior: Optional[Tensor] = None) -> Tensor:
    """w = softmax(log pi - E) over the last axis (step 3); uniform pi when `log_prior` is None."""
    M = energies.shape[-1]
    lp = torch.full((M,), -math.log(M), dtype=energies.dtype, device=energies.device) if log_prior is None else log_prior
    return torch.softmax(lp.to(energies) - energies, dim=-1)  # [B, M]


def mix_predictions(v: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor,
                    log_prior: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(v_mix [B, C, h, w], w [B, M]) of steps 1-4 for v [B, M, C, h, w]."""
    if v.dim() != 5 or v.shape[0] != x_t.shape[0] or v.shape[2:] != x_t.shape[1:]:
        raise ValueError(f"v must be [B, M, C, h, w] for x_t [B, C, h, w]; got v {tuple(v.shape)}, x_t {tuple(x_t.shape)}")
    w = mode_weights(mode_energies(v.detach(), x_t.detach(), alpha_t, sigma_t), log_prior).detach()  # [B, M]
    v_mix = (w.to(v.dtype)[:, :, None, None, None] * v).sum(1)  # [B, C, h, w]
    return v_mix, w
