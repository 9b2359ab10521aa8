"""Gaussians -> the arrays viser draws, plus what the page shows about them (count, bounds, camera).

No viser import here: plain array work, tested on its own.

viser's `scene.add_gaussian_splats` takes activated quantities:
    centers      [N, 3]     float32, world positions (the raw `means`)
    covariances  [N, 3, 3]  float32, Sigma = R diag(s^2) R^T, s = exp(log-scales), R from the w x y z quaternion
    rgbs         [N, 3]     float32 in [0, 1], the view-independent colour 0.5 + C0 * sh0 (higher bands dropped)
    opacities    [N, 1]     float32 in (0, 1), sigmoid of the logits
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..gaussians import SH_C0, Gaussians


@dataclass
class SplatArrays:
    """What `add_gaussian_splats` needs, as contiguous numpy arrays (shapes in the module docstring)."""

    centers: np.ndarray  # [N, 3]
    covariances: np.ndarray  # [N, 3, 3]
    rgbs: np.ndarray  # [N, 3]
    opacities: np.ndarray  # [N, 1]

    def __len__(self) -> int:
        return int(self.centers.shape[0])


@dataclass
class RawSplats:
    """A numpy copy of the raw parameters (gsplat's layout), cheap to take from the training thread."""

    means: np.ndarray  # [N, 3]
    log_scales: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] w x y z, not necessarily normalised
    logits: np.ndarray  # [N] opacity logits
    sh0: np.ndarray  # [N, 3] SH DC band


@torch.no_grad()
def raw_splats(g: Gaussians) -> RawSplats:
    s = g.splats
    return RawSplats(*(s[k].detach().float().cpu().numpy().copy() for k in ("means", "scales", "quats", "opacities")),
                     sh0=s["sh0"].detach().float().cpu()[:, 0, :].numpy().copy())


def quat_to_rotmat_np(q: np.ndarray) -> np.ndarray:
    """w x y z quaternions [N, 4] (normalised here) -> rotation matrices [N, 3, 3] (as gaussians.quat_to_rotmat)."""
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]  # each [N]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def activate(raw: RawSplats) -> SplatArrays:
    """Raw parameters -> viser's arrays; rows with NaN/inf are left out.

    Pure numpy on purpose: it runs in the viewer's thread beside training, and a torch op there would
    start a second OpenMP team, which makes the training threads of a 2-core machine back off."""
    with np.errstate(over="ignore", invalid="ignore"):
        m = quat_to_rotmat_np(raw.quats) * np.exp(raw.log_scales)[:, None, :]  # [N, 3, 3] = R diag(s)
        cov = (m[:, :, None, :] * m[:, None, :, :]).sum(-1)  # [N, 3, 3] Sigma = M M^T
        rgb = np.clip(raw.sh0 * SH_C0 + 0.5, 0.0, 1.0)  # [N, 3]
        opa = 1.0 / (1.0 + np.exp(-raw.logits))[:, None]  # [N, 1]
    ok = np.isfinite(raw.means).all(-1) & np.isfinite(cov).reshape(-1, 9).all(-1)  # [N]
    ok &= np.isfinite(raw.sh0).all(-1) & np.isfinite(raw.logits)
    f32 = lambda a: np.ascontiguousarray(a[ok], dtype=np.float32)  # noqa: E731
    return SplatArrays(centers=f32(raw.means), covariances=f32(cov), rgbs=f32(rgb), opacities=f32(opa))


def splat_arrays(g: Gaussians) -> SplatArrays:
    """Activate the raw parameters of `g` into viser's arrays; rows with NaN/inf are left out."""
    return activate(raw_splats(g))


@dataclass
class Bounds:
    """Axis-aligned bounds of the Gaussians' centres (what `steinsplat info` prints)."""

    lo: tuple[float, float, float]  # minimum x, y, z
    hi: tuple[float, float, float]  # maximum x, y, z

    def text(self) -> str:
        return " ".join(f"{v:.3f}" for v in self.lo) + "  ..  " + " ".join(f"{v:.3f}" for v in self.hi)


def bounds(arrays: SplatArrays) -> Bounds:
    if len(arrays) == 0:
        return Bounds((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    lo, hi = arrays.centers.min(0), arrays.centers.max(0)  # [3], [3]
    return Bounds(tuple(float(v) for v in lo), tuple(float(v) for v in hi))  # type: ignore[arg-type]


@dataclass
class CameraPose:
    """A starting camera: where it is and what it looks at (world units, Z up as steinsplat's cameras)."""

    position: tuple[float, float, float]  # camera centre
    look_at: tuple[float, float, float]  # point at the centre of the image
    fov: float  # vertical field of view, radians


def framing_camera(arrays: SplatArrays, fov: float = math.radians(50.0), azimuth: float = 45.0,
                   elevation: float = 25.0) -> CameraPose:
    """A camera that sees the object whole: it looks at the centre of the visible Gaussians (opacity
    > 0.05, 2nd..98th percentile box, so stray floaters do not shrink the object to a dot) from the
    given azimuth (degrees from +X towards +Y) and elevation (degrees above XY), at the distance where
    the box's bounding sphere fills ~80 % of the view height."""
    c = arrays.centers  # [N, 3]
    visible = c[arrays.opacities[:, 0] > 0.05] if len(arrays) else c
    if visible.shape[0] < 8:
        visible = c
    if visible.shape[0] == 0:
        lo = hi = np.zeros(3)
    else:
        lo, hi = np.percentile(visible, 2, axis=0), np.percentile(visible, 98, axis=0)  # [3], [3]
    centre = (lo + hi) / 2.0
    radius = max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-3)
    dist = radius / math.sin(0.8 * fov / 2.0)
    az, el = math.radians(azimuth), math.radians(elevation)
    d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])  # unit, towards the camera
    pos = centre + dist * d
    return CameraPose(tuple(float(v) for v in pos), tuple(float(v) for v in centre), fov)  # type: ignore[arg-type]
