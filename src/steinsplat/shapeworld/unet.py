"""The ShapeWorld prior's denoiser, without diffusers at run time.

The prior is trained as diffusers' `UNet2DConditionModel` in its attention-free form
(`prior.unet_config`: DownBlock2D / UpBlock2D, a one-resnet UNetMidBlock2D, a "projection" class
embedding that carries text + camera, "scale_shift" time conditioning). Importing diffusers costs
~1.5 s on a 2-core CPU (it pulls in torch._dynamo), more than the whole prior load, so the
generation path runs this module instead: the same network, the same parameter names (so the
shipped `unet/diffusion_pytorch_model.safetensors` loads as is), the same operations in the same
order (so it computes the same numbers; tests/test_shapeworld_unet.py compares it with diffusers).
Training (`python -m steinsplat.shapeworld.train`) keeps diffusers' class.

Forward pass, for x_t [B, C_in, H, W], t [B], class_labels c [B, D]:
  1. time features: sinusoidal embedding of t (cos first, diffusers' flip_sin_to_cos), then an MLP
     -> emb [B, 4 C0]; plus the class projection MLP(c) [B, 4 C0];
  2. conv_in -> [B, C0, H, W]; every down block: resnets (each output kept for the skips), then a
     stride-2 conv except in the last block;
  3. the mid block: one resnet;
  4. every up block: resnets on [h, skip] concatenated along channels, then nearest x2 + conv
     except in the last block;
  5. GroupNorm, SiLU, conv_out -> [B, C_out, H, W].
A resnet with "scale_shift": h = conv1(silu(norm1(x))); (s, b) = proj(silu(emb));
h = conv2(silu(norm2(h) * (1 + s) + b)); out = shortcut(x) + h.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

SUPPORTED = dict(down_block="DownBlock2D", up_block="UpBlock2D", mid_block_type="UNetMidBlock2D",
                 class_embed_type="projection", resnet_time_scale_shift="scale_shift", act_fn="silu")


class UNetConfigError(ValueError):
    """A UNet config this module does not implement (use diffusers' UNet2DConditionModel for it)."""


@dataclass
class UNetOutput:
    sample: Tensor  # [B, C_out, H, W], the raw prediction (v for the ShapeWorld prior)


class Config(dict):
    """The UNet's config.json as a dict with attribute access (as diffusers' `unet.config`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B] -> [B, dim]: cos then sin of t * max_period^(-k / (dim / 2)), k = 0 .. dim/2 - 1."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / half)  # [dim/2]
    angles = t[:, None].float() * freqs[None, :]  # [B, dim/2]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)  # cos first
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb  # [B, dim]


class EmbeddingMLP(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding, same parameter names)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """A residual block with scale-shift time conditioning (module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=1, padding=0) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))  # [B, out, H, W]
        scale, shift = torch.chunk(self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None], 2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.nonlinearity(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: Optional[tuple[int, int]] = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)  # [B, C, 2H, 2W]


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, layers: int, groups: int, eps: float, down: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps)
                                     for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if down else None

    def forward(self, h: Tensor, temb: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        skips: tuple[Tensor, ...] = ()
        for resnet in self.resnets:
            h = resnet(h, temb)
            skips += (h,)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips += (h,)
        return h, skips


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, prev_ch: int, out_ch: int, temb_ch: int, layers: int, groups: int, eps: float,
                 up: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock((prev_ch if i == 0 else out_ch) + (in_ch if i == layers - 1 else out_ch), out_ch, temb_ch,
                        groups, eps)
            for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if up else None

    def forward(self, h: Tensor, skips: tuple[Tensor, ...], temb: Tensor,
                size: Optional[tuple[int, int]] = None) -> Tensor:
        for resnet in self.resnets:
            h = resnet(torch.cat([h, skips[-1]], dim=1), temb)  # [B, C + C_skip, H, W] -> [B, out, H, W]
            skips = skips[:-1]
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, size)
        return h


class MidBlock(nn.Module):
    def __init__(self, ch: int, temb_ch: int, groups: int, eps: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, temb_ch, groups, eps)])

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.resnets[0](h, temb)


