"""Priors for tests and benchmarks: no pretrained weights, runs in milliseconds on a CPU.

- `TinyPixelPrior`: a tiny random pixel-space diffusers UNet (no attention), conditioned on a
  pooled prompt vector and the camera through the class-embedding path, like the ShapeWorld
  prior. Meaningless predictions, but the real code path (CFG, v/eps conversion, LoRA copies).
- `AnalyticGaussianPrior`: data distribution N(m, s^2 I) in model space, whose noise prediction
  is known in closed form (below). The toy on which SDS, VSD and SSD must agree in mean.

Closed form for `AnalyticGaussianPrior`: with x ~ N(m, s^2 I) and x_t = alpha_t x + sigma_t eps,
the marginal is x_t ~ N(alpha_t m, (alpha_t^2 s^2 + sigma_t^2) I), so its score is
-(x_t - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2) and the optimal denoiser is
    eps_hat(x_t, t) = -sigma_t * score = sigma_t (x_t - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2).
"""

from __future__ import annotations

import zlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from .base import NoiseSchedule, PromptEmbeds, TimestepRange, as_timesteps, cfg_combine, freeze, v_to_eps

CAMERA_DIM = 7


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """alphabar_t of DDPM's linear beta schedule, [T]."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


def pixels_to_model(rgb: Tensor, resolution: int) -> Tensor:
    """rgb [B, H, W, 3] in [0, 1] -> x [B, 3, R, R] in [-1, 1] (area resize; differentiable)."""
    x = rgb.permute(0, 3, 1, 2)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    return 2.0 * x - 1.0


def model_to_pixels(x: Tensor) -> Tensor:
    """x [B, 3, R, R] in [-1, 1] -> rgb [B, R, R, 3] in [0, 1]."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)


def simple_camera_features(cameras: Cameras) -> Tensor:
    """[B, 7]: sin az, cos az, sin el, cos el, (d - 1.8) / 0.2, 0, 1 (zeros where unknown)."""
    B = len(cameras)
    dev = cameras.device
    az = torch.deg2rad(cameras.azimuth) if cameras.azimuth is not None else torch.zeros(B, device=dev)
    el = torch.deg2rad(cameras.elevation) if cameras.elevation is not None else torch.zeros(B, device=dev)
    d = cameras.distance if cameras.distance is not None else torch.full((B,), 1.8, device=dev)
    d = (torch.nan_to_num(d, nan=1.8) - 1.8) / 0.2
    return torch.stack([az.sin(), az.cos(), el.sin(), el.cos(), d, torch.zeros_like(d), torch.ones_like(d)], -1).float()


class _PixelSpace:
    """What both test priors share: x = 2 rgb - 1 at the model resolution, and the timestep range."""

    model_resolution: int
    timesteps: TimestepRange
    schedule: NoiseSchedule

    def encode_images(self, rgb: Tensor) -> Tensor:
        return pixels_to_model(rgb, self.model_resolution)

    def decode(self, x: Tensor) -> Tensor:
        return model_to_pixels(x)

    def timestep_range(self, progress: float) -> tuple[int, int]:
        return self.timesteps.at(progress, self.schedule.num_train_timesteps)


