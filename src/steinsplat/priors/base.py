"""The diffusion-prior interface that guidance (SDS, VSD, SSD) is written against.

Notation (DDPM; the same in every file of `steinsplat.guidance`):
    x            the rendered image in the prior's model space, [B, C, h, w]
                 (SD: VAE latents times the scaling factor; ShapeWorld: pixels in [-1, 1])
    t            integer timesteps [B] in [0, T)
    alphabar_t   the cumulative product of (1 - beta), `schedule.alphas_cumprod[t]`
    alpha_t      = sqrt(alphabar_t),   sigma_t = sqrt(1 - alphabar_t)
    x_t          = alpha_t x + sigma_t eps,   eps ~ N(0, I)
    eps_hat      the classifier-free-guided noise prediction, always returned as *epsilon*
                 (v-prediction models are converted), computed without gradients.

A prior is anything with the attributes and methods of `DiffusionPrior` below (a
`typing.Protocol`: no base class to inherit). Implementations: `StableDiffusionPrior`
(stable_diffusion.py), `ShapeWorldPriorAdapter` (shapeworld.py) and `TinyPixelPrior`
(tiny.py, random weights, for tests and benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from ..cameras import VIEW_TAGS, Cameras, ViewTag

# ---------------------------------------------------------------------------- errors


class ModelUnavailableError(RuntimeError):
    """A pretrained model (prior or estimator) cannot be loaded; the message says how to get it."""


class PriorUnavailableError(ModelUnavailableError):
    """A diffusion prior cannot be loaded (not downloaded, offline, or a wrong path)."""


# ---------------------------------------------------------------------------- schedule


@dataclass
class NoiseSchedule:
    """The variance-preserving forward process x_t = alpha_t x + sigma_t eps."""

    alphas_cumprod: Tensor  # [T] alphabar_t, float32, on the prior's device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def alpha_t(self, t: Tensor) -> Tensor:
        """sqrt(alphabar_t) for integer timesteps t [B] -> [B, 1, 1, 1]."""
        acp = self.alphas_cumprod.to(t.device)[t.long()]
        return acp.clamp_min(0.0).sqrt().view(-1, 1, 1, 1)

    def sigma_t(self, t: Tensor) -> Tensor:
        """sqrt(1 - alphabar_t) for integer timesteps t [B] -> [B, 1, 1, 1]."""
        acp = self.alphas_cumprod.to(t.device)[t.long()]
        return (1.0 - acp).clamp_min(0.0).sqrt().view(-1, 1, 1, 1)

    def add_noise(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha_t x + sigma_t eps. x, eps: [B, C, h, w]; t: [B]."""
        return self.alpha_t(t).to(x.dtype) * x + self.sigma_t(t).to(x.dtype) * eps


@dataclass
class TimestepRange:
    """The range [t_min, t_max] that timesteps are drawn from, annealed over training.

    Fractions of T. At training progress p in [0, 1] the range is interpolated between the
    `*_start` and `*_end` values: linearly (`anneal="linear"`), by sqrt(p) (`"sqrt"`, shrinks
    early, as DreamTime-like schedules do) or not at all (`"none"`: the start values throughout).
    With `anneal_until` = u < 1 the annealing runs on p / u and the end values hold from p = u on.
    """

    min_start: float = 0.02  # t_min / T at the start of training
    max_start: float = 0.98  # t_max / T at the start of training
    min_end: float = 0.02  # t_min / T at the end of training
    max_end: float = 0.50  # t_max / T at the end of training (lower: finer detail late on)
    anneal: Literal["none", "linear", "sqrt"] = "linear"  # how the range moves from start to end
    anneal_until: float = 1.0  # fraction of the run by which the end values are reached and then held (1: the whole run)

    def at(self, progress: float, num_train_timesteps: int) -> tuple[int, int]:
        """Integer [t_min, t_max] (inclusive) at training progress `progress` in [0, 1]."""
        p = min(max(float(progress) / max(self.anneal_until, 1e-9), 0.0), 1.0)
        f = {"none": 0.0, "linear": p, "sqrt": math.sqrt(p)}[self.anneal]
        lo = self.min_start + f * (self.min_end - self.min_start)
        hi = self.max_start + f * (self.max_end - self.max_start)
        T = num_train_timesteps
        t_min = int(round(min(max(lo, 0.0), 1.0) * (T - 1)))
        t_max = int(round(min(max(hi, 0.0), 1.0) * (T - 1)))
        if t_max < t_min:
            raise ValueError(f"timestep range is empty at progress {p}: [{t_min}, {t_max}]; check TimestepRange")
        return t_min, t_max


