"""ShapeWorld's shape + colour classifier (the R-precision metric, and the prior's evaluation).

A small ResNet (blocks.py: timm's `ConvNormAct`, `BasicBlock` and `SelectAdaptivePool2d` in plain
torch, so loading and running it does not import timm; nothing pretrained, nothing downloaded) with
two heads: 7 shapes and 8 colours (ids as in vocab.py).
Input: RGB images in [0, 1], [B, H, W, 3] or [B, 3, H, W], any size; they are resized to 64x64
(bilinear) first, so 32x32 prior samples are up-sampled. GroupNorm throughout, so a prediction
does not depend on the rest of the batch.

Folder layout: config.json (ClassifierConfig) + model.safetensors.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvNormAct, GlobalAvgPool, resnet_block
from .vocab import COLOUR_NAMES, SHAPE_NAMES, ObjectPrompt, as_prompt
from .weights import read_model_folder, save_model_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ClassifierConfig:
    input_size: int = 64  # images are resized to this side before the network
    width: int = 16  # channels of the first stage; stages have width x (1, 2, 4, 4)
    num_shapes: int = len(SHAPE_NAMES)  # shape classes (vocab.SHAPE_NAMES order)
    num_colours: int = len(COLOUR_NAMES)  # colour classes (vocab.COLOUR_NAMES order)
    training: dict = field(default_factory=dict)  # free-form record of how the weights were trained


@dataclass
class ClassifierOutput:
    shape_logits: Tensor  # [B, 7]
    colour_logits: Tensor  # [B, 8]

    @property
    def shape_ids(self) -> Tensor:  # [B]
        return self.shape_logits.argmax(-1)

    @property
    def colour_ids(self) -> Tensor:  # [B]
        return self.colour_logits.argmax(-1)

    def names(self) -> list[tuple[str, str]]:
        """(colour, shape) names per image."""
        return [(COLOUR_NAMES[c], SHAPE_NAMES[s]) for c, s in zip(self.colour_ids.tolist(), self.shape_ids.tolist())]


class ShapeWorldClassifier(nn.Module):
    def __init__(self, config: Optional[ClassifierConfig] = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        w = config.width
        chans = (w, 2 * w, 4 * w, 4 * w)
        self.stem = ConvNormAct(3, w, 3, stride=2)  # 64 -> 32
        blocks: list[nn.Module] = []
        c_in = w
        for i, c in enumerate(chans):
            blocks.append(resnet_block(c_in, c, stride=1 if i == 0 else 2))  # 32 -> 32 -> 16 -> 8 -> 4
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool()
        self.shape_head = nn.Linear(c_in, config.num_shapes)
        self.colour_head = nn.Linear(c_in, config.num_colours)

    @staticmethod
    def prepare(images: Tensor, size: int) -> Tensor:
        """[B, H, W, 3] or [B, 3, H, W] in [0, 1] -> [B, 3, size, size] in [-1, 1]."""
        x = images if images.shape[1] == 3 else images.permute(0, 3, 1, 2)
        x = x.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x * 2.0 - 1.0

    def forward(self, images: Tensor) -> ClassifierOutput:
        x = self.prepare(images, self.config.input_size)  # [B, 3, 64, 64]
        h = self.pool(self.blocks(self.stem(x)))  # [B, 4w]
        return ClassifierOutput(self.shape_head(h), self.colour_head(h))

    def loss(self, images: Tensor, shape_ids: Tensor, colour_ids: Tensor) -> Tensor:
        out = self(images)
        return F.cross_entropy(out.shape_logits.float(), shape_ids) + F.cross_entropy(out.colour_logits.float(), colour_ids)

    @torch.no_grad()
    def classify(self, images: Tensor, batch_size: int = 256) -> ClassifierOutput:
        """Eval-mode predictions in chunks (no gradient)."""
        outs = [self(images[i: i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        return ClassifierOutput(torch.cat([o.shape_logits for o in outs]), torch.cat([o.colour_logits for o in outs]))

    @torch.no_grad()
    def r_precision(self, images: Tensor, prompt) -> float:
        """Share of images whose predicted shape AND colour are the prompt's (an ObjectPrompt)."""
        p = as_prompt(prompt)
        if not isinstance(p, ObjectPrompt):
            raise ValueError("the ShapeWorld classifier knows objects only; rooms have no R-precision")
        out = self.classify(images)
        return float(((out.shape_ids == p.shape_id) & (out.colour_ids == p.colour_id)).float().mean())

    # ------------------------------------------------------------------ IO
    def save_pretrained(self, folder: str | Path) -> None:
        save_model_folder(folder, asdict(self.config), self, WEIGHTS_NAME, CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None) -> "ShapeWorldClassifier":
        """Load a classifier folder (default: the shipped `steinsplat/assets/shapeworld/classifier`)."""
        config, state = read_model_folder(folder, "classifier", WEIGHTS_NAME, CONFIG_NAME)
        m = cls(ClassifierConfig(**config))
        m.load_state_dict(state)
        m.requires_grad_(False)
        return m.eval()


# ---------------------------------------------------------------------------- training data
def classifier_tensors(ds) -> dict[str, Tensor]:
    """Object images uint8 [N, 3, 64, 64] and their shape/colour ids [N] from a ShapeWorldDataset."""
    a = ds.arrays
    keep = np.nonzero(a["kind"] == 0)[0]
    return {
        "images": torch.from_numpy(a["rgb"][keep]).permute(0, 3, 1, 2).contiguous(),
        "colour": torch.from_numpy(a["prompt_ids"][keep, 0].astype(np.int64)),
        "shape": torch.from_numpy(a["prompt_ids"][keep, 1].astype(np.int64)),
    }


def augment(x: Tensor, generator: Optional[torch.Generator] = None, max_shift: int = 3) -> Tensor:
    """Light augmentation of [B, 3, H, W] images in [0, 1] on a white background:
    a random shift of up to `max_shift` pixels (white fill), a horizontal flip (p 0.5), a
    down-to-half-resolution-and-back blur like a 32x32 prior sample (p 0.5), a brightness
    factor in [0.93, 1.07] and Gaussian noise of std up to 0.03."""
    B, _, H, W = x.shape
    r = torch.rand(B, 5, generator=generator)
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator)
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    out = torch.stack([
        padded[i, :, max_shift + int(dy): max_shift + int(dy) + H, max_shift + int(dx): max_shift + int(dx) + W]
        for i, (dy, dx) in enumerate(shifts.tolist())
    ])
    out = torch.where((r[:, 0] < 0.5)[:, None, None, None], out.flip(-1), out)
    low = F.interpolate(F.interpolate(out, scale_factor=0.5, mode="area"), size=(H, W), mode="bilinear", align_corners=False)
    out = torch.where((r[:, 1] < 0.5)[:, None, None, None], low, out)
    out = out * (0.93 + 0.14 * r[:, 2])[:, None, None, None]
    out = out + 0.03 * r[:, 3][:, None, None, None] * torch.randn(out.shape, generator=generator)
    return out.clamp(0.0, 1.0)


@functools.lru_cache(maxsize=1)
def shipped_classifier():  # -> Optional[ShapeWorldClassifier]
    """The shipped ShapeWorld classifier (for R-precision), or None if its weights are absent."""
    try:
        return ShapeWorldClassifier.from_pretrained(None).eval()
    except FileNotFoundError:
        return None
