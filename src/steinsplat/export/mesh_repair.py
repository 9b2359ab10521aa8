"""A triangle mesh that strict readers accept: every triangle has area, every vertex is used, every normal is a
finite unit vector.

What goes wrong without it (Khronos's glTF-Validator on the demo's mesh): quadric decimation leaves vertices
that no triangle uses any more, and open3d gives those a normal of length 0 (`ACCESSOR_VECTOR3_NON_UNIT`, an
error); engines that trust the file light them with NaN. Marching cubes and decimation can also leave
triangles with two equal corners or three collinear ones (no area, no normal). `repair_mesh` removes both and
computes the normals itself:

  1. drop triangles with a non-finite corner, a repeated index, or an area below `min_area` (m^2);
  2. drop repeated triangles (the same three vertices, in any order);
  3. drop vertices no triangle uses and renumber the triangles;
  4. vertex normals: the area-weighted sum of the normals of the triangles around each vertex; where that sum
     cancels (a vertex on a fold), the normal of its largest triangle; all normalised in float64.

Everything is numpy (no open3d), so it runs on any mesh; `repair_open3d` applies it to an open3d mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExportError

MIN_AREA = 1e-12  # m^2: a triangle smaller than this (a micron-sized sliver) counts as degenerate


@dataclass
class RepairedMesh:
    """Arrays of a mesh after `repair_mesh` (float64 except the triangles)."""

    vertices: np.ndarray  # [V, 3] positions
    triangles: np.ndarray  # [T, 3] int64 vertex indices, counter-clockwise seen from outside
    colors: np.ndarray  # [V, 3] in [0, 1], or [0, 3] when the mesh has none
    normals: np.ndarray  # [V, 3] unit vectors
    dropped_triangles: int  # how many triangles steps 1-2 removed
    dropped_vertices: int  # how many vertices step 3 removed


def face_normals(v: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unnormalised normals [T, 3] = cross product of two edges, areas [T])."""
    cross = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # [T, 3], length = 2 * area
    return cross, 0.5 * np.linalg.norm(cross, axis=1)


def repair_mesh(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None = None,
                min_area: float = MIN_AREA) -> RepairedMesh:
    """The mesh without degenerate or repeated triangles and unused vertices, with unit vertex normals."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)  # [V, 3]
    t = np.asarray(triangles, np.int64).reshape(-1, 3)  # [T, 3]
    c = np.zeros((0, 3)) if colors is None or len(colors) == 0 else np.asarray(colors, np.float64).reshape(-1, 3)
    if len(c) not in (0, len(v)):
        raise ExportError(f"the mesh has {len(v)} vertices but {len(c)} vertex colours; give one colour per vertex")
    if len(t) and (t.min() < 0 or t.max() >= len(v)):
        raise ExportError(f"the mesh's triangles index vertices outside 0..{len(v) - 1}; the mesh is corrupt")
    n_in_t, n_in_v = len(t), len(v)
    # 1. degenerate triangles
    finite = np.isfinite(v).all(1)  # [V]
    ok = finite[t].all(1) & (t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])  # [T]
    t = t[ok]
    v_safe = np.where(finite[:, None], v, 0.0)
    _, area = face_normals(v_safe, t)
    t = t[area > min_area]
    # 2. repeated triangles (keep the first of each set of three vertices)
    if len(t):
        _, first = np.unique(np.sort(t, axis=1), axis=0, return_index=True)
        t = t[np.sort(first)]
    # 3. unused vertices
    used = np.zeros(len(v), bool)
    used[t.reshape(-1)] = True
    new_index = np.cumsum(used) - 1  # [V]
    v, t = v[used], new_index[t]
    if len(c):
        c = np.clip(np.nan_to_num(c[used], nan=0.0), 0.0, 1.0)
    if len(t) == 0:
        raise ExportError("the mesh has no triangle with an area left after removing degenerate ones: nothing to "
                          "write; check the Gaussians (do they render opaque?) or the mesh settings")
    return RepairedMesh(v, t, c, vertex_normals(v, t), n_in_t - len(t), n_in_v - len(v))


def vertex_normals(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Unit normals [V, 3] of the vertices of a mesh in which every vertex is used and every triangle has area."""
    cross, area = face_normals(v, t)  # [T, 3] (length 2 * area), [T]
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, t[:, k], cross)  # area-weighted sum over the triangles around each vertex
    length = np.linalg.norm(n, axis=1)  # [V]
    weak = ~(length > 1e-9 * max(1.0, float(length.max(initial=0.0))))  # folds where the normals cancel
    if weak.any():  # the normal of each such vertex's largest triangle
        corner_vertex = t.reshape(-1)  # [3T] the vertex of each corner
        corner_face = np.repeat(np.arange(len(t)), 3)  # [3T] its triangle
        order = np.lexsort((area[corner_face], corner_vertex))  # by vertex, then by area (ascending)
        last = np.r_[corner_vertex[order][1:] != corner_vertex[order][:-1], True]  # each vertex's largest
        best = np.empty(len(v), np.int64)
        best[corner_vertex[order][last]] = corner_face[order][last]  # [V] (every vertex is used)
        n[weak] = cross[best[weak]]
        length = np.linalg.norm(n, axis=1)
    return n / length[:, None]


def repair_open3d(mesh):  # open3d TriangleMesh -> a new open3d TriangleMesh, repaired, with vertex normals
    """`repair_mesh` on an open3d mesh (its vertex colours kept)."""
    import open3d as o3d

    r = repair_mesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles),
                    np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None)
    out = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(r.vertices),
                                    o3d.utility.Vector3iVector(r.triangles.astype(np.int32)))
    if len(r.colors):
        out.vertex_colors = o3d.utility.Vector3dVector(r.colors)
    out.vertex_normals = o3d.utility.Vector3dVector(r.normals)
    return out
