"""ShapeWorld geometry and shading: triangle meshes of the seven shapes and the room.

Meshes are finely tessellated (128 segments around the Z axis, so a silhouette deviates from
the true surface by ~1e-4 m, a hundredth of a pixel at 64x64) and carry, per triangle,
- a flat face normal (exact on planar parts: cube, pyramid, caps, cone base, room), and
- a `curved` flag: on curved parts the normal at a hit point is the *analytic* normal of the
  true surface evaluated at that point (smooth shading, no faceting), see `WorldMesh.normals_at`.
Object normals point outwards, room normals inwards (towards the camera inside).

Shading (view-independent, so it can be baked into Gaussian colours):
    rgb = albedo * (AMBIENT + DIFFUSE * max(0, n . LIGHT_DIR)),  LIGHT_DIR = normalize(0.3, 0.5, 0.8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .vocab import (
    ROOM_MAX, ROOM_MIN, SHAPE_NAMES, SHAPES, Capsule, Cone, Cube, Cylinder, Pyramid, Sphere, Torus,
)

# ---------------------------------------------------------------------------- shading
AMBIENT = 0.35
DIFFUSE = 0.65
LIGHT_DIR: tuple[float, float, float] = tuple(
    float(v) / math.sqrt(0.3**2 + 0.5**2 + 0.8**2) for v in (0.3, 0.5, 0.8)
)  # type: ignore[assignment]

# Room part labels (per triangle)
WALL, FLOOR, CEILING = 0, 1, 2

SEGMENTS = 128  # tessellation around the Z axis


def shade(albedo: Tensor, normal: Tensor) -> Tensor:
    """Lambertian with ambient under the fixed world light: [..., 3] albedo, [..., 3] unit normals."""
    light = torch.tensor(LIGHT_DIR, dtype=normal.dtype, device=normal.device)
    ndotl = (normal * light).sum(-1, keepdim=True).clamp_min(0.0)  # [..., 1]
    return albedo * (AMBIENT + DIFFUSE * ndotl)


# ---------------------------------------------------------------------------- mesh type
@dataclass(frozen=True, eq=False)
class WorldMesh:
    """A triangle mesh with per-triangle normals information (see the module docstring)."""

    name: str
    vertices: np.ndarray  # [V, 3] float32
    triangles: np.ndarray  # [T, 3] int32, counter-clockwise seen from the side the normal points to
    face_normals: np.ndarray  # [T, 3] float32 unit
    curved: np.ndarray  # [T] bool: use `analytic_normal` at hits on this triangle
    labels: np.ndarray  # [T] int64 part label (rooms: WALL, FLOOR, CEILING; objects: 0)
    analytic_normal: Optional[Callable[[Tensor], Tensor]] = None  # points [N, 3] -> normals [N, 3] (any length)

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def bounding_sphere(self) -> tuple[tuple[float, float, float], float]:
        """A sphere (centre, radius) containing every vertex: the box centre and the farthest vertex."""
        centre = 0.5 * (self.vertices.min(0).astype(np.float64) + self.vertices.max(0))
        radius = float(np.linalg.norm(self.vertices - centre, axis=-1).max())
        return (float(centre[0]), float(centre[1]), float(centre[2])), radius * (1 + 1e-6) + 1e-6

    def normals_at(self, points: Tensor, triangle_ids: Tensor) -> Tensor:
        """Unit normals [..., 3] at hit `points [..., 3]` on triangles `triangle_ids [...]` (int64)."""
        if self.analytic_normal is None or not self.curved.any():  # all flat
            return torch.from_numpy(self.face_normals)[triangle_ids]
        smooth = torch.nn.functional.normalize(self.analytic_normal(points), dim=-1)  # [..., 3]
        if self.curved.all():
            return smooth
        flat = torch.from_numpy(self.face_normals)[triangle_ids]  # [..., 3]
        curved = torch.from_numpy(self.curved)[triangle_ids].unsqueeze(-1)  # [..., 1]
        return torch.where(curved, smooth, flat)

    def to_open3d(self):  # -> open3d.t.geometry.TriangleMesh
        """The mesh as an `open3d.t.geometry.TriangleMesh` (float32 positions, int32 indices)."""
        import open3d as o3d

        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(self.vertices, dtype=np.float32))
        mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(self.triangles, dtype=np.int32))
        mesh.triangle.normals = o3d.core.Tensor(np.ascontiguousarray(self.face_normals, dtype=np.float32))
        return mesh


def _face_normals(v: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals [T, 3] from the winding and twice the areas [T]."""
    a, b, c = v[t[:, 0]].astype(np.float64), v[t[:, 1]].astype(np.float64), v[t[:, 2]].astype(np.float64)
    n = np.cross(b - a, c - a)
    area2 = np.linalg.norm(n, axis=-1)
    return n / np.maximum(area2, 1e-300)[:, None], area2


