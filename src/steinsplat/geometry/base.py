"""The geometry-estimator interface used by SSD's baselines, and normals from depth.

An estimator maps an image to depth and/or normals, differentiably w.r.t. the image:
- `input_space == "model"`: it reads the prior's model-space image (e.g. noisy x_t [B, 3, R, R]
  in [-1, 1] for ShapeWorld) and the timestep t;
- `input_space == "rgb"`: it reads RGB [B, 3, H, W] in [0, 1] (transformers depth models);
  SSD feeds it the prior's decoding of x_t.
Normals are unit vectors in the camera frame of the input (OpenCV: x right, y down, z forward),
facing the camera. Depth is either metric-like depth (camera z) or *disparity* (relative inverse
depth, what DPT-MiDaS and Depth Anything's relative models return); `depth_kind` says which, and
consumers must compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..priors.base import ModelUnavailableError

DepthKind = Literal["depth", "disparity"]


class EstimatorUnavailableError(ModelUnavailableError):
    """A geometry estimator cannot be loaded; the message says how to get it."""


@dataclass
class GeometryPrediction:
    depth: Optional[Tensor]  # [B, 1, H, W] depth or disparity (see depth_kind), or None
    normal: Optional[Tensor]  # [B, 3, H, W] unit normals, camera frame (OpenCV), facing the camera, or None
    depth_kind: DepthKind = "depth"  # "disparity": relative inverse depth (larger = nearer)


@runtime_checkable
class GeometryEstimator(Protocol):
    input_space: Literal["model", "rgb"]

    def __call__(self, image: Tensor, t: Optional[Tensor] = None, cameras: Optional[Cameras] = None) -> GeometryPrediction:
        """image [B, C, H, W] (model space or RGB in [0, 1]); t [B] for noise-aware estimators;
        cameras for intrinsics (normals from depth). Differentiable w.r.t. image."""
        ...


def default_intrinsics(batch: int, height: int, width: int, fovy_deg: float = 60.0, device=None) -> Tensor:
    """Pinhole K [B, 3, 3] with the principal point at the centre (when the camera is unknown)."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], device=device)
    return K.expand(batch, 3, 3)


def normals_from_depth(depth: Tensor, Ks: Optional[Tensor] = None) -> Tensor:
    """Camera-frame unit normals [B, 3, H, W] from depth [B, 1, H, W] (camera z) by finite differences.

    Back-project P(u, v) = z K^{-1} (u + 0.5, v + 0.5, 1); the normal is
    normalize(dP/dv x dP/du) (central differences, replicated borders), flipped to face the
    camera (n . P <= 0; the camera sits at the origin). For a fronto-parallel plane this gives
    (0, 0, -1). Ks: [B, 3, 3] for this resolution (default: 60 degree vertical field of view).
    """
    B, _, H, W = depth.shape
    if Ks is None:
        Ks = default_intrinsics(B, H, W, device=depth.device)
    Ks = Ks.to(depth)
    v, u = torch.meshgrid(torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5,
                          torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    fx, fy = Ks[:, 0, 0].view(B, 1, 1), Ks[:, 1, 1].view(B, 1, 1)
    cx, cy = Ks[:, 0, 2].view(B, 1, 1), Ks[:, 1, 2].view(B, 1, 1)
    z = depth[:, 0]  # [B, H, W]
    P = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=1)  # [B, 3, H, W]
    Pp = F.pad(P, (1, 1, 1, 1), mode="replicate")
    dPdu = (Pp[:, :, 1:-1, 2:] - Pp[:, :, 1:-1, :-2]) / 2  # [B, 3, H, W]
    dPdv = (Pp[:, :, 2:, 1:-1] - Pp[:, :, :-2, 1:-1]) / 2
    n = F.normalize(torch.linalg.cross(dPdv, dPdu, dim=1), dim=1, eps=1e-12)
    facing = torch.where((n * P).sum(1, keepdim=True).detach() > 0, -1.0, 1.0)
    return n * facing


def disparity_to_depth(disparity: Tensor, min_disparity: float = 1e-3) -> Tensor:
    """1 / disparity (clamped). For *relative* disparity (unknown scale and shift) this is depth
    up to an unknown affine map of its inverse: good enough for the shape of normals, not metric."""
    return 1.0 / disparity.clamp_min(min_disparity)
