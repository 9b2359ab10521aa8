"""The training renders' low-pass, baked into the Gaussians so that they look at display size as they did in
training (Mip-Splatting's 3D smoothing filter, Yu et al. 2024, without its opacity compensation).

Why: the rasteriser (gsplat's, Spark's, every 3DGS viewer's) adds 0.3 px^2 to each splat's 2D covariance. At the
64 px of training a pixel is ~2 cm at the object, so that low-pass widens every splat by a standard deviation of
~1.1 cm, about the size of a generated splat (median largest scale 11.5 mm on the demo cube): the optimiser fits
the widened splats, and places the cube's faces about 1 cm inside the true ones. At 512 px the same 0.3 px is 8x
smaller in the world; the splats thin out and the faces' edges come out soft and ~1 cm short (demo cube, el 20,
az 30, 512 px: mean alpha 0.99 more than 16 px inside the silhouette, 0.19-0.70 in the 8 px along its edge).

The bake adds to each Gaussian's 3D covariance the isotropic variance that the 0.3 px low-pass had at the
training resolution where the Gaussian was seen sharpest (its largest sampling rate, as in Mip-Splatting):

    Sigma' = Sigma + k (d / f)^2 I        k = 0.3 px^2, f = the training focal length in pixels,
                                          d = the nearest distance a training camera came to the Gaussian

(objects: the orbit's smallest radius minus the Gaussian's distance from the origin; scenes: the distance from
the cameras' position), and keeps its opacity, as training did (the 2D low-pass does not lower opacities).
Sigma' is decomposed again into rotation and scales; means and colours are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..gaussians import Gaussians, quat_to_rotmat
from .axes import rotmat_to_quat


@dataclass
class DisplayFilterConfig:
    """What the training renders were like (cameras.OrbitSampler / InsideOutSampler's fields)."""

    resolution: int  # training image height in pixels
    fovy: float  # training vertical field of view, degrees
    mode: str = "object"  # "object": orbit cameras around the origin; "scene": cameras at `position`
    nearest_distance: float = 1.6  # objects: the smallest orbit radius (metres)
    position: tuple[float, float, float] = (0.0, 0.0, 1.2)  # scenes: where the cameras stand
    kernel: float = 0.3  # the rasteriser's 2D low-pass, pixels^2 (gsplat's eps2d)
    min_distance: float = 0.1  # metres: a Gaussian closer than this to a camera counts as this far

    @property
    def focal(self) -> float:
        """The training focal length in pixels."""
        return 0.5 * self.resolution / math.tan(math.radians(self.fovy) / 2)

    @staticmethod
    def of_sampler(sampler, mode: str) -> "DisplayFilterConfig":
        """The filter of a trainer's camera sampler (`Trainer.sampler`)."""
        if mode == "object":
            return DisplayFilterConfig(sampler.height, sampler.fovy, "object", nearest_distance=min(sampler.distance))
        return DisplayFilterConfig(sampler.height, sampler.fovy, "scene", position=tuple(sampler.position))


def filter_variance(means: torch.Tensor, cfg: DisplayFilterConfig) -> torch.Tensor:
    """k (d / f)^2 [N] for Gaussians at `means` [N, 3] (metres^2)."""
    if cfg.mode == "object":
        d = cfg.nearest_distance - means.norm(dim=-1)
    else:
        d = (means - torch.tensor(cfg.position, dtype=means.dtype)).norm(dim=-1)
    d = d.clamp_min(cfg.min_distance)
    return cfg.kernel * (d / cfg.focal) ** 2


def bake_display_filter(gaussians: Gaussians, cfg: DisplayFilterConfig) -> Gaussians:
    """`gaussians` with the training low-pass baked in (see the module docstring): detached, float32, CPU."""
    s = {k: v.detach().to("cpu", torch.float64) for k, v in gaussians.splats.items()}
    R = quat_to_rotmat(torch.nn.functional.normalize(s["quats"], dim=-1))  # [N, 3, 3]
    S2 = torch.exp(2 * s["scales"])  # [N, 3] variances along the local axes
    cov = (R * S2[:, None, :]) @ R.transpose(1, 2)  # [N, 3, 3]
    cov = cov + filter_variance(s["means"], cfg)[:, None, None] * torch.eye(3, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(cov)  # ascending variances, orthonormal columns
    flip = torch.linalg.det(evecs) < 0
    evecs[flip, :, 0] = -evecs[flip, :, 0]  # proper rotations
    quats = torch.from_numpy(np.stack([rotmat_to_quat(e) for e in evecs.numpy()])) if len(evecs) else s["quats"]
    f = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    return Gaussians(f(s["means"]), f(0.5 * torch.log(evals.clamp_min(1e-20))), f(quats), f(s["opacities"]),
                     f(s["sh0"]), f(s["shN"]))
