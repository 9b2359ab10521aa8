"""ShapeWorld's geometry estimator: relative depth and camera-space normals from a (noisy) image.

Input: an image in the prior's model space, x [B, 3, R, R] in [-1, 1] (R = the prior's resolution,
32 for the shipped prior), possibly noised as the prior's forward process does,
    x_t = alpha_t x + sigma_t eps,   alpha_t = sqrt(alphabar_t),  sigma_t = sqrt(1 - alphabar_t),
together with the integer timestep t [B] of the prior's schedule (t = 0 for a clean image; the
schedule's alphabar_t is stored with the weights, so the estimator needs no prior to run).

Output (`EstimatorOutput`):
- depth [B, 1, R, R]: *relative* camera-z depth, defined up to an unknown scale and shift per
  image (it was trained with a least-squares scale/shift alignment): larger = farther. Compare
  it with a rendered depth by Pearson correlation or after `align_depth`.
- normal [B, 3, R, R]: unit surface normals in the **camera frame** (OpenCV: x right, y down,
  z forward), i.e. n_cam = R_w2c n_world with R_w2c the rotation of the world-to-camera `viewmat`;
  visible surfaces have n_z < 0 (they face the camera).
Both are meaningful only on the object's pixels (objects) or everywhere (rooms); the background
of an object image is unconstrained.

Everything is differentiable w.r.t. the input image (the Stein control variate of SSD needs
grad_{x_t} phi(x_t) through this network). Network: a small U-Net of ResNet blocks
(blocks.py: timm's `ConvNormAct` and `BasicBlock` in plain torch, so loading and running it imports
neither timm nor diffusers; GroupNorm; nothing pretrained), with the noise level injected as a FiLM
scale/shift after every stage.

Folder layout: config.json (EstimatorConfig) + model.safetensors (weights + alphas_cumprod).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvNormAct, resnet_block
from .weights import read_model_folder, save_model_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class EstimatorConfig:
    resolution: int = 32  # image side R (the prior's model resolution)
    width: int = 24  # channels of the first level; deeper levels have 2x and 4x
    time_dim: int = 128  # size of the noise-level embedding
    num_train_timesteps: int = 1000  # length of the prior's schedule (alphas_cumprod)
    training: dict = field(default_factory=dict)  # free-form record of how the weights were trained


@dataclass
class EstimatorOutput:
    depth: Tensor  # [B, 1, R, R] relative depth (up to scale and shift), larger = farther
    normal: Tensor  # [B, 3, R, R] unit normals, camera frame (OpenCV: x right, y down, z forward)


class _FiLM(nn.Module):
    """h * (1 + scale(temb)) + shift(temb), zero-initialised (starts as the identity)."""

    def __init__(self, time_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(time_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        scale, shift = self.proj(temb)[:, :, None, None].chunk(2, dim=1)
        return h * (1.0 + scale) + shift


class ShapeWorldEstimator(nn.Module):
    def __init__(self, config: Optional[EstimatorConfig] = None, alphas_cumprod: Optional[Tensor] = None) -> None:
        super().__init__()
        self.config = config = config or EstimatorConfig()
        if alphas_cumprod is None:  # the prior's default schedule (schedule.py: diffusers' DDPMScheduler numbers)
            from .prior import scheduler_config
            from .schedule import DDPMSchedule

            alphas_cumprod = DDPMSchedule(scheduler_config(config.num_train_timesteps)).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone().float())  # [T]
        w, td = config.width, config.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(2 + 16, td), nn.SiLU(), nn.Linear(td, td))
        self.stem = ConvNormAct(3, w, 3)  # R
        self.enc1, self.film1 = resnet_block(w, w), _FiLM(td, w)  # R
        self.enc2, self.film2 = resnet_block(w, 2 * w, 2), _FiLM(td, 2 * w)  # R/2
        self.enc3, self.film3 = resnet_block(2 * w, 4 * w, 2), _FiLM(td, 4 * w)  # R/4
        self.mid, self.film_mid = resnet_block(4 * w, 4 * w), _FiLM(td, 4 * w)  # R/4
        self.dec2, self.film_d2 = resnet_block(4 * w + 2 * w, 2 * w), _FiLM(td, 2 * w)  # R/2
        self.dec1, self.film_d1 = resnet_block(2 * w + w, w), _FiLM(td, w)  # R
        self.head = nn.Conv2d(w, 4, 1)  # depth 1 + normal 3

    def time_embedding(self, t: Tensor) -> Tensor:
        """[B, time_dim] from (alpha_t, sigma_t) and sinusoids of t / T."""
        t = t.long().clamp(0, self.alphas_cumprod.shape[0] - 1)
        acp = self.alphas_cumprod[t]  # [B]
        feats = [acp.sqrt(), (1.0 - acp).clamp_min(0).sqrt()]
        freqs = torch.pow(2.0, torch.arange(8, device=t.device, dtype=torch.float32))  # [8]
        ang = (t.float() / self.alphas_cumprod.shape[0])[:, None] * freqs[None] * math.pi  # [B, 8]
        x = torch.cat([torch.stack(feats, -1), torch.sin(ang), torch.cos(ang)], -1)  # [B, 18]
        return self.time_mlp(x)

    def forward(self, x_t: Tensor, t: Optional[Tensor] = None) -> EstimatorOutput:
        """x_t [B, 3, R, R] in model space (clean x when t is None or 0); t [B] or scalar timesteps."""
        B = x_t.shape[0]
        if t is None:
            t = torch.zeros(B, dtype=torch.long, device=x_t.device)
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(B) if t.dim() == 0 else t
        temb = self.time_embedding(t).to(x_t.dtype)  # [B, td]
        h1 = self.film1(self.enc1(self.stem(x_t)), temb)  # [B, w, R, R]
        h2 = self.film2(self.enc2(h1), temb)  # [B, 2w, R/2, R/2]
        h3 = self.film3(self.enc3(h2), temb)  # [B, 4w, R/4, R/4]
        h = self.film_mid(self.mid(h3), temb)  # [B, 4w, R/4, R/4]
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.film_d2(self.dec2(torch.cat([h, h2], 1)), temb)  # [B, 2w, R/2, R/2]
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.film_d1(self.dec1(torch.cat([h, h1], 1)), temb)  # [B, w, R, R]
        out = self.head(h).float()  # [B, 4, R, R]
        depth = out[:, :1]
        normal = F.normalize(out[:, 1:], dim=1, eps=1e-6)
        return EstimatorOutput(depth, normal)

    # ------------------------------------------------------------------ training
    def noised(self, x0: Tensor, t: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """x_t = alpha_t x0 + sigma_t eps with the prior's schedule; x0 [B, 3, R, R], t [B]."""
        acp = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        return acp.sqrt() * x0 + (1.0 - acp).clamp_min(0).sqrt() * eps

    def training_loss(self, data: dict[str, Tensor], idx: Tensor, generator: Optional[torch.Generator] = None,
                      p_clean: float = 0.25, normal_weight: float = 1.0) -> Tensor:
        """Scale/shift-invariant depth L1 + normal cosine loss on the mask, on x_t at random t
        (t = 0 with probability p_clean, otherwise uniform over the whole schedule)."""
        x0 = data["images"][idx].float() / 127.5 - 1.0  # [B, 3, R, R]
        depth = data["depth"][idx].float()  # [B, 1, R, R] metres
        normal = data["normal"][idx].float()  # [B, 3, R, R] camera frame
        mask = data["mask"][idx]  # [B, 1, R, R] bool
        B = x0.shape[0]
        T = self.alphas_cumprod.shape[0]
        t = torch.randint(0, T, (B,), generator=generator)
        t = torch.where(torch.rand(B, generator=generator) < p_clean, torch.zeros_like(t), t)
        out = self(self.noised(x0, t, generator), t)
        return depth_loss(out.depth, depth, mask) + normal_weight * normal_loss(out.normal, normal, mask)

    # ------------------------------------------------------------------ IO
    def save_pretrained(self, folder: str | Path) -> None:
        save_model_folder(folder, asdict(self.config), self, WEIGHTS_NAME, CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None) -> "ShapeWorldEstimator":
        """Load an estimator folder (default: the shipped `steinsplat/assets/shapeworld/estimator`)."""
        config, sd = read_model_folder(folder, "estimator", WEIGHTS_NAME, CONFIG_NAME)
        m = cls(EstimatorConfig(**config), alphas_cumprod=sd["alphas_cumprod"])
        m.load_state_dict(sd)
        m.requires_grad_(False)  # the input can still require grad
        return m.eval()