def _finish(
    name: str, v: np.ndarray, t: np.ndarray, curved: np.ndarray, labels: np.ndarray,
    analytic: Optional[Callable[[Tensor], Tensor]],
) -> WorldMesh:
    """Drop degenerate triangles (at the poles of a lathe) and compute face normals."""
    n, area2 = _face_normals(v, t)
    keep = area2 > 1e-12
    return WorldMesh(
        name=name,
        vertices=np.ascontiguousarray(v, dtype=np.float32),
        triangles=np.ascontiguousarray(t[keep], dtype=np.int32),
        face_normals=np.ascontiguousarray(n[keep], dtype=np.float32),
        curved=np.ascontiguousarray(curved[keep], dtype=bool),
        labels=np.ascontiguousarray(labels[keep], dtype=np.int64),
        analytic_normal=analytic,
    )


# ---------------------------------------------------------------------------- builders
def _lathe(
    profile: list[tuple[float, float]], curved_segments: list[bool], closed: bool = False, segments: int = SEGMENTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Revolve a profile polyline (r, z) about +Z.

    The profile must run so that the outside is on its right when going "up" (e.g. from the
    bottom pole to the top pole); then the winding makes the face normals point outwards.
    `curved_segments[k]` flags profile segment k (k -> k+1, and the closing one if `closed`).
    Returns vertices [K*segments, 3], triangles [T, 3], curved [T].
    """
    prof = np.asarray(profile, dtype=np.float64)  # [K, 2]
    k = prof.shape[0]
    theta = 2.0 * np.pi * np.arange(segments) / segments  # [S]
    r, z = prof[:, 0:1], prof[:, 1:2]  # [K, 1]
    v = np.stack([r * np.cos(theta), r * np.sin(theta), np.broadcast_to(z, (k, segments))], -1).reshape(-1, 3)
    nseg = k if closed else k - 1
    if len(curved_segments) != nseg:
        raise ValueError(f"need {nseg} curved flags for {k} profile points, got {len(curved_segments)}")
    i = np.arange(nseg)[:, None]  # [nseg, 1] profile segment
    j = np.arange(segments)[None, :]  # [1, S]
    i1, j1 = (i + 1) % k, (j + 1) % segments
    a, b, c, d = i * segments + j, i * segments + j1, i1 * segments + j, i1 * segments + j1  # [nseg, S]
    # (a, b, c) and (b, d, c): d_theta x d_profile -> outward for an "upward" profile
    tri = np.stack([np.stack([a, b, c], -1), np.stack([b, d, c], -1)], 2).reshape(-1, 3)
    curved = np.repeat(np.asarray(curved_segments, dtype=bool), 2 * segments)
    return v, tri, curved


def _arc(cr: float, cz: float, radius: float, a0: float, a1: float, steps: int) -> list[tuple[float, float]]:
    """Points (r, z) on a circle of the profile plane from angle a0 to a1 (radians, from +r towards +z)."""
    a = np.linspace(a0, a1, steps + 1)
    return [(float(cr + radius * math.cos(x)), float(cz + radius * math.sin(x))) for x in a]


def _xy_dir(p: Tensor) -> tuple[Tensor, Tensor]:
    """Radial unit direction in the XY plane [..., 3] and the radius [..., 1] of points [..., 3]."""
    r = p[..., :2].norm(dim=-1, keepdim=True)
    radial = torch.cat([p[..., :2] / r.clamp_min(1e-9), torch.zeros_like(r)], -1)
    return radial, r


def _box(lo: tuple[float, float, float], hi: tuple[float, float, float], inward: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis-aligned box: vertices [8, 3], triangles [12, 3] (outward or inward winding) and face
    index [12] in the order -x, +x, -y, +y, -z, +z."""
    lo_, hi_ = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    v = lo_ + corners * (hi_ - lo_)  # index = 4x + 2y + z
    quads = [  # counter-clockwise seen from outside
        (0, 1, 3, 2),  # -x
        (4, 6, 7, 5),  # +x
        (0, 4, 5, 1),  # -y
        (2, 3, 7, 6),  # +y
        (0, 2, 6, 4),  # -z
        (1, 5, 7, 3),  # +z
    ]
    tri, face = [], []
    for f, (a, b, c, d) in enumerate(quads):
        tri += [(a, b, c), (a, c, d)]
        face += [f, f]
    t = np.asarray(tri, dtype=np.int64)
    if inward:
        t = t[:, ::-1]
    return v, np.ascontiguousarray(t), np.asarray(face, dtype=np.int64)


def _cube(g: Cube) -> WorldMesh:
    h = g.side / 2
    v, t, _ = _box((-h, -h, -h), (h, h, h), inward=False)
    return _finish("cube", v, t, np.zeros(len(t), bool), np.zeros(len(t), np.int64), None)


def _sphere(g: Sphere) -> WorldMesh:
    prof = _arc(0.0, 0.0, g.radius, -math.pi / 2, math.pi / 2, SEGMENTS // 2)
    prof[0], prof[-1] = (0.0, -g.radius), (0.0, g.radius)  # exact poles
    v, t, curved = _lathe(prof, [True] * (len(prof) - 1))
    return _finish("sphere", v, t, curved, np.zeros(len(t), np.int64), lambda p: p)


def _cylinder(g: Cylinder) -> WorldMesh:
    r, h = g.radius, g.height / 2
    v, t, curved = _lathe([(0.0, -h), (r, -h), (r, h), (0.0, h)], [False, True, False])

    def normal(p: Tensor) -> Tensor:
        return _xy_dir(p)[0]

    return _finish("cylinder", v, t, curved, np.zeros(len(t), np.int64), normal)


def _cone(g: Cone) -> WorldMesh:
    r, h = g.radius, g.height
    v, t, curved = _lathe([(0.0, -h / 2), (r, -h / 2), (0.0, h / 2)], [False, True])

    def normal(p: Tensor) -> Tensor:  # side: outward normal of r = R (z_top - z) / H is (H radial, R)
        radial, _ = _xy_dir(p)
        return torch.cat([h * radial[..., :2], torch.full_like(radial[..., 2:], r)], -1)

    return _finish("cone", v, t, curved, np.zeros(len(t), np.int64), normal)


def _torus(g: Torus) -> WorldMesh:
    R, a = g.major_radius, g.minor_radius
    prof = _arc(R, 0.0, a, 0.0, 2 * math.pi, SEGMENTS // 2)[:-1]  # closed circle, counter-clockwise
    v, t, curved = _lathe(prof, [True] * len(prof), closed=True)

    def normal(p: Tensor) -> Tensor:  # from the nearest point of the core circle
        radial, _ = _xy_dir(p)
        return p - R * radial

    return _finish("torus", v, t, curved, np.zeros(len(t), np.int64), normal)


def _pyramid(g: Pyramid) -> WorldMesh:
    b, h = g.base / 2, g.height / 2
    v = np.array([[-b, -b, -h], [b, -b, -h], [b, b, -h], [-b, b, -h], [0.0, 0.0, h]], dtype=np.float64)
    t = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]], dtype=np.int64)
    return _finish("pyramid", v, t, np.zeros(len(t), bool), np.zeros(len(t), np.int64), None)


