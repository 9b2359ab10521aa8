"""Rendering 3D Gaussians: one entry point, two backends.

`render(gaussians, cameras, background=..., backend="auto")` returns a `RenderOutput`
with RGB, alpha, expected depth and normals, plus the `info` dict that gsplat's
densification strategies read. Backends:

- "torch": the project's own vectorised CPU/GPU rasteriser (`render/torch_backend.py`);
- "gsplat": `gsplat.rasterization` (CUDA only) (`render/gsplat_backend.py`);
- "auto": gsplat where it can run (`gsplat_backend.gsplat_can_run`: the Gaussians live on a CUDA
  device), else torch. Tests run gsplat's Python path on CPU by swapping its CUDA ops for its
  PyTorch reference (tests/gsplat_cpu.py), which also makes "auto" pick gsplat.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .common import RenderOutput, per_gaussian_features

Backend = Literal["auto", "torch", "gsplat"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "gsplat")

__all__ = ["render", "RenderOutput", "Backend", "BACKENDS"]


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Optional[Tensor | Sequence[float]] = None,
    backend: Backend = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """Render `gaussians` from every camera of `cameras`.

    background: None (transparent: rgb is premultiplied by alpha) or an RGB triple / [3] /
        [B, 3] tensor composited behind the splats (`rgb + (1 - alpha) * background`).
    Returns rgb [B, H, W, 3], alpha [B, H, W, 1], depth [B, H, W, 1] (expected camera z,
    0 where empty), normal [B, H, W, 3] (world-space unit normals, 0 where empty), info.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {BACKENDS}")
    device = gaussians.device
    cameras = cameras.to(device)
    from .gsplat_backend import gsplat_can_run

    if backend == "auto":
        backend = "gsplat" if gsplat_can_run(device) else "torch"
    feats = per_gaussian_features(gaussians, cameras)  # [B, N, 7]: rgb, normal, depth
    if backend == "torch":
        from .torch_backend import rasterize_torch

        out = rasterize_torch(gaussians, cameras, feats, near_plane=near_plane, far_plane=far_plane)
    else:
        if not gsplat_can_run(device):
            raise RuntimeError(
                "the gsplat backend needs CUDA (gsplat has no CPU rasteriser); "
                "use backend='torch' or move the Gaussians to a CUDA device"
            )
        from .gsplat_backend import rasterize_gsplat

        out = rasterize_gsplat(gaussians, cameras, feats, near_plane=near_plane, far_plane=far_plane)
    if background is not None:
        bg = torch.as_tensor(background, dtype=out.rgb.dtype, device=device)
        bg = bg.reshape(-1, 1, 1, 3) if bg.dim() == 2 else bg.reshape(1, 1, 1, 3)
        out.rgb = out.rgb + (1.0 - out.alpha) * bg
    return out