def check_config(cfg: dict) -> None:
    """Refuse a config with parts this module does not implement, naming the field."""
    wrong = [f"{k}={cfg.get(k)!r}" for k in ("mid_block_type", "class_embed_type", "resnet_time_scale_shift", "act_fn")
             if cfg.get(k) != SUPPORTED[k]]
    wrong += [f"{k}={list(cfg.get(k, ()))}" for k, name in (("down_block_types", "down_block"), ("up_block_types", "up_block"))
              if any(b != SUPPORTED[name] for b in cfg.get(k, ()))]
    for k, ok in (("flip_sin_to_cos", True), ("freq_shift", 0), ("center_input_sample", False), ("conv_in_kernel", 3),
                  ("conv_out_kernel", 3), ("time_embedding_type", "positional"), ("addition_embed_type", None),
                  ("time_cond_proj_dim", None), ("time_embedding_act_fn", None), ("timestep_post_act", None),
                  ("class_embeddings_concat", False), ("resnet_out_scale_factor", 1.0), ("mid_block_scale_factor", 1),
                  ("resnet_skip_time_act", False), ("encoder_hid_dim", None), ("time_embedding_dim", None),
                  ("dropout", 0.0)):
        if cfg.get(k, ok) != ok:
            wrong.append(f"{k}={cfg.get(k)!r}")
    if not isinstance(cfg.get("layers_per_block", 2), int):
        wrong.append(f"layers_per_block={cfg.get('layers_per_block')!r}")
    if wrong:
        raise UNetConfigError("this UNet config needs diffusers' UNet2DConditionModel (steinsplat's ShapeWorld UNet "
                              "implements only the attention-free prior): " + ", ".join(wrong))


class ShapeWorldUNet(nn.Module):
    """The attention-free conditional UNet (module docstring); call as diffusers' UNet2DConditionModel."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        check_config(config)
        self.config = Config(config)
        ch = list(config["block_out_channels"])
        layers, groups = int(config.get("layers_per_block", 2)), int(config.get("norm_num_groups", 32))
        eps = float(config.get("norm_eps", 1e-5))
        temb = ch[0] * 4
        self.time_embedding = EmbeddingMLP(ch[0], temb)
        self.class_embedding = EmbeddingMLP(int(config["projection_class_embeddings_input_dim"]), temb)
        self.conv_in = nn.Conv2d(int(config["in_channels"]), ch[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.down_blocks.append(DownBlock(prev, c, temb, layers, groups, eps, down=i < len(ch) - 1))
            prev = c
        self.mid_block = MidBlock(ch[-1], temb, groups, eps)
        rev = ch[::-1]
        self.up_blocks = nn.ModuleList()
        prev = rev[0]
        for i, c in enumerate(rev):
            skip_in = rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(UpBlock(skip_in, prev, c, temb, layers + 1, groups, eps, up=i < len(ch) - 1))
            prev = c
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], int(config["out_channels"]), kernel_size=3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Optional[Tensor] = None,
                class_labels: Optional[Tensor] = None, return_dict: bool = True) -> UNetOutput:
        """sample [B, C_in, H, W], timestep [B] or scalar, class_labels [B, D] -> UNetOutput(sample [B, C_out, H, W]).
        encoder_hidden_states is accepted and unused (there is no attention)."""
        if class_labels is None:
            raise ValueError("class_labels (the text + camera features) are required by the ShapeWorld UNet")
        B = sample.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = (t[None] if t.dim() == 0 else t).to(sample.device).expand(B)  # [B]
        # 1. time and class embeddings
        emb = self.time_embedding(timestep_features(t, self.conv_in.out_channels).to(dtype=sample.dtype))  # [B, 4 C0]
        emb = emb + self.class_embedding(class_labels).to(dtype=sample.dtype)
        # 2. down
        up_factor = 2 ** (len(self.up_blocks) - 1)
        odd = any(s % up_factor != 0 for s in sample.shape[-2:])
        h = self.conv_in(sample)  # [B, C0, H, W]
        skips: tuple[Tensor, ...] = (h,)
        for block in self.down_blocks:
            h, s = block(h, emb)
            skips += s
        # 3. mid
        h = self.mid_block(h, emb)
        # 4. up
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[2:]) if (odd and i < len(self.up_blocks) - 1) else None
            h = block(h, res, emb, size)
        # 5. out
        out = self.conv_out(self.conv_act(self.conv_norm_out(h)))  # [B, C_out, H, W]
        return UNetOutput(out)

    # ------------------------------------------------------------------ IO (diffusers' folder layout)
    @classmethod
    def from_pretrained(cls, folder: str | Path, use_safetensors: bool = True) -> "ShapeWorldUNet":
        """Load `folder/config.json` + `folder/diffusion_pytorch_model.safetensors` (written by diffusers or by
        `save_pretrained`); every parameter must be present and no other."""
        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        unet = cls(cfg)
        state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        try:
            missing, unexpected = unet.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shapes differ
            raise UNetConfigError(f"{folder}: the weights do not match the config: {str(e).splitlines()[1].strip()}") from e
        if missing or unexpected:
            raise UNetConfigError(f"{folder}: the weights do not match the config (missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]})")
        return unet.eval()

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(dict(self.config), indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "diffusion_pytorch_model.safetensors"))
