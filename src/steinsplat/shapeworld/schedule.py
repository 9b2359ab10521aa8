"""The ShapeWorld prior's noise schedule, without diffusers at run time.

The prior is trained with diffusers' DDPMScheduler (`prior.scheduler_config`: linear betas rescaled to
zero terminal SNR, v-prediction); generation only needs its alphabar_t and its config (DDIM sampling
builds diffusers' DDIMScheduler from that config, importing diffusers then). Steps, as in
Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1:
  1. beta_t = linspace(beta_start, beta_end, T)                          (float32)
  2. s_t = sqrt(prod_{i<=t} (1 - beta_i))
  3. s_t <- (s_t - s_T) * s_1 / (s_1 - s_T)        (the last step has zero signal, the first keeps its own)
  4. alphabar_t = s_t^2; alpha_t = alphabar_t / alphabar_{t-1} (alpha_1 = alphabar_1); beta_t = 1 - alpha_t
  5. alphabar_t = prod_{i<=t} (1 - beta_i)                                (recomputed, as diffusers does)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .unet import Config


class ScheduleConfigError(ValueError):
    """A scheduler config this module does not implement."""


def zero_snr_linear_alphas_cumprod(T: int, beta_start: float, beta_end: float, rescale: bool = True) -> Tensor:
    """alphabar_t [T] of the module docstring (steps 1-5; rescale=False skips 2-4)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)  # 1.
    if rescale:
        s = torch.cumprod(1.0 - betas, dim=0).sqrt()  # 2.
        s0, sT = s[0].clone(), s[-1].clone()
        s -= sT  # 3.
        s *= s0 / (s0 - sT)
        ab = s**2  # 4.
        alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])
        betas = 1 - alphas
    return torch.cumprod(1.0 - betas, dim=0)  # 5.


class DDPMSchedule:
    """alphas_cumprod and config of a DDPMScheduler folder (linear betas, optionally zero-terminal-SNR)."""

    def __init__(self, config: dict) -> None:
        if config.get("beta_schedule", "linear") != "linear" or config.get("trained_betas") is not None:
            raise ScheduleConfigError(f"only linear beta schedules are implemented here, got "
                                      f"beta_schedule={config.get('beta_schedule')!r}; load it with diffusers")
        self.config = Config(config)
        self.alphas_cumprod = zero_snr_linear_alphas_cumprod(
            int(config["num_train_timesteps"]), float(config["beta_start"]), float(config["beta_end"]),
            bool(config.get("rescale_betas_zero_snr", False)))  # [T]

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "DDPMSchedule":
        return cls(json.loads((Path(folder) / "scheduler_config.json").read_text()))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scheduler_config.json").write_text(json.dumps(dict(self.config), indent=2, sort_keys=True) + "\n")
