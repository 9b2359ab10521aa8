"""Meshes from Gaussians by marching cubes on their opacity-weighted density.

The field is D(x) = sum_i o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i)), Sigma_i = R_i S_i^2 R_i^T
from each Gaussian's quaternion and scales (a Gaussian counts only within `sigma_cutoff` standard
deviations). Steps:
  1. bounds: the Gaussians' `sigma_cutoff` boxes, clipped to the fusion volume of the mode (the
     same cube as the TSDF method) and sampled every `voxel` metres;
  2. the grid is evaluated block by block (BLOCK^3 samples); each block sees only the Gaussians
     whose boxes overlap it, and the Mahalanobis distances of a block come from one matmul of the
     quadratic monomials of the samples (around the block centre, so float32 keeps its digits);
  3. objects: empty pockets enclosed by the shell are filled (a hollow shell of splats would
     otherwise give an inner surface facing inwards as well);
  4. the iso-surface D = `level` by marching cubes (scikit-image, Lewiner), on the grid padded with
     a layer of zeros so that surfaces cut by the volume's border are closed;
  5. vertex colours: the density-weighted mean DC colour of the Gaussians around each vertex.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..gaussians import Gaussians, quat_to_rotmat
from .errors import ExportError
from .mesh_config import MeshConfig

BLOCK = 16  # samples per block edge
MAX_PAIRS = 1 << 22  # (sample, Gaussian) pairs per matmul chunk (~16 MB of float32)
OBJECT_BOX = (np.array([-0.6, -0.6, -0.6]), 1.2)  # origin, edge (metres): the TSDF method's volume
SCENE_BOX = (np.array([-2.1, -2.1, -0.85]), 4.2)


class _Field:
    """The Gaussians in the form the density evaluation needs (all float32, detached)."""

    def __init__(self, g: Gaussians, min_scale: float, cutoff: float) -> None:
        self.means = g.means.detach().float().cpu()  # [N, 3]
        self.opac = g.opacities.detach().float().cpu()  # [N]
        self.rgb = g.colors().detach().float().cpu()  # [N, 3] DC colour
        R = quat_to_rotmat(g.quats.detach().float().cpu())  # [N, 3, 3], columns = local axes
        s = g.scales.detach().float().cpu().clamp_min(min_scale)  # [N, 3]
        A = R / s[:, None, :]  # [N, 3, 3] = R S^-1, so Sigma^-1 = A A^T
        self.Q = A @ A.transpose(1, 2)  # [N, 3, 3] precision matrices
        self.extent = cutoff * ((R * s[:, None, :]) ** 2).sum(-1).sqrt()  # [N, 3] half-sides of the cutoff box
        self.cut2 = cutoff * cutoff

    def overlapping(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Indices [M] of the Gaussians whose cutoff boxes meet the box [lo, hi] ([3] each)."""
        ok = ((self.means - self.extent) <= hi).all(-1) & ((self.means + self.extent) >= lo).all(-1)  # [N]
        return ok.nonzero()[:, 0]

    def weights(self, x: Tensor, idx: Tensor, centre: Tensor) -> Tensor:
        """w[p, m] = o_m exp(-0.5 d^T Q_m d), d = x_p - mu_m, zero beyond the cutoff: [P, M].

        d^T Q d = x^T Q x - 2 x^T Q mu + mu^T Q mu, all in coordinates around `centre` [3].
        """
        x = x - centre  # [P, 3]
        mu = self.means[idx] - centre  # [M, 3]
        Q = self.Q[idx]  # [M, 3, 3]
        b = (Q @ mu[:, :, None])[:, :, 0]  # [M, 3] = Q mu
        feat_x = torch.cat([x * x, 2 * x[:, [0, 0, 1]] * x[:, [1, 2, 2]], x, torch.ones_like(x[:, :1])], 1)  # [P, 10]
        quad = torch.stack([Q[:, 0, 0], Q[:, 1, 1], Q[:, 2, 2], Q[:, 0, 1], Q[:, 0, 2], Q[:, 1, 2]], 1)  # [M, 6]
        feat_g = torch.cat([quad, -2 * b, (mu * b).sum(-1, keepdim=True)], 1)  # [M, 10]
        m = (feat_x @ feat_g.T).clamp_min(0.0)  # [P, M] squared Mahalanobis distances
        w = self.opac[idx] * torch.exp(-0.5 * m)  # [P, M]
        return torch.where(m < self.cut2, w, torch.zeros_like(w))

    def accumulate(self, x: Tensor, lo: Tensor, hi: Tensor, with_colour: bool) -> Tensor:
        """Density [P] (or [P, 4]: density and density-weighted colour sums) at points `x` [P, 3] inside [lo, hi]."""
        idx = self.overlapping(lo, hi)  # [M]
        out = torch.zeros(x.shape[0], 4 if with_colour else 1)  # [P, 1 or 4]
        step = max(1, MAX_PAIRS // max(1, x.shape[0]))
        centre = 0.5 * (lo + hi)  # [3]
        for k in range(0, len(idx), step):
            j = idx[k : k + step]
            w = self.weights(x, j, centre)  # [P, m]
            if with_colour:
                out += w @ torch.cat([torch.ones(len(j), 1), self.rgb[j]], 1)  # [P, 4]
            else:
                out[:, 0] += w.sum(1)
        return out if with_colour else out[:, 0]


def check_density_config(gaussians: Gaussians, cfg: MeshConfig) -> None:
    if len(gaussians) == 0:
        raise ExportError("cannot mesh an empty set of Gaussians: there is nothing to extract")
    top = float(gaussians.opacities.detach().max())
    if not 0.0 < cfg.level < top:
        raise ExportError(
            f"density level {cfg.level} is outside (0, {top:.3g}), where {top:.3g} is the largest opacity of "
            "these Gaussians; choose a level in between (0.5 of the largest opacity is a good start)"
        )
    for name in ("sigma_cutoff", "min_scale_voxels", "voxel"):
        if not getattr(cfg, name) > 0:
            raise ExportError(f"MeshConfig.{name} must be > 0, got {getattr(cfg, name)}")


def grid_bounds(field: _Field, cfg: MeshConfig, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """The first sample [3] and the number of samples [3] per axis of the grid."""
    box_lo, size = OBJECT_BOX if cfg.mode == "object" else SCENE_BOX
    lo = np.maximum((field.means - field.extent).amin(0).numpy(), box_lo)  # [3]
    hi = np.minimum((field.means + field.extent).amax(0).numpy(), box_lo + size)  # [3]
    if (hi <= lo).any():
        raise ExportError(
            f"the Gaussians lie outside the {cfg.mode} volume ({box_lo.tolist()} + {size} m): nothing to mesh; "
            "check the mode (object or scene)"
        )
    lo = box_lo + np.floor((lo - box_lo) / voxel) * voxel  # snapped to the volume's lattice
    n = np.ceil((hi - lo) / voxel).astype(np.int64) + 1
    return lo, n


def _blocks(n: np.ndarray) -> Iterator[tuple[slice, slice, slice]]:
    for i in range(0, n[0], BLOCK):
        for j in range(0, n[1], BLOCK):
            for k in range(0, n[2], BLOCK):
                yield slice(i, min(i + BLOCK, n[0])), slice(j, min(j + BLOCK, n[1])), slice(k, min(k + BLOCK, n[2]))


def density_grid(field: _Field, lo: np.ndarray, n: np.ndarray, voxel: float) -> np.ndarray:
    """D at the samples lo + voxel * (i, j, k): [nx, ny, nz] float32."""
    grid = np.zeros(tuple(n), np.float32)
    lo_t = torch.tensor(lo, dtype=torch.float32)
    for sl in _blocks(n):
        axes = [lo_t[a] + voxel * torch.arange(s.start, s.stop, dtype=torch.float32) for a, s in enumerate(sl)]
        x = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # [bx, by, bz, 3]
        b_lo = torch.stack([ax[0] for ax in axes])  # [3]
        b_hi = torch.stack([ax[-1] for ax in axes])  # [3]
        d = field.accumulate(x.reshape(-1, 3), b_lo, b_hi, with_colour=False)  # [P]
        grid[sl] = d.reshape(x.shape[:3]).numpy()
    return grid


def vertex_colours(field: _Field, v: np.ndarray, tile: float) -> np.ndarray:
    """Density-weighted mean DC colour of the Gaussians at vertices `v` [V, 3] -> [V, 3] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))  # [V, 3]
    key = torch.floor(x / tile).long()  # [V, 3] tile of each vertex
    _, inv = torch.unique(key, dim=0, return_inverse=True)  # [V]
    sums = torch.zeros(len(x), 4)  # [V, 4] density, colour sums
    order = torch.argsort(inv)
    counts = torch.bincount(inv).tolist()
    for ids in torch.split(order, counts):
        p = x[ids]  # [P, 3]
        sums[ids] = field.accumulate(p, p.amin(0), p.amax(0), with_colour=True)
    fallback = field.rgb.mean(0)  # [3] for a vertex no Gaussian reaches (cannot happen on the iso-surface)
    ok = sums[:, :1] > 1e-12
    rgb = torch.where(ok, sums[:, 1:] / sums[:, :1].clamp_min(1e-12), fallback)  # [V, 3]
    return rgb.clamp(0, 1).numpy().astype(np.float64)


@torch.no_grad()
def density_mesh(gaussians: Gaussians, cfg: MeshConfig):  # -> open3d.geometry.TriangleMesh (before cleanup)
    import open3d as o3d
    from skimage.measure import marching_cubes

    check_density_config(gaussians, cfg)
    voxel = cfg.voxel if cfg.mode == "object" else max(cfg.voxel, 0.02)
    field = _Field(gaussians, cfg.min_scale_voxels * voxel, cfg.sigma_cutoff)
    lo, n = grid_bounds(field, cfg, voxel)
    grid = density_grid(field, lo, n, voxel)  # [nx, ny, nz]
    inside = grid >= cfg.level
    if not inside.any():
        raise ExportError(
            f"the Gaussians' density never reaches the level {cfg.level} (its maximum is {grid.max():.3g}): "
            "no surface; lower MeshConfig.level"
        )
    if cfg.fill_cavities and cfg.mode == "object":
        from scipy.ndimage import binary_fill_holes

        pocket = binary_fill_holes(inside) & ~inside
        grid[pocket] = max(float(grid.max()), 2 * cfg.level)
    grid = np.pad(grid, 1)  # zeros around: closed surfaces at the border
    verts, faces, _, _ = marching_cubes(grid, level=cfg.level, spacing=(voxel,) * 3)  # [V, 3], [T, 3]
    verts = verts + (lo - voxel)  # [V, 3] world
    faces = faces[:, ::-1]  # scikit-image winds its triangles clockwise seen from outside: make the normals outward
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts.astype(np.float64)),
                                     o3d.utility.Vector3iVector(faces.astype(np.int32)))
    mesh.vertex_colors = o3d.utility.Vector3dVector(vertex_colours(field, verts, BLOCK * voxel))
    return mesh
