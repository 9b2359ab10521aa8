"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023).

The renders are treated as samples of a distribution q whose noisy score is modelled by
eps_psi, a LoRA copy of the prior's UNet conditioned on the camera c, trained alongside with
the ordinary diffusion loss on the current renders. Step by step, for renders x [B, C, h, w]:
    1. t ~ U{t_min..t_max} [B],  eps ~ N(0, I),  x_t = alpha_t x + sigma_t eps
    2. eps_hat = CFG prediction of the frozen prior at x_t                   (no grad)
    3. eps_psi = eps_psi(x_t, t, y, c), the LoRA model (guidance scale 1)    (no grad)
    4. grad = w(t) (eps_hat - eps_psi)                                       (descent gradient on x)
    5. train the LoRA (its own optimiser): t' ~ U{0..T-1}, eps' ~ N(0, I),
         L_psi = || raw_psi(alpha_t' x + sigma_t' eps', t', y, c) - target ||^2
       with target = eps' (epsilon models) or v = alpha_t' eps' - sigma_t' x (v-prediction).
Signs: compared with SDS, eps is replaced by eps_psi, the *particles'* noise prediction; if
eps_psi were the exact score of q, E_{x~q, eps}[eps_psi(x_t)] = 0 and VSD's mean over particles
equals SDS's (the difference is the particles' mutual repulsion).

Camera conditioning of eps_psi: a prior that already conditions on the camera (ShapeWorld)
is used through its own camera path; for a prior that does not (SD), an extra class embedding
of the flattened camera-to-world matrix [B, 16] is added to the copy's timestep embedding
(zero-initialised, so eps_psi starts as the prior), with the camera dropped with probability
`camera_dropout` while training.

With the camera given through that embedding, eps_psi is prompted with the plain prompt, not
the view-tagged ones (`lora_view_prompts=False`, as threestudio's ProlificDreamer: the LoRA sees
the camera once, as a camera, while the frozen prior keeps its view-dependent prompts).

The LoRA layers (peft `LoraConfig`) go on the attention projections when the UNet has attention
(SD), else on its conv / linear layers (the ShapeWorld UNet has no attention).

Defaults that depend on the prior: `guidance_scale` and `lora_lr` left None are taken from the
prior's `vsd_defaults` (SD: CFG 7.5 and 1e-4, ProlificDreamer's in threestudio, docs/gpu.md); a
prior without them (ShapeWorld, the tiny test priors) gets its own CFG scale and 1e-3, the values
its runs were measured with.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from ..priors.base import DiffusionPrior, PromptEmbeds
from ..render.common import RenderOutput
from .base import Estimate, Guidance, GuidanceConfig, weighting

ATTENTION_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class VSDConfig(GuidanceConfig):
    lora_rank: int = 4  # LoRA rank r
    lora_alpha: float = 4.0  # LoRA scaling numerator (scale = alpha / r)
    lora_target: Literal["auto", "attention", "conv_linear"] = "auto"  # auto: attention if any, else conv/linear
    lora_lr: Optional[float] = None  # AdamW learning rate of eps_psi (LoRA + camera embedding); None: the prior's vsd_defaults, else 1e-3
    lora_steps: int = 1  # eps_psi updates per guidance step
    lora_guidance_scale: float = 1.0  # CFG scale of eps_psi (1 = conditional only, as ProlificDreamer)
    camera_dropout: float = 0.1  # probability of dropping the camera when training eps_psi (added embedding only)
    lora_view_prompts: bool = False  # eps_psi also sees the view-tagged prompts when the camera comes through the added embedding (False: the plain prompt, threestudio's ProlificDreamer)


DEFAULT_LORA_LR = 1e-3  # eps_psi's learning rate on a prior without vsd_defaults (ShapeWorld, tiny priors)


def resolve_vsd_config(prior: DiffusionPrior, config: VSDConfig) -> VSDConfig:
    """`config` with guidance_scale and lora_lr left None filled from `prior.vsd_defaults` (module docstring)."""
    defaults = dict(getattr(prior, "vsd_defaults", None) or {})
    fill = {}
    if config.guidance_scale is None and defaults.get("guidance_scale") is not None:
        fill["guidance_scale"] = float(defaults["guidance_scale"])
    if config.lora_lr is None:
        fill["lora_lr"] = float(defaults.get("lora_lr", DEFAULT_LORA_LR))
    return dataclasses.replace(config, **fill) if fill else config


