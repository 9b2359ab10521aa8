"""A tiny, obviously correct dense rasteriser: the reference that tests and benchmarks
compare the fast backends against. Every pixel meets every Gaussian; O(H W N) memory.

Written independently of `projection.py` and `torch_backend.py` (one camera at a time,
plain formulas), so a mistake in the fast path cannot hide in a shared helper. Only the
per-Gaussian features (rgb, normal, depth) are shared, through `common.per_gaussian_features`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .common import RenderOutput, per_gaussian_features, split_features


def _quat_to_R(q: Tensor) -> Tensor:
    """[N, 4] unit w x y z -> [N, 3, 3], written out element by element."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    r00 = 1 - 2 * (y**2 + z**2)
    r01 = 2 * (x * y - w * z)
    r02 = 2 * (x * z + w * y)
    r10 = 2 * (x * y + w * z)
    r11 = 1 - 2 * (x**2 + z**2)
    r12 = 2 * (y * z - w * x)
    r20 = 2 * (x * z - w * y)
    r21 = 2 * (y * z + w * x)
    r22 = 1 - 2 * (x**2 + y**2)
    return torch.stack([torch.stack([r00, r01, r02], -1), torch.stack([r10, r11, r12], -1), torch.stack([r20, r21, r22], -1)], -2)


def render_dense(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Optional[Tensor | Sequence[float]] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    W, H = cameras.width, cameras.height
    feats = per_gaussian_features(gaussians, cameras)  # [B, N, 7]
    means, quats, scales, opac = gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities
    Rq = _quat_to_R(quats)
    Sigma = Rq @ torch.diag_embed(scales**2) @ Rq.transpose(1, 2)  # [N, 3, 3]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=means.dtype), torch.arange(W, dtype=means.dtype), indexing="ij")
    pix = torch.stack([xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5], -1)  # [HW, 2] pixel centres

    # projection, one camera at a time
    proj = []
    for b in range(len(cameras)):
        V, K = cameras.viewmats[b], cameras.Ks[b]
        R, t = V[:3, :3], V[:3, 3]
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        pc = means @ R.T + t  # [N, 3]
        x, y, z = pc[:, 0], pc[:, 1], pc[:, 2]
        visible = (z > near_plane) & (z < far_plane)
        z_safe = torch.where(visible, z, torch.ones_like(z))
        # Jacobian of the pinhole projection, view direction clamped to 1.3x the half field of view
        lim_x = ((W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx)
        lim_y = ((H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy)
        u = torch.clamp(x / z_safe, -lim_x[1], lim_x[0])
        v = torch.clamp(y / z_safe, -lim_y[1], lim_y[0])
        J = torch.zeros(len(z), 2, 3, dtype=means.dtype)
        J[:, 0, 0] = fx / z_safe
        J[:, 0, 2] = -fx * u / z_safe
        J[:, 1, 1] = fy / z_safe
        J[:, 1, 2] = -fy * v / z_safe
        cov2 = J @ (R @ Sigma @ R.T) @ J.transpose(1, 2) + 0.3 * torch.eye(2)  # [N, 2, 2]
        det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] ** 2
        visible = visible & (det > 0)
        inv = torch.linalg.inv(torch.where(visible[:, None, None], cov2, torch.eye(2).expand_as(cov2)))  # [N, 2, 2]
        m2 = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)  # [N, 2]
        proj.append((m2, inv, z, visible))
    means2d = torch.stack([p[0] for p in proj])  # [B, N, 2]: what densification reads

    # every pixel against every Gaussian
    images, alphas, radii_all = [], [], []
    for b, (_, inv, z, visible) in enumerate(proj):
        d = pix[:, None, :] - means2d[b][None, :, :]  # [HW, N, 2]
        sigma = 0.5 * torch.einsum("pni,nij,pnj->pn", d, inv, d)  # [HW, N]
        alpha = torch.clamp(opac[None] * torch.exp(-sigma), max=0.99)
        alpha = torch.where((sigma >= 0) & (alpha >= 1.0 / 255.0) & visible[None], alpha, torch.zeros_like(alpha))
        # front to back
        order = torch.argsort(torch.where(visible, z, torch.full_like(z, float("inf"))).detach(), stable=True)
        alpha = alpha[:, order]
        f = feats[b][order]  # [N, 7]
        T_after = torch.cumprod(1 - alpha, dim=1)  # [HW, N]
        T_before = torch.cat([torch.ones_like(T_after[:, :1]), T_after[:, :-1]], dim=1)
        weight = alpha * T_before * (T_after > 1e-4).detach()  # stop before T falls to 1e-4
        images.append((weight @ f).reshape(H, W, -1))
        alphas.append(weight.sum(1).reshape(H, W, 1))
        radii_all.append(torch.where(visible, 1, 0))
    img, acc = torch.stack(images), torch.stack(alphas)
    info = {"means2d": means2d, "width": W, "height": H, "n_cameras": len(cameras),
            "gaussian_ids": None, "radii": torch.stack(radii_all)[..., None].expand(-1, -1, 2).int(), "backend": "dense"}
    out = split_features(img, acc, info)
    if background is not None:
        bg = torch.as_tensor(background, dtype=out.rgb.dtype).reshape(-1, 1, 1, 3)
        out.rgb = out.rgb + (1 - out.alpha) * bg
    return out
