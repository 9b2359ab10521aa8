"""The embedded ShapeWorld prior (`steinsplat.shapeworld.prior.ShapeWorldPrior`) as a `DiffusionPrior`.

Pixel space: x = 2 * rgb - 1 area-resized to the prior's resolution R, [B, 3, R, R]. The UNet
predicts v (v = alpha_t eps - sigma_t x), and is conditioned on the camera itself (elevation,
azimuth, distance through its class embedding), so there is no view-dependent prompting; the
prompt must be in ShapeWorld's grammar ("a red cube"). The schedule has zero terminal SNR
(alpha_999 = 0), which v-prediction keeps well posed.

Open prompts ("a cube": any colour; "a red shape": any shape; "an object") are set-valued: they
are encoded as one embedding per valid answer (`PromptEmbeds.modes`) and served as the mixture of
those conditionals (`priors/mixture.py`), one batched UNet call over views x modes; a guidance
scale s != 1 guides the mixture against the unconditional branch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from .base import NoiseSchedule, PriorUnavailableError, PromptEmbeds, TimestepRange, as_timesteps, cfg_combine, v_to_eps
from .mixture import mix_predictions


class ShapeWorldPriorAdapter(nn.Module):
    camera_conditioned = True  # the UNet sees (el, az, d) through its class embedding (unless camera_blind)
    prediction_type = "v_prediction"

    def __init__(self, prior, guidance_scale: Optional[float] = None, timesteps: Optional[TimestepRange] = None,
                 camera_blind: bool = False) -> None:
        super().__init__()
        # camera_blind: serve the prior's camera-dropped branch (features zeroed, as in its classifier-free
        # training): a view-blind prior like Stable Diffusion's, whose posterior mixes every azimuth
        self.camera_blind = bool(camera_blind)
        self.prior = prior  # a steinsplat.shapeworld.prior.ShapeWorldPrior (frozen)
        self.prior.requires_grad_(False)
        self.prior.eval()
        self.guidance_scale = prior.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        self.timesteps = timesteps or TimestepRange()
        self.schedule = NoiseSchedule(prior.alphas_cumprod.float())
        self.model_resolution = int(prior.resolution)
        self.model_channels = 3
        self.dtype = torch.float32
        self.last_mode_weights: Optional[Tensor] = None  # [B, M] posterior of the modes at the last open-prompt call

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | torch.device = "cpu",
                        **kwargs) -> "ShapeWorldPriorAdapter":
        """Load a trained prior folder (default: the shipped steinsplat/assets/shapeworld/prior)."""
        from ..shapeworld.prior import ShapeWorldPrior, default_assets_dir

        try:
            prior = ShapeWorldPrior.from_pretrained(folder, device=device)
        except FileNotFoundError as e:
            where = folder if folder is not None else default_assets_dir() / "prior"
            raise PriorUnavailableError(
                f"no trained ShapeWorld prior at {where}: {e}\n"
                "Train it with `python -m steinsplat.shapeworld.train prior`, or pass the folder of a trained prior "
                "(set $STEINSPLAT_ASSETS to point at another assets/ folder)."
            ) from e
        return cls(prior, **kwargs)

    @property
    def unet(self) -> nn.Module:  # type: ignore[override]
        return self.prior.unet

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.prior.device

    # ------------------------------------------------------------------ prompts / images
    def encode_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeds:
        """Pooled text embeddings [1, D]; `view_dependent` is ignored (the camera conditions the UNet).

        An open prompt ("a cube") also gets `modes` [1, M, D], one embedding per valid answer; its
        `cond` is then the mean of those (read only by code that does not know modes)."""
        from ..shapeworld.vocab import OpenPrompt, parse_prompt

        parsed = parse_prompt(prompt)
        with torch.no_grad():
            if isinstance(parsed, OpenPrompt):
                texts = [m.text for m in parsed.modes]
                pc = self.prior.encode_prompt(texts, negative_prompt)  # cond [M, D], uncond [M, D] (all the same)
                return PromptEmbeds(pc.cond.mean(0, keepdim=True), pc.uncond[:1], {}, prompt, negative_prompt,
                                    modes=pc.cond[None], mode_prompts=tuple(texts))
            pc = self.prior.encode_prompt(prompt, negative_prompt)
        return PromptEmbeds(pc.cond, pc.uncond, {}, prompt, negative_prompt)

    def encode_images(self, rgb: Tensor) -> Tensor:
        from ..shapeworld.prior import to_model_space

        return to_model_space(rgb, self.model_resolution)  # [B, 3, R, R] in [-1, 1]

    def decode(self, x: Tensor) -> Tensor:
        from ..shapeworld.prior import model_space_to_rgb

        return model_space_to_rgb(x)

    # ------------------------------------------------------------------ schedule
    def timestep_range(self, progress: float) -> tuple[int, int]:
        return self.timesteps.at(progress, self.schedule.num_train_timesteps)

    def training_target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """v = alpha_t eps - sigma_t x (the prior's parametrisation)."""
        return self.schedule.alpha_t(t) * eps - self.schedule.sigma_t(t) * x

    # ------------------------------------------------------------------ noise prediction
    def denoise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras, guidance_scale: float = 1.0,
                unet: Optional[nn.Module] = None, class_labels: Optional[Tensor] = None, raw: bool = False) -> Tensor:
        """eps (or v with raw=True) of `unet` (default the prior's) with the prior's text + camera conditioning."""
        if class_labels is not None:
            raise ValueError("the ShapeWorld prior is camera-conditioned already; it takes no extra class labels")
        unet = self.prior.unet if unet is None else unet
        B = x_t.shape[0]
        t = as_timesteps(t, B, x_t.device)
        cond, uncond = embeds.for_cameras(cameras, view_dependent=False)  # [B, D] each
        cam = self._camera_features(cameras).to(x_t.device)  # [B, F]
        dummy = x_t.new_zeros(B, 1, self.prior.config.cross_attention_dim)  # unused: no attention blocks
        sample = self.prior.unet_input(x_t, cam)  # [B, 3 (+ 6 ray channels), R, R]

        def v_of(text: Tensor) -> Tensor:  # the prior's model_output, with any UNet of its architecture
            c = torch.cat([text.to(x_t), cam.to(x_t)], dim=-1)  # [B, D + F]
            return unet(sample, t, encoder_hidden_states=dummy, class_labels=c).sample

        if embeds.modes is not None:  # an open prompt: the mixture of its answers' conditionals (mixture.py)
            v = self._mixture_v(x_t, t, embeds, cam, sample, dummy, unet)
        else:
            v = v_of(cond)
        if guidance_scale != 1.0:
            v = cfg_combine(v_of(uncond), v, guidance_scale)
        if raw:
            return v
        # v = alpha_t eps - sigma_t x  =>  eps = alpha_t v + sigma_t x_t
        return v_to_eps(v, x_t, self.schedule.alpha_t(t), self.schedule.sigma_t(t))

    def _camera_features(self, cameras: Cameras) -> Tensor:
        """The prior's camera features [B, F]; all zeros (a dropped camera) when camera_blind."""
        cam = self.prior.camera_features(cameras)
        return torch.zeros_like(cam) if self.camera_blind else cam

    def _mixture_v(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cam: Tensor, sample: Tensor, dummy: Tensor,
                   unet: nn.Module) -> Tensor:
        """v_mix [B, 3, R, R] of an open prompt: every view under every mode in one UNet call (B M samples)."""
        B, M = x_t.shape[0], embeds.modes.shape[1]
        text = embeds.modes[0].to(x_t)  # [M, D]
        c = torch.cat([text.repeat(B, 1), cam.to(x_t).repeat_interleave(M, 0)], dim=-1)  # [B M, D + F], view-major
        v = unet(sample.repeat_interleave(M, 0), t.repeat_interleave(M), encoder_hidden_states=dummy.repeat_interleave(M, 0),
                 class_labels=c).sample  # [B M, 3, R, R]
        v = v.view(B, M, *v.shape[1:])  # [B, M, 3, R, R]
        v_mix, w = mix_predictions(v, x_t, self.schedule.alpha_t(t).to(x_t), self.schedule.sigma_t(t).to(x_t))
        self.last_mode_weights = w
        return v_mix

    def predict_noise(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                      guidance_scale: Optional[float] = None) -> Tensor:
        """CFG eps_hat [B, 3, R, R] through the prior's own `predict_noise` (no grad); an open prompt through
        the mixture (`denoise`)."""
        from ..shapeworld.prior import PromptConditioning

        s = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        B = x_t.shape[0]
        if embeds.modes is not None:
            with torch.no_grad():
                return self.denoise(x_t.detach(), as_timesteps(t, B, x_t.device), embeds, cameras, s).float()
        cond, uncond = embeds.for_cameras(cameras, view_dependent=False)
        pc = PromptConditioning(cond, uncond, [embeds.prompt] * B)
        with torch.no_grad():
            return self.prior.predict_noise(x_t.detach(), as_timesteps(t, B, x_t.device), pc,
                                            self._camera_features(cameras), s).float()