class ParticleScore(Protocol):
    """eps_psi: the noise prediction of the current renders' distribution."""

    def predict(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras) -> Tensor:
        """[B, C, h, w], no grad."""
        ...

    def update(self, x: Tensor, embeds: PromptEmbeds, cameras: Cameras, generator: Optional[torch.Generator]) -> Optional[float]:
        """One training step on renders x (detached); returns the loss (None if nothing is trained)."""
        ...


class CameraClassEmbedding(nn.Module):
    """c2w [B, 16] -> [B, E] added to the UNet's timestep embedding; zero-initialised output."""

    def __init__(self, out_dim: int, in_dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, c: Tensor) -> Tensor:
        return self.net(c.to(self.net[0].weight.dtype))


def lora_target_modules(unet: nn.Module, target: str = "auto") -> list[str]:
    """Full names of the UNet's modules that get LoRA layers (module docstring)."""
    attn = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and n.endswith(ATTENTION_SUFFIXES)]
    if target == "attention" or (target == "auto" and attn):
        if not attn:
            raise ValueError("lora_target='attention' but this UNet has no attention layers; use 'conv_linear'")
        return attn
    if target not in ("auto", "conv_linear"):
        raise ValueError(f"unknown lora_target {target!r}: use 'auto', 'attention' or 'conv_linear'")
    # every conv / linear inside the down, mid and up blocks (conv_in/conv_out and embeddings stay frozen)
    return [n for n, m in unet.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n.startswith(("down_blocks", "mid_block", "up_blocks"))]


class LoRAParticleScore(nn.Module):
    """eps_psi as a LoRA copy of the prior's UNet (+ a camera embedding for priors without one)."""

    def __init__(self, prior: DiffusionPrior, config: VSDConfig) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        self.prior = [prior]  # a list: not registered as a submodule (the prior stays outside this module)
        self.config = config
        unet = copy.deepcopy(prior.unet)
        unet.requires_grad_(False)
        targets = lora_target_modules(unet, config.lora_target)
        lcfg = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets, lora_dropout=0.0,
                          init_lora_weights=True)  # B = 0: eps_psi starts equal to the prior
        unet = inject_adapter_in_model(lcfg, unet)
        for n, p in unet.named_parameters():
            p.requires_grad_("lora_" in n)
        self.camera_embed = not prior.camera_conditioned
        if self.camera_embed:
            if getattr(unet, "class_embedding", None) is not None:
                raise ValueError("the prior's UNet already has a class embedding but the prior says it is not "
                                 "camera-conditioned; cannot add a camera embedding")
            emb_dim = unet.time_embedding.linear_2.out_features
            unet.class_embedding = CameraClassEmbedding(emb_dim).to(prior.device)
        self.unet = unet.train()
        params = [p for p in self.unet.parameters() if p.requires_grad]
        # LoRA / embedding weights in float32 even if the copy runs in fp16 (peft's autocast_adapter_dtype)
        for p in params:
            p.data = p.data.float()
        lr = config.lora_lr if config.lora_lr is not None else DEFAULT_LORA_LR
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def state_tensors(self) -> dict[str, Tensor]:
        """LoRA / camera-embedding weights and their AdamW state, by parameter name."""
        t: dict[str, Tensor] = {}
        for n, p in self.unet.named_parameters():
            if p.requires_grad:
                t[f"param.{n}"] = p.detach()
                for k, v in self.optimizer.state.get(p, {}).items():
                    t[f"opt.{n}.{k}"] = torch.as_tensor(v)
        return t

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for n, p in self.unet.named_parameters():
            if not p.requires_grad or f"param.{n}" not in tensors:
                continue
            with torch.no_grad():
                p.copy_(tensors[f"param.{n}"].to(p))
            st = {k[len(f"opt.{n}."):]: v.to(p.device).clone() for k, v in tensors.items() if k.startswith(f"opt.{n}.")}
            if st:
                self.optimizer.state[p] = st

    def _class_labels(self, cameras: Cameras, drop: Optional[Tensor] = None) -> Optional[Tensor]:
        if not self.camera_embed:
            return None
        c = cameras.camtoworlds.reshape(len(cameras), 16).to(self.prior[0].device).float()  # [B, 16]
        if drop is not None:
            c = torch.where(drop[:, None], torch.zeros_like(c), c)
        return c

    def lora_embeds(self, embeds: PromptEmbeds) -> PromptEmbeds:
        """The prompts eps_psi sees: without the view tags when the camera comes through the added
        embedding (unless lora_view_prompts), else the prior's own."""
        if self.camera_embed and not self.config.lora_view_prompts and embeds.by_view:
            return dataclasses.replace(embeds, by_view={})
        return embeds

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, embeds: PromptEmbeds, cameras: Cameras) -> Tensor:
        prior = self.prior[0]
        embeds = self.lora_embeds(embeds)
        return prior.denoise(x_t, t, embeds, cameras, self.config.lora_guidance_scale, unet=self.unet,
                             class_labels=self._class_labels(cameras)).float()

    def update(self, x: Tensor, embeds: PromptEmbeds, cameras: Cameras, generator: Optional[torch.Generator]) -> float:
        prior = self.prior[0]
        embeds = self.lora_embeds(embeds)
        B = x.shape[0]
        loss_val = 0.0
        for _ in range(self.config.lora_steps):
            t = torch.randint(0, prior.schedule.num_train_timesteps, (B,), generator=generator).to(x.device)  # [B]
            eps = torch.randn(x.shape, generator=generator).to(x.device)  # [B, C, h, w]
            x_t = prior.schedule.add_noise(x, eps, t)
            drop = (torch.rand(B, generator=generator) < self.config.camera_dropout).to(x.device)
            with torch.enable_grad():
                raw = prior.denoise(x_t, t, embeds, cameras, 1.0, unet=self.unet,
                                    class_labels=self._class_labels(cameras, drop), raw=True)
                target = prior.training_target(x, eps, t)
                loss = F.mse_loss(raw.float(), target.float())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            loss_val = float(loss.detach())
        return loss_val