# ---------------------------------------------------------------------------- prompts


@dataclass
class PromptEmbeds:
    """One prompt encoded for a prior: conditional, negative and view-dependent variants.

    Every tensor has a leading batch dimension of 1 (one prompt); `for_cameras` expands them
    to a camera batch. What a single embedding is depends on the prior (SD: CLIP hidden states
    [1, L, D]; ShapeWorld: a pooled vector [1, D]).
    """

    cond: Tensor  # [1, ...] embedding of the prompt as given
    uncond: Tensor  # [1, ...] embedding of the negative prompt ("" = unconditional)
    by_view: dict[str, Tensor] = field(default_factory=dict)  # view tag -> [1, ...] of "prompt, <tag> view"
    prompt: str = ""  # the prompt text
    negative_prompt: str = ""  # the negative prompt text
    modes: Optional[Tensor] = None  # [1, M, ...] one embedding per valid answer of an open prompt (ShapeWorld's
    # "a cube": M = 8 colours), served as the mixture of those conditionals; None for an ordinary prompt
    mode_prompts: tuple[str, ...] = ()  # the M answers' texts, in the order of `modes`

    def for_cameras(self, cameras: Cameras, view_dependent: bool = True) -> tuple[Tensor, Tensor]:
        """(cond [B, ...], uncond [B, ...]) for a camera batch: the view-tagged embedding of each
        camera when `view_dependent` and tags were encoded, else the plain prompt."""
        B = len(cameras)
        if view_dependent and self.by_view:
            tags = cameras.view_tags()
            cond = torch.cat([self.by_view[tag] for tag in tags], dim=0)
        else:
            cond = self.cond.expand(B, *self.cond.shape[1:])
        uncond = self.uncond.expand(B, *self.uncond.shape[1:])
        return cond, uncond


VIEW_SUFFIX: dict[ViewTag, str] = {tag: f", {tag} view" for tag in VIEW_TAGS}  # appended to the prompt


def view_prompts(prompt: str) -> dict[str, str]:
    """{"front": "<prompt>, front view", "side": ..., "back": ..., "overhead": ...}."""
    base = prompt.strip().rstrip(".")
    return {tag: base + suffix for tag, suffix in VIEW_SUFFIX.items()}


# ---------------------------------------------------------------------------- the protocol


@runtime_checkable
class DiffusionPrior(Protocol):
    """What guidance needs from a frozen diffusion model.

    Attributes:
        schedule: the noise schedule (alpha_t, sigma_t).
        model_resolution: side of the model-space image in *pixels* (what `encode_images` resizes to).
        model_channels: C of model-space images x [B, C, h, w].
        unet: the frozen denoiser (VSD copies it and adds LoRA layers).
        camera_conditioned: True if the denoiser itself is conditioned on the camera
            (ShapeWorld); False if only through view-dependent prompts (SD).
        prediction_type: "epsilon" or "v_prediction" (what `unet` outputs raw).
        device, dtype: where and in what precision the denoiser runs.
    """

    schedule: NoiseSchedule
    model_resolution: int
    model_channels: int
    unet: nn.Module
    camera_conditioned: bool
    prediction_type: str
    device: torch.device
    dtype: torch.dtype

    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeds:
        """Embed a prompt, its negative, and (if supported and asked) its view-tagged variants."""
        ...

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, H, W, 3] in [0, 1] -> x [B, C, h, w] in model space, differentiable w.r.t. rgb."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] in model space -> rgb [B, H, W, 3] in [0, 1], differentiable w.r.t. x."""
        ...

    def timestep_range(self, progress: float) -> tuple[int, int]:
        """[t_min, t_max] at training progress in [0, 1] (annealing)."""
        ...

    def predict_noise(
        self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras, guidance_scale: Optional[float] = None
    ) -> Tensor:
        """Classifier-free-guided eps_hat [B, C, h, w], computed under `torch.no_grad()`."""
        ...

    def denoise(
        self,
        x_t: Tensor,
        t: Tensor,
        embeds: PromptEmbeds,
        cameras: Cameras,
        guidance_scale: float = 1.0,
        unet: Optional[nn.Module] = None,
        class_labels: Optional[Tensor] = None,
        raw: bool = False,
    ) -> Tensor:
        """The same prediction with any UNet that shares the prior's architecture (e.g. a LoRA copy),
        with gradients (the caller picks the grad mode). `class_labels [B, E]` feeds an extra
        class embedding the caller added to `unet` (camera conditioning for SD); `raw=True` returns
        the UNet's own parametrisation (epsilon or v) instead of epsilon."""
        ...

    def training_target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the raw UNet output is regressed on: eps (epsilon models) or v = alpha_t eps - sigma_t x."""
        ...


# ---------------------------------------------------------------------------- shared helpers


def v_to_eps(v: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """eps from a v-prediction (v = alpha_t eps - sigma_t x, "Progressive Distillation"):
        alpha_t v + sigma_t x_t = alpha_t^2 eps - alpha_t sigma_t x + sigma_t alpha_t x + sigma_t^2 eps = eps
    because alpha_t^2 + sigma_t^2 = 1. Shapes: [B, C, h, w] with alpha_t, sigma_t [B, 1, 1, 1]."""
    return alpha_t * v + sigma_t * x_t


def cfg_combine(pred_uncond: Tensor, pred_cond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: pred_u + s (pred_c - pred_u); s = 1 is the conditional model."""
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