def _capsule(g: Capsule) -> WorldMesh:
    r, a = g.radius, g.height / 2 - g.radius  # a: half length of the core segment
    steps = SEGMENTS // 4
    prof = _arc(0.0, -a, r, -math.pi / 2, 0.0, steps) + _arc(0.0, a, r, 0.0, math.pi / 2, steps)
    prof[0], prof[-1] = (0.0, -g.height / 2), (0.0, g.height / 2)
    v, t, curved = _lathe(prof, [True] * (len(prof) - 1))

    def normal(p: Tensor) -> Tensor:  # from the nearest point of the core segment
        core = torch.zeros_like(p)
        core[..., 2] = p[..., 2].clamp(-a, a)
        return p - core

    return _finish("capsule", v, t, curved, np.zeros(len(t), np.int64), normal)


_BUILDERS: dict[type, Callable] = {
    Cube: _cube, Sphere: _sphere, Cylinder: _cylinder, Cone: _cone, Torus: _torus, Pyramid: _pyramid, Capsule: _capsule,
}


@lru_cache(maxsize=None)
def shape_mesh(name: str) -> WorldMesh:
    """The canonical mesh of a ShapeWorld shape (cached), centred at the origin, +Z up."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(SHAPE_NAMES)}")
    geom = SHAPES[name]
    return _BUILDERS[type(geom)](geom)


@lru_cache(maxsize=None)
def room_mesh() -> WorldMesh:
    """The room box [-2, 2] x [-2, 2] x [0, 2.5] with inward normals; labels WALL, FLOOR, CEILING."""
    v, t, face = _box(ROOM_MIN, ROOM_MAX, inward=True)
    labels = np.array([WALL, WALL, WALL, WALL, FLOOR, CEILING], dtype=np.int64)[face]
    return _finish("room", v, t, np.zeros(len(t), bool), labels, None)


def world_mesh(key: str) -> WorldMesh:
    """`shape_mesh(key)` for a shape name, `room_mesh()` for "room"."""
    return room_mesh() if key == "room" else shape_mesh(key)