class VSD(Guidance):
    """VSD with a LoRA eps_psi by default; pass `particle_score` to use another (e.g. analytic) one."""

    def __init__(self, prior: DiffusionPrior, config: Optional[VSDConfig] = None,
                 particle_score: Optional[ParticleScore] = None) -> None:
        super().__init__(prior, resolve_vsd_config(prior, config or VSDConfig()))
        self.config: VSDConfig
        self.particle_score: ParticleScore = particle_score or LoRAParticleScore(prior, self.config)
        self._generator: Optional[torch.Generator] = None

    def state_tensors(self) -> dict[str, Tensor]:
        t = super().state_tensors()
        sub = getattr(self.particle_score, "state_tensors", None)
        if sub is not None:
            t.update({f"vsd.{k}": v for k, v in sub().items()})
        return t

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        sub = getattr(self.particle_score, "load_state_tensors", None)
        if sub is not None:
            sub({k[len("vsd."):]: v for k, v in tensors.items() if k.startswith("vsd.")})

    def step(self, *args, generator: Optional[torch.Generator] = None, **kwargs):  # keep the generator for LoRA training
        self._generator = generator
        return super().step(*args, generator=generator, **kwargs)

    def _estimate(self, x: Tensor, t: Tensor, eps: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                  render: Optional[RenderOutput], update_state: bool) -> Estimate:
        prior = self.prior
        x_t = prior.schedule.add_noise(x, eps, t)  # [B, C, h, w]  step 1
        eps_hat = prior.predict_noise(x_t, t, embeds, cameras, self.config.guidance_scale).float()  # step 2
        eps_psi = self.particle_score.predict(x_t, t, embeds, cameras)  # step 3
        w = weighting(prior.schedule, t, self.config.weighting)  # [B, 1, 1, 1]
        grad = w * (eps_hat - eps_psi)  # step 4
        lora_loss = None
        if update_state:
            lora_loss = self.particle_score.update(x, embeds, cameras, self._generator)  # step 5
        return Estimate(grad=grad, x_t=x_t, lora_loss=lora_loss)