class TinyPixelPrior(_PixelSpace, nn.Module):
    """A random, tiny, camera-conditioned pixel-space prior (x in [-1, 1], [B, 3, R, R])."""

    camera_conditioned = True

    def __init__(self, resolution: int = 16, block_out_channels: tuple[int, ...] = (8, 16), text_dim: int = 8,
                 prediction_type: str = "epsilon", seed: int = 0, guidance_scale: float = 3.0,
                 timesteps: Optional[TimestepRange] = None) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        torch.manual_seed(seed)
        n = len(block_out_channels)
        self.unet = freeze(UNet2DConditionModel(
            sample_size=resolution, in_channels=3, out_channels=3,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n, mid_block_type="UNetMidBlock2D",
            block_out_channels=block_out_channels, layers_per_block=1, norm_num_groups=4, cross_attention_dim=4,
            class_embed_type="projection", projection_class_embeddings_input_dim=text_dim + CAMERA_DIM,
        ))
        self.text_dim = text_dim
        self.prediction_type = prediction_type
        self.guidance_scale = guidance_scale
        self.timesteps = timesteps or TimestepRange(anneal="none")
        self.schedule = NoiseSchedule(linear_alphas_cumprod())
        self.model_resolution = resolution
        self.model_channels = 3
        self.dtype = torch.float32

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.schedule.alphas_cumprod.device

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeds:
        """A fixed random vector per prompt text (seeded by its CRC32); "" -> zeros."""
        def vec(text: str) -> Tensor:
            if text.strip() == "":
                return torch.zeros(1, self.text_dim)
            g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            return torch.randn(1, self.text_dim, generator=g)

        return PromptEmbeds(vec(prompt), vec(negative_prompt), {}, prompt, negative_prompt)

    def training_target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "v_prediction":
            return self.schedule.alpha_t(t) * eps - self.schedule.sigma_t(t) * x
        return eps

    def denoise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras, guidance_scale: float = 1.0,
                unet: Optional[nn.Module] = None, class_labels: Optional[Tensor] = None, raw: bool = False) -> Tensor:
        unet = self.unet if unet is None else unet
        B = x_t.shape[0]
        t = as_timesteps(t, B, x_t.device)
        cond, uncond = embeds.for_cameras(cameras, view_dependent=False)  # [B, text_dim]
        cam = simple_camera_features(cameras).to(x_t.device)  # [B, 7]
        dummy = x_t.new_zeros(B, 1, 4)  # cross_attention_dim = 4, unused (no attention blocks)

        def run(text: Tensor) -> Tensor:
            return unet(x_t, t, encoder_hidden_states=dummy, class_labels=torch.cat([text, cam], -1)).sample

        out = run(cond) if guidance_scale == 1.0 else cfg_combine(run(uncond), run(cond), guidance_scale)
        if raw or self.prediction_type == "epsilon":
            return out
        return v_to_eps(out, x_t, self.schedule.alpha_t(t), self.schedule.sigma_t(t))

    def predict_noise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                      guidance_scale: Optional[float] = None) -> Tensor:
        s = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        with torch.no_grad():
            return self.denoise(x_t.detach(), t, embeds, cameras, s)


class _NoParameters(nn.Module):
    """Stands in for a UNet where a prior has none (the analytic toy)."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("the analytic Gaussian prior has no UNet; give VSD an analytic eps_psi instead of LoRA")


class AnalyticGaussianPrior(_PixelSpace, nn.Module):
    """Data ~ N(mean, std^2 I) in a model space of shape [C, h, w]; exact eps_hat (module docstring)."""

    camera_conditioned = False
    prediction_type = "epsilon"

    def __init__(self, mean: Tensor, std: float, timesteps: Optional[TimestepRange] = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().float().clone())  # [C, h, w] the data mean m
        self.std = float(std)  # s
        self.schedule = NoiseSchedule(linear_alphas_cumprod())
        self.timesteps = timesteps or TimestepRange(anneal="none")
        self.model_channels = int(mean.shape[0])
        self.model_resolution = int(mean.shape[-1])
        self.unet = _NoParameters()
        self.dtype = torch.float32

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.mean.device

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeds:
        return PromptEmbeds(torch.zeros(1, 1), torch.zeros(1, 1), {}, prompt, negative_prompt)

    def training_target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps

    def denoise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Optional[Cameras] = None,
                guidance_scale: float = 1.0, unet: Optional[nn.Module] = None, class_labels: Optional[Tensor] = None,
                raw: bool = False) -> Tensor:
        t = as_timesteps(t, x_t.shape[0], x_t.device)
        a, s = self.schedule.alpha_t(t), self.schedule.sigma_t(t)  # [B, 1, 1, 1]
        # eps_hat = sigma_t (x_t - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2)   (unconditional: no CFG)
        return s * (x_t - a * self.mean) / (a * a * self.std**2 + s * s)

    def predict_noise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Optional[Cameras] = None,
                      guidance_scale: Optional[float] = None) -> Tensor:
        with torch.no_grad():
            return self.denoise(x_t.detach(), t, embeds, cameras)