# Perp-Neg (Armandpour et al., "Re-imagine the Negative Prompt Algorithm", 2023): the negative views'
# noise directions, with their component along the positive direction removed, are subtracted.
PERP_NEG_VIEWS: dict[str, tuple[str, ...]] = {  # view tag -> the view tags pushed away from
    "front": ("side", "back"), "side": ("front", "back"), "back": ("front", "side"), "overhead": (),
}


def perp_neg_combine(pred_uncond: Tensor, pred_cond: Tensor, pred_negs: Tensor, weights: Tensor,
                     guidance_scale: float) -> Tensor:
    """Perp-Neg guidance, per sample b (dot products over all of a sample's elements):

        1. d_pos = pred_c - pred_u                                 the prompt's direction
        2. d_k = pred_neg_k - pred_u                               each negative view's direction
        3. perp_k = d_k - (<d_k, d_pos> / <d_pos, d_pos>) d_pos     its part orthogonal to d_pos
        4. pred = pred_u + s (d_pos - sum_k w_k perp_k)

    So a negative never cancels the prompt's own direction (what a plain negative prompt does when
    "front view" and "back view" share most of it); with w = 0 this is `cfg_combine`.
    pred_uncond, pred_cond: [B, ...]; pred_negs: [K, B, ...]; weights: [K, B] (0 where a sample has
    fewer than K negatives).
    """
    d_pos = (pred_cond - pred_uncond).float()  # [B, ...]
    dims = tuple(range(1, d_pos.dim()))
    norm2 = (d_pos * d_pos).sum(dims, keepdim=True).clamp_min(1e-12)  # [B, 1, ...]
    push = torch.zeros_like(d_pos)
    for d_k, w_k in zip((pred_negs.float() - pred_uncond.float()), weights.float()):  # [B, ...], [B]
        perp = d_k - (d_k * d_pos).sum(dims, keepdim=True) / norm2 * d_pos
        push = push + w_k.view(-1, *([1] * len(dims))) * perp
    return (pred_uncond.float() + guidance_scale * (d_pos - push)).to(pred_cond.dtype)


def freeze(module: nn.Module) -> nn.Module:
    """eval() and requires_grad_(False): a frozen prior never receives gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


def as_timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """Integer timesteps [B] from a scalar or a [B] tensor."""
    t = torch.as_tensor(t, device=device).long()
    return t.expand(batch).clone() if t.dim() == 0 else t


def check_model_space(x: Tensor, channels: int, what: str = "x") -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} must be [B, {channels}, h, w] in the prior's model space, got {tuple(x.shape)}")


__all__: Sequence[str] = [
    "ModelUnavailableError", "PriorUnavailableError", "NoiseSchedule", "TimestepRange", "PromptEmbeds",
    "DiffusionPrior", "VIEW_SUFFIX", "view_prompts", "v_to_eps", "cfg_combine", "freeze", "as_timesteps",
]
