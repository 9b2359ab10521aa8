"""Monocular depth from a transformers checkpoint (`AutoModelForDepthEstimation`): DPT / MiDaS,
Depth Anything (v1, v2), ZoeDepth, GLPN, ... by hub id or local folder.

What the models return, and what this wrapper does with it:
- DPT (incl. Intel/dpt-*, MiDaS 3) and Depth Anything's *relative* models return relative
  inverse depth ("disparity": larger = nearer, unknown scale and shift). They are reported with
  `depth_kind="disparity"` and left as they are; SSD's depth baseline inverts the *rendered*
  depth to compare like with like.
- Depth Anything *metric* models (`depth_estimation_type="metric"`), ZoeDepth, GLPN and
  DepthPro return depth: `depth_kind="depth"`.
- Unknown model types: pass `depth_kind` explicitly (an error says so otherwise).
Normals: none of these models predicts them, so they are computed from depth by finite
differences with the camera intrinsics (`normals_from_depth`; disparity is inverted first, which
is exact up to the unknown scale/shift of relative models).

Everything is differentiable w.r.t. the input image (resize + normalisation in torch, no image
processor in the graph). Same download policy as the priors (`priors/hub.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from ..priors.base import freeze
from ..priors.hub import offline_mode, resolve, unavailable_as
from .base import DepthKind, EstimatorUnavailableError, GeometryPrediction, disparity_to_depth, normals_from_depth

DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# model_type -> (what the head outputs, default normalisation mean/std)
_KNOWN: dict[str, tuple[Optional[DepthKind], tuple, tuple]] = {
    "dpt": ("disparity", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # MiDaS-style relative inverse depth
    "depth_anything": (None, IMAGENET_MEAN, IMAGENET_STD),  # relative (disparity) or metric: read the config
    "zoedepth": ("depth", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "glpn": ("depth", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "depth_pro": ("depth", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass
class TransformersDepthConfig:
    model: str = DEFAULT_MODEL  # hub id or local folder (config.json + weights, optional preprocessor_config.json)
    allow_download: bool = False  # fetch from the hub if not cached (never when HF_HUB_OFFLINE=1)
    device: Optional[str] = None  # None: "cuda" if available, else "cpu"
    input_size: Optional[int] = None  # side the image is resized to; None: the processor's / config's size
    depth_kind: Optional[DepthKind] = None  # None: from the model type (module docstring)
    compute_normals: bool = True  # normals from depth by finite differences
    min_disparity: float = 1e-3  # clamp when inverting disparity for normals


class TransformersDepthEstimator(nn.Module):
    """A frozen transformers depth model as a `GeometryEstimator` (input: RGB in [0, 1])."""

    input_space: Literal["rgb"] = "rgb"

    def __init__(self, config: Optional[TransformersDepthConfig] = None, **overrides) -> None:
        super().__init__()
        config = config or TransformersDepthConfig()
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise TypeError(f"TransformersDepthConfig has no field {k!r}")
            setattr(config, k, v)
        self.config = config
        from transformers import AutoConfig, AutoModelForDepthEstimation

        what = "depth estimator"
        src = resolve(config.model, config.allow_download, what, EstimatorUnavailableError, flag="--estimator-model")
        with unavailable_as(config.model, what, EstimatorUnavailableError, flag="--estimator-model",
                            offline=src.local_files_only):
            mcfg = AutoConfig.from_pretrained(src.location, local_files_only=src.local_files_only)
            model = AutoModelForDepthEstimation.from_pretrained(src.location, local_files_only=src.local_files_only)
        dev = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = freeze(model).to(dev)
        self._device = dev
        mtype = getattr(mcfg, "model_type", "")
        known_kind, mean, std = _KNOWN.get(mtype, (None, IMAGENET_MEAN, IMAGENET_STD))
        if mtype == "depth_anything":
            known_kind = "depth" if getattr(mcfg, "depth_estimation_type", "relative") == "metric" else "disparity"
        kind = config.depth_kind or known_kind
        if kind is None:
            raise ValueError(f"model type {mtype!r} is not known to return depth or disparity: pass depth_kind='depth' "
                             "or depth_kind='disparity' (relative inverse depth, e.g. MiDaS-like models)")
        self.depth_kind: DepthKind = kind
        with offline_mode(src.local_files_only):
            size, mean, std = self._processor_settings(src.location, src.local_files_only, mean, std)
        patch = self._patch_size(mcfg)
        size = config.input_size or size or self._config_size(mcfg) or 384
        self.input_size = max(patch, int(round(size / patch)) * patch)  # a multiple of the patch size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1))

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, **kwargs) -> "TransformersDepthEstimator":
        return cls(TransformersDepthConfig(model=str(model)), **kwargs)

    @staticmethod
    def _processor_settings(location: str, local_only: bool, mean, std):
        """Size / mean / std from preprocessor_config.json when there is one (else the defaults)."""
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(location, local_files_only=local_only)
        except Exception:  # no preprocessor_config.json (e.g. tiny test models): keep the defaults
            return None, mean, std
        size = getattr(proc, "size", None)
        side = None
        if isinstance(size, dict):
            side = size.get("height") or size.get("shortest_edge")
        elif isinstance(size, int):
            side = size
        return side, tuple(getattr(proc, "image_mean", mean)), tuple(getattr(proc, "image_std", std))

    @staticmethod
    def _patch_size(cfg) -> int:
        bb = getattr(cfg, "backbone_config", None)
        p = getattr(bb, "patch_size", None) if bb is not None else None
        p = p or getattr(cfg, "patch_size", None) or 1
        return int(p[0] if isinstance(p, (tuple, list)) else p)

    @staticmethod
    def _config_size(cfg) -> Optional[int]:
        bb = getattr(cfg, "backbone_config", None)
        s = getattr(bb, "image_size", None) if bb is not None else None
        s = s or getattr(cfg, "image_size", None)
        if s is None:
            return None
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    def forward(self, image: Tensor, t: Optional[Tensor] = None, cameras: Optional[Cameras] = None) -> GeometryPrediction:
        """image [B, 3, H, W] in [0, 1] -> depth/disparity [B, 1, H, W] (+ normals [B, 3, H, W])."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be RGB [B, 3, H, W] in [0, 1], got {tuple(image.shape)}")
        B, _, H, W = image.shape
        S = self.input_size
        x = image.to(self._device, torch.float32)
        x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        pred = self.model(pixel_values=x).predicted_depth  # [B, S', S']
        if pred.dim() == 3:
            pred = pred.unsqueeze(1)  # [B, 1, S', S']
        d = F.interpolate(pred, size=(H, W), mode="bilinear", align_corners=False)  # [B, 1, H, W]
        normal = None
        if self.config.compute_normals:
            z = disparity_to_depth(d, self.config.min_disparity) if self.depth_kind == "disparity" else d
            Ks = None
            if cameras is not None:
                Ks = cameras.resized(W, H).Ks.to(d.device)
            normal = normals_from_depth(z, Ks)
        return GeometryPrediction(depth=d, normal=normal, depth_kind=self.depth_kind)
