"""What both rendering backends share: the output type and the per-Gaussian features.

Both backends composite the same 7 feature channels per Gaussian and camera:
    [0:3] RGB (spherical harmonics evaluated towards the camera),
    [3:6] world-space normal: the Gaussian's shortest axis, flipped to face the camera,
    [6]   camera-space depth z of the Gaussian's centre,
so RGB, normals and expected depth come out of one pass and agree across backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians, quat_to_rotmat

NUM_FEATURES = 7


@dataclass
class RenderOutput:
    rgb: Tensor  # [B, H, W, 3] (premultiplied by alpha unless a background was given)
    alpha: Tensor  # [B, H, W, 1] accumulated opacity
    depth: Tensor  # [B, H, W, 1] expected camera z (0 where alpha == 0)
    normal: Tensor  # [B, H, W, 3] world-space unit normal (0 where alpha == 0)
    # What gsplat's strategies read: means2d [B, N, 2] (with grad), radii [B, N, 2] (int32),
    # width, height, n_cameras, gaussian_ids (None: not packed), plus backend extras.
    info: dict[str, Any] = field(default_factory=dict)


def per_gaussian_features(gaussians: Gaussians, cameras: Cameras) -> Tensor:
    """Per-camera features of every Gaussian: [B, N, 7] = rgb, world normal, camera depth."""
    means = gaussians.means  # [N, 3]
    campos = cameras.centers  # [B, 3]
    rgb = gaussians.colors(campos)  # [B, N, 3]
    # shortest axis of each Gaussian in world space
    R = quat_to_rotmat(gaussians.quats)  # [N, 3, 3], columns = local axes
    idx = gaussians.splats["scales"].detach().argmin(dim=-1)  # [N]
    axis = torch.gather(R, 2, idx[:, None, None].expand(-1, 3, 1)).squeeze(-1)  # [N, 3]
    to_cam = campos[:, None, :] - means.detach()[None]  # [B, N, 3]
    sign = torch.where((to_cam * axis.detach()[None]).sum(-1, keepdim=True) >= 0, 1.0, -1.0)  # [B, N, 1]
    normal = sign * axis[None]  # [B, N, 3]
    Rv, tv = cameras.viewmats[:, :3, :3], cameras.viewmats[:, :3, 3]  # [B, 3, 3], [B, 3]
    z = torch.einsum("bj,nj->bn", Rv[:, 2, :], means) + tv[:, 2:3]  # [B, N]
    return torch.cat([rgb, normal, z.unsqueeze(-1)], dim=-1)


def split_features(img: Tensor, alpha: Tensor, info: dict[str, Any]) -> RenderOutput:
    """Turn composited features [B, H, W, 7] and alpha [B, H, W, 1] into a RenderOutput."""
    rgb = img[..., 0:3]
    nsum = img[..., 3:6]
    norm = nsum.norm(dim=-1, keepdim=True)
    normal = torch.where(norm > 1e-8, nsum / norm.clamp_min(1e-8), torch.zeros_like(nsum))
    depth = torch.where(alpha > 1e-8, img[..., 6:7] / alpha.clamp_min(1e-8), torch.zeros_like(alpha))
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=normal, info=info)
