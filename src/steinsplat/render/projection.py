"""EWA projection of 3D Gaussians to the image plane (gsplat's conventions, pure PyTorch).

For camera b and Gaussian n:
  1. p = R_b mu_n + t_b                        camera-space centre (OpenCV axes), z = p_z
  2. Sigma = (R_q S)(R_q S)^T                   world covariance from quaternion q and scales S
  3. Sigma_c = R_b Sigma R_b^T                  camera covariance
  4. J = [[fx/z, 0, -fx x'/z], [0, fy/z, -fy y'/z]]  with x' = clamp(x/z) to 1.3x the
     field of view (as gsplat does, so far off-screen Gaussians do not explode)
  5. Sigma_2d = J Sigma_c J^T + 0.3 I            the 0.3-pixel low-pass ("eps2d")
  6. mean2d = (fx x/z + cx, fy y/z + cy)         pixel centres sit at +0.5
Culled (radius 0): z <= near or z >= far, non-positive determinant, opacity < 1/255,
or a bounding box that misses the image.

The bounding box is opacity-aware and exact: a Gaussian's alpha o exp(-sigma) is at
least 1/255 only where d^T Sigma_2d^-1 d <= k^2 with k^2 = 2 ln(255 o); that ellipse
spans +-k sqrt(Sigma_2d[xx]) in x and +-k sqrt(Sigma_2d[yy]) in y. Every skipped pair
would have been skipped by the alpha threshold anyway, so boxes change nothing but cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import quat_to_rotmat

EPS2D = 0.3  # low-pass filter added to the 2D covariance, pixels^2
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
ALPHA_MAX = 0.99  # alpha is clamped here
T_MIN = 1e-4  # a ray stops once its transmittance would fall to this


@dataclass
class Projection:
    means2d: Tensor  # [B, N, 2] pixel coordinates (differentiable)
    conics: Tensor  # [B, N, 3] inverse 2D covariance (a, b, c) = [[a, b], [b, c]]
    depths: Tensor  # [B, N] camera z
    radii: Tensor  # [B, N, 2] int32 half-extent of the box in pixels (0 = culled)
    extent: Tensor  # [B, N, 2] exact (float) half-extent k*sqrt(diag Sigma_2d), detached
    valid: Tensor  # [B, N] bool


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """[N, 4] unit quats (w x y z), [N, 3] std devs -> [N, 3, 3] covariances."""
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R S
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] unit
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    cameras: Cameras,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    W, H = cameras.width, cameras.height
    Rv, tv = cameras.viewmats[:, :3, :3], cameras.viewmats[:, :3, 3]  # [B, 3, 3], [B, 3]
    Ks = cameras.Ks
    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]  # [B, 1]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]

    # 1. camera-space centres
    p = torch.einsum("bij,nj->bni", Rv, means) + tv[:, None, :]  # [B, N, 3]
    x, y, z = p.unbind(-1)  # each [B, N]
    valid = (z > near_plane) & (z < far_plane)
    zs = torch.where(valid, z, torch.ones_like(z))  # safe divisor for culled entries

    # 2-3. covariances
    cov3 = covariance_3d(quats, scales)  # [N, 3, 3]
    covc = torch.einsum("bij,njk,blk->bnil", Rv, cov3, Rv)  # [B, N, 3, 3]

    # 4. Jacobian with the clamped view direction
    lim_xp = (W - cx) / fx + 0.3 * (0.5 * W / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * W / fx)
    lim_yp = (H - cy) / fy + 0.3 * (0.5 * H / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * H / fy)
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1
    ).reshape(zs.shape + (2, 3))  # [B, N, 2, 3]

    # 5. 2D covariance with the low-pass filter
    cov2 = J @ covc @ J.transpose(-1, -2)  # [B, N, 2, 2]
    a = cov2[..., 0, 0] + EPS2D
    b = cov2[..., 0, 1]
    c = cov2[..., 1, 1] + EPS2D
    det = a * c - b * b
    valid = valid & (det > 0)
    det_s = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)  # [B, N, 3]

    # 6. centres in pixels
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)  # [B, N, 2]

    # opacity-aware exact box
    with torch.no_grad():
        o = opacities.detach()[None].expand_as(z)
        k2 = 2.0 * torch.log(torch.clamp_min(255.0 * o, 1e-30))  # [B, N]
        valid = valid & (k2 > 0)
        k = torch.sqrt(k2.clamp_min(0.0))
        ext = torch.stack([k * torch.sqrt(a.detach().clamp_min(0)), k * torch.sqrt(c.detach().clamp_min(0))], -1)
        m2 = means2d.detach()
        size = torch.tensor([W, H], dtype=m2.dtype, device=m2.device)
        on_screen = ((m2 + ext) > 0).all(-1) & ((m2 - ext) < size).all(-1)
        valid = valid & on_screen & torch.isfinite(ext).all(-1) & torch.isfinite(m2).all(-1)
        radii = torch.where(valid[..., None], torch.ceil(ext), torch.zeros_like(ext)).to(torch.int32)
        ext = torch.where(valid[..., None], ext, torch.zeros_like(ext))
    return Projection(means2d=means2d, conics=conics, depths=z, radii=radii, extent=ext, valid=valid)
