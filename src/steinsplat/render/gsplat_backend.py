"""CUDA backend: `gsplat.rasterization` with the same 7 feature channels as the torch backend.

Written against gsplat's documented API (>= 1.4): colours may carry any number of channels
when `sh_degree` is None, and `meta` holds what gsplat's strategies read. The features are
rgb, world normal and camera depth, so the composited depth channel divided by alpha is
gsplat's "ED" (expected depth) and both backends agree to float precision.
"""

from __future__ import annotations

from ..cameras import Cameras
from ..gaussians import Gaussians
from .common import RenderOutput, split_features
from .projection import EPS2D


def gsplat_can_run(device) -> bool:
    """gsplat's kernels are CUDA only. (tests/gsplat_cpu.py replaces them with gsplat's PyTorch
    reference and this function with `lambda device: True`, to run this backend on CPU.)"""
    return device.type == "cuda"


def rasterize_gsplat(
    gaussians: Gaussians,
    cameras: Cameras,
    feats,  # [B, N, F]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    packed: bool = False,
) -> RenderOutput:
    try:
        from gsplat import rasterization
    except ImportError as exc:  # pragma: no cover - gsplat is a hard dependency
        raise RuntimeError("the gsplat backend needs the gsplat package: pip install gsplat") from exc
    img, alpha, meta = rasterization(
        means=gaussians.means,  # [N, 3]
        quats=gaussians.quats,  # [N, 4]
        scales=gaussians.scales,  # [N, 3]
        opacities=gaussians.opacities,  # [N]
        colors=feats,  # [B, N, F]
        viewmats=cameras.viewmats,  # [B, 4, 4]
        Ks=cameras.Ks,  # [B, 3, 3]
        width=cameras.width,
        height=cameras.height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=EPS2D,
        sh_degree=None,
        packed=packed,
        render_mode="RGB",
        rasterize_mode="classic",
    )
    info = dict(meta)
    info["backend"] = "gsplat"
    return split_features(img, alpha, info)  # img [B, H, W, F], alpha [B, H, W, 1]
