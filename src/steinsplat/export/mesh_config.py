"""MeshConfig: how export/mesh.py (TSDF fusion) and export/density_mesh.py (marching cubes on the density
grid) make a mesh from Gaussians, and the mesh file extensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MESH_EXTENSIONS = (".ply", ".obj", ".glb")


@dataclass
class MeshConfig:
    views: int = 24  # rendered views fused into the TSDF
    resolution: int = 128  # square render size for fusion
    voxel: float = 0.008  # TSDF voxel size (metres) for objects (a 1.2 m cube); scenes use >= 0.02 (a 4.2 m cube)
    trunc_voxels: float = 4.0  # truncation distance in voxels
    alpha_threshold: float = 0.5  # depth counts only where the render's alpha exceeds this
    min_component_fraction: float = 0.02  # drop pieces with fewer triangles than this share of the largest
    max_triangles: int = 50_000  # simplify (quadric decimation) above this many triangles; 0 = never
    mode: Literal["object", "scene"] = "object"  # orbit views around the origin, or inside-out views
    method: Literal["tsdf", "density"] = "tsdf"  # TSDF fusion of rendered RGB-D views, or marching cubes on the density grid
    level: float = 0.5  # density: iso-level of sum_i o_i exp(-d^T Sigma_i^-1 d / 2); must lie in (0, max opacity)
    sigma_cutoff: float = 3.0  # density: a Gaussian contributes only within this many standard deviations
    min_scale_voxels: float = 0.5  # density: std devs clamped to >= this many voxels, so thin splats fall on samples
    fill_cavities: bool = True  # density, objects only: fill pockets enclosed by the shell (no inward inner surface)
    up: str = "z"  # up axis of a .ply / .obj mesh: z (ours), y or -y (export/axes.py); a .glb is always +Y up (glTF)