# ---------------------------------------------------------------------------- losses and metrics
def align_depth(pred: Tensor, target: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """s * pred + b with (s, b) = argmin sum_mask (s pred + b - target)^2 per image (closed form):
        s = cov(pred, target) / var(pred),  b = mean(target) - s mean(pred)   (moments over the mask).
    pred, target [B, 1, R, R]; mask [B, 1, R, R] bool. Differentiable w.r.t. pred."""
    m = mask.float()
    n = m.flatten(1).sum(1).clamp_min(1.0).view(-1, 1, 1, 1)
    mp = (pred * m).flatten(1).sum(1).view(-1, 1, 1, 1) / n
    mt = (target * m).flatten(1).sum(1).view(-1, 1, 1, 1) / n
    cov = ((pred - mp) * (target - mt) * m).flatten(1).sum(1).view(-1, 1, 1, 1) / n
    var = ((pred - mp) ** 2 * m).flatten(1).sum(1).view(-1, 1, 1, 1) / n
    s = cov / (var + eps)
    return s * (pred - mp) + mt


def depth_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |align(pred) - target| on the mask, relative to each image's mean target depth."""
    m = mask.float()
    aligned = align_depth(pred, target, mask)
    n = m.flatten(1).sum(1).clamp_min(1.0)
    scale = (target * m).flatten(1).sum(1) / n  # [B] mean depth
    err = ((aligned - target).abs() * m).flatten(1).sum(1) / n  # [B]
    return (err / scale.clamp_min(1e-3)).mean()


def normal_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean (1 - cos(pred, target)) on the mask."""
    m = mask.float()[:, 0]  # [B, R, R]
    cos = (pred * target).sum(1)  # [B, R, R]
    return (((1.0 - cos) * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)).mean()


@torch.no_grad()
def estimator_errors(out: EstimatorOutput, depth: Tensor, normal: Tensor, mask: Tensor) -> dict[str, float]:
    """depth_abs_rel: mean |aligned - gt| / gt on the mask; depth_abs_m: the same in metres;
    normal_deg: mean angle between predicted and true normals on the mask (degrees)."""
    m = mask.float()
    n = m.sum().clamp_min(1.0)
    aligned = align_depth(out.depth.float(), depth, mask)
    abs_err = (aligned - depth).abs()
    cos = (out.normal.float() * normal).sum(1, keepdim=True).clamp(-1.0, 1.0)
    ang = torch.rad2deg(torch.acos(cos))
    return {
        "depth_abs_rel": float((abs_err / depth.clamp_min(1e-3) * m).sum() / n),
        "depth_abs_m": float((abs_err * m).sum() / n),
        "normal_deg": float((ang * m).sum() / n),
    }


# ---------------------------------------------------------------------------- training data
def estimator_tensors(ds, resolution: int, chunk: int = 1024) -> dict[str, Tensor]:
    """Pre-computed training tensors at the model resolution from a ShapeWorldDataset:
    images uint8 [N, 3, R, R]; depth float16 [N, 1, R, R] (alpha-weighted mean over each
    down-sampling block, metres); normal float16 [N, 3, R, R] (camera frame, renormalised);
    mask bool [N, 1, R, R] (pixels fully covered at R: down-sampled alpha >= 0.99)."""
    a = ds.arrays
    n = len(ds)
    R = resolution
    out = {
        "images": torch.empty((n, 3, R, R), dtype=torch.uint8),
        "depth": torch.empty((n, 1, R, R), dtype=torch.float16),
        "normal": torch.empty((n, 3, R, R), dtype=torch.float16),
        "mask": torch.empty((n, 1, R, R), dtype=torch.bool),
    }
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        area = lambda x: F.interpolate(x, size=(R, R), mode="area")  # noqa: E731
        rgb = torch.from_numpy(a["rgb"][lo:hi]).permute(0, 3, 1, 2).float()
        alpha = torch.from_numpy(a["alpha"][lo:hi]).permute(0, 3, 1, 2).float() / 255.0  # [b, 1, H, W]
        depth = torch.from_numpy(a["depth"][lo:hi].astype(np.float32)).permute(0, 3, 1, 2)
        nw = torch.from_numpy(a["normal"][lo:hi].astype(np.float32) / 127.0)  # [b, H, W, 3] world
        Rw2c = torch.from_numpy(a["viewmat"][lo:hi, :3, :3])  # [b, 3, 3]
        nc = torch.einsum("bij,bhwj->bihw", Rw2c, nw)  # [b, 3, H, W] camera frame
        a_lo = area(alpha)
        out["images"][lo:hi] = area(rgb).round().clamp(0, 255).to(torch.uint8)
        out["depth"][lo:hi] = (area(depth * alpha) / a_lo.clamp_min(1e-6)).to(torch.float16)
        out["normal"][lo:hi] = F.normalize(area(nc * alpha), dim=1, eps=1e-6).to(torch.float16)
        out["mask"][lo:hi] = a_lo >= 0.99
    return out
