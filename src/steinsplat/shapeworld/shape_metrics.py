"""Metrics that see shape: what the first metrics (mask IoU from elevation 20, R-precision) missed.

A prior that ignores azimuth turns a cube into a drum (its solid of revolution) that still scores
0.89 mask IoU at elevation 20. These measures tell a cube from a drum:

- **top-view IoU**: mask IoU from straight above (elevation 90, d 1.8, fovy 40): a square against a disc;
- **low-view IoU**: mask IoU at elevation 0, az 0, 45, ..., 315: a cube seen edge-on (az 45) is
  sqrt(2) times as wide as face-on, a drum the same from everywhere;
- **3D IoU** of occupied volumes on a voxel grid (the box [-0.6, 0.6]^3 sampled every `voxel` metres):
  generated = the object's visual hull, the samples that project inside the rendered mask
  (alpha > 0.5, interpolated) in every one of the carving views (el -45, 0, 45 every 30 degrees of az, and straight
  above and below); true = inside the ground-truth mesh (open3d occupancy). Carving sees what a
  viewer sees (a halo of faint splats that renders opaque counts; splats hidden inside do not), and
  every ShapeWorld object but the torus is convex, whose hole the top and bottom views carve;
  (the summed density of the splats was tried first: generated objects are many faint splats,
  median opacity 0.08, whose density stays under any one iso-level inside the object);
- **chamfer distance** (mm) between the generated surface (marching cubes of the hull) and the
  true mesh, point to surface both ways: 0.5 (mean over A's area samples of dist(a, B) + the same from B);
- **shape confusion**: the classifier's shape votes over views where the look-alike shapes differ
  (elevation 0 and 60 at the diagonal azimuths 45, 135, 225, 315: cube edge-on vs cylinder,
  pyramid's diagonal ridge vs cone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras, orbit_cameras
from ..gaussians import Gaussians
from .vocab import COLOUR_NAMES, SHAPE_NAMES, ObjectPrompt, OpenPrompt, Prompt, as_prompt
from .groundtruth import _scene, render_gt  # _scene: the cached ray-casting scene of a shape
from .image_metrics import mask_iou
from .world import world_mesh

VOXEL = 0.015  # metres between grid samples (the 1.2 m object box: 81^3 samples)
LEVEL = 0.5  # density iso-level at which the reference cloud of `gaussians_from_solid` ends
CARVE_SIZE = 128  # carving views' image side (pixels of 10 mm at the object)
CARVE_DISTANCE = 30.0  # metres: nearly orthographic views (perspective carving leaves a box's faces bulging by cm)
CARVE_FOVY = 2.0 * math.degrees(math.atan(0.65 / CARVE_DISTANCE))  # the image spans 1.3 m at the object
CARVE_ELEVATIONS = (-45.0, 0.0, 45.0)
CARVE_AZIMUTHS = tuple(30.0 * k for k in range(12))
BOX_LO, BOX_EDGE = -0.6, 1.2  # the object volume (metres), as the mesh export's
SURFACE_SAMPLES = 20000  # area samples per surface for the chamfer distance
TOP_ELEVATION = 90.0
LOW_ELEVATION = 0.0
DIAGONAL_AZIMUTHS = (45.0, 135.0, 225.0, 315.0)
CONFUSION_ELEVATIONS = (0.0, 60.0)


# ---------------------------------------------------------------------------- cameras
def top_cameras(width: int = 64, height: int = 64) -> Cameras:
    """One camera straight above the object (elevation 90, az 0, d 1.8, fovy 40); the image's in-plane
    rotation is whatever `look_at` picks there, the same for prediction and ground truth."""
    return orbit_cameras([TOP_ELEVATION], [0.0], 1.8, width=width, height=height)


def low_cameras(width: int = 64, height: int = 64) -> Cameras:
    """Eight cameras at elevation 0, az 0, 45, ..., 315, d 1.8, fovy 40."""
    az = [45.0 * k for k in range(8)]
    return orbit_cameras([LOW_ELEVATION] * 8, az, 1.8, width=width, height=height)


def confusion_cameras(width: int = 64, height: int = 64) -> Cameras:
    """Views where cube/cylinder and pyramid/cone differ most inside the classifier's training range:
    elevations 0 and 60 at the diagonal azimuths (8 cameras)."""
    el = [e for e in CONFUSION_ELEVATIONS for _ in DIAGONAL_AZIMUTHS]
    az = [a for _ in CONFUSION_ELEVATIONS for a in DIAGONAL_AZIMUTHS]
    return orbit_cameras(el, az, 1.8, width=width, height=height)


def carving_cameras(size: int = CARVE_SIZE) -> Cameras:
    """The visual hull's views: el -45, 0, 45 at az 0, 30, ..., 330, plus el +-90 (38 cameras), far away
    with a narrow field of view (nearly orthographic: a perspective view's silhouette cone widens
    behind the object, and the intersection of such cones leaves a box's faces bulging)."""
    el = [e for e in CARVE_ELEVATIONS for _ in CARVE_AZIMUTHS] + [90.0, -90.0]
    az = [a for _ in CARVE_ELEVATIONS for a in CARVE_AZIMUTHS] + [0.0, 0.0]
    return orbit_cameras(el, az, CARVE_DISTANCE, fovy=CARVE_FOVY, width=size, height=size)


# ---------------------------------------------------------------------------- volumes
def grid_points(voxel: float = VOXEL) -> tuple[np.ndarray, int]:
    """Sample points [n^3, 3] (x-major, then y, then z) of the object box, and n."""
    n = int(round(BOX_EDGE / voxel)) + 1
    ax = BOX_LO + voxel * np.arange(n, dtype=np.float64)
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return pts.astype(np.float32), n


@lru_cache(maxsize=16)
def true_occupancy(shape: str, voxel: float = VOXEL) -> np.ndarray:
    """bool [n, n, n]: grid samples inside the ground-truth solid of `shape`."""
    import open3d as o3d

    pts, n = grid_points(voxel)
    occ = _scene(shape).compute_occupancy(o3d.core.Tensor(pts), nsamples=3).numpy() > 0.5
    return occ.reshape(n, n, n)


RIG_CHUNK = 2  # cameras per render call: the CPU rasteriser is pair-bound, and calls of more than ~2-4 views run
# slower per pair (2-core machine: the demo cube's 38 carving views 1.4 s in calls of 1-2, 1.9 s of 8, 2.9 s in
# one call; its 25 64^2 evaluation views 0.41 s in calls of 2, 0.49 s of 8, 0.62 s in one)


@torch.no_grad()
def render_views(gaussians: Gaussians, rigs: dict[str, Cameras], backend: str = "torch",
                 chunk: int = RIG_CHUNK) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """{rig name: (rgb [B, H, W, 3], alpha [B, H, W, 1], depth [B, H, W, 1])} of every rig (white background,
    CPU float32): the rigs of one image size are concatenated and rendered `chunk` cameras a call."""
    from ..render import render

    out: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    sizes = dict.fromkeys((c.width, c.height) for c in rigs.values())
    for size in sizes:
        names = [n for n, c in rigs.items() if (c.width, c.height) == size]
        cams = Cameras.cat([rigs[n] for n in names])
        parts = [render(gaussians, cams[torch.arange(lo, min(lo + chunk, len(cams)))], background=(1.0, 1.0, 1.0),
                        backend=backend) for lo in range(0, len(cams), chunk)]  # type: ignore[arg-type]
        rgb, alpha, depth = (torch.cat([getattr(o, k).detach().float().cpu() for o in parts])
                             for k in ("rgb", "alpha", "depth"))
        lo = 0
        for n in names:
            hi = lo + len(rigs[n])
            out[n] = (rgb[lo:hi], alpha[lo:hi], depth[lo:hi])
            lo = hi
    return out


def _inside_view(p: Tensor, alpha: Tensor, V: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """[P] bool: points p [P, 3] (float64) in front of a camera (V [4, 4], K [3, 3], float64) whose projection
    sees alpha [1, 1, H, W] above 0.5, bilinear at the projection (pixel centres at +0.5: a sub-pixel boundary)."""
    xc = p @ V[:3, :3].T + V[:3, 3]  # [P, 3] camera frame
    uv = xc @ K.T  # [P, 3]
    z = uv[:, 2].clamp_min(1e-9)
    gx = (uv[:, 0] / z) / width * 2 - 1
    gy = (uv[:, 1] / z) / height * 2 - 1
    grid = torch.stack([gx, gy], -1).float().view(1, 1, -1, 2)
    a = torch.nn.functional.grid_sample(alpha, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False).view(-1)  # [P]
    return (a > 0.5) & (xc[:, 2] > 1e-6)


@torch.no_grad()
def carved_occupancy(gaussians: Gaussians, backend: str = "torch", voxel: float = VOXEL, chunk: int = 2) -> np.ndarray:
    """bool [n, n, n]: the grid samples where the rendered alpha (bilinear at their projection) exceeds 0.5
    in every carving view. Each view tests only the samples that every earlier view kept (the same grid,
    a fraction of the work once the first views have carved the empty space away)."""
    from ..render import render

    pts, n = grid_points(voxel)
    p = torch.from_numpy(pts).double()  # [P, 3]
    cams = carving_cameras()
    if gaussians.num == 0:
        return np.zeros((n, n, n), bool)
    alive = torch.arange(len(p))  # [A] indices of the samples still inside the hull
    for lo in range(0, len(cams), chunk):
        sub = cams[torch.arange(lo, min(lo + chunk, len(cams)))]
        alpha = render(gaussians, sub, background=(1.0, 1.0, 1.0), backend=backend).alpha  # type: ignore[arg-type]
        alpha = alpha.detach().float().cpu().permute(0, 3, 1, 2)  # [b, 1, H, W]
        for v in range(len(sub)):
            keep = _inside_view(p[alive], alpha[v: v + 1], sub.viewmats[v].double().cpu(), sub.Ks[v].double().cpu(),
                                sub.width, sub.height)
            alive = alive[keep]
    occ = torch.zeros(len(p), dtype=torch.bool)
    occ[alive] = True
    return occ.reshape(n, n, n).numpy()


def iou_3d(occ_pred: np.ndarray, occ_true: np.ndarray) -> float:
    """|pred & true| / |pred | true| of two bool grids (1.0 when both are empty)."""
    if occ_pred.shape != occ_true.shape:
        raise ValueError(f"iou_3d: grids differ, {occ_pred.shape} vs {occ_true.shape}")
    union = int((occ_pred | occ_true).sum())
    return float((occ_pred & occ_true).sum() / union) if union else 1.0


def surface_of(occ: np.ndarray, voxel: float = VOXEL) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] (metres) and triangles [T, 3] of an occupancy grid's boundary (marching cubes at
    0.5 of the 0/1 grid, padded so the surface closes; both empty for an empty grid)."""
    from skimage.measure import marching_cubes

    if not occ.any():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    verts, faces, _, _ = marching_cubes(np.pad(occ.astype(np.float32), 1), level=0.5, spacing=(voxel,) * 3)
    return verts + (BOX_LO - voxel), faces


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, num: int = SURFACE_SAMPLES, seed: int = 0) -> np.ndarray:
    """[num, 3] points uniform by area on a triangle mesh (a fixed seed: the same points every call)."""
    v, t = np.asarray(vertices, np.float64), np.asarray(triangles)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(t), size=num, p=area / area.sum())
    r1, r2 = rng.random(num), rng.random(num)
    s = np.sqrt(r1)  # uniform barycentrics: (1 - s, s (1 - r2), s r2)
    return (1 - s)[:, None] * a[tri] + (s * (1 - r2))[:, None] * b[tri] + (s * r2)[:, None] * c[tri]


def _distance_to_mesh(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unsigned distance [P] from each point to the nearest point of a triangle mesh (open3d)."""
    import open3d as o3d

    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(vertices, np.float32))
    mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(triangles, np.int32))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh)
    return scene.compute_distance(o3d.core.Tensor(np.ascontiguousarray(points, np.float32))).numpy()


def chamfer_mm(mesh_a: tuple[np.ndarray, np.ndarray], mesh_b: tuple[np.ndarray, np.ndarray],
               num: int = SURFACE_SAMPLES) -> float:
    """Symmetric point-to-surface chamfer distance in millimetres between two triangle meshes
    (vertices, triangles): 0.5 (mean distance of A's area samples to B + the same from B to A);
    inf if a mesh is empty."""
    if len(mesh_a[1]) == 0 or len(mesh_b[1]) == 0:
        return float("inf")
    d_ab = _distance_to_mesh(sample_surface(*mesh_a, num), *mesh_b)
    d_ba = _distance_to_mesh(sample_surface(*mesh_b, num), *mesh_a)
    return float(500.0 * (d_ab.mean() + d_ba.mean()))


def true_mesh(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth surface of `shape` as (vertices [V, 3], triangles [T, 3])."""
    m = world_mesh(shape)
    return np.asarray(m.vertices), np.asarray(m.triangles)


# ---------------------------------------------------------------------------- all of them
@dataclass
class ShapeScores:
    top_iou: float  # mask IoU from above (elevation 90), higher is better
    low_iou: float  # mask IoU at elevation 0 over 8 azimuths, higher is better
    iou_3d: float  # voxel IoU of occupied volumes, higher is better
    chamfer_mm: float  # symmetric chamfer distance of the surfaces (mm), lower is better
    shape_votes: dict  # {shape: share} of the classifier's shape calls over the confusion views


def shape_rigs(width: int = 64, height: int = 64) -> dict[str, Cameras]:
    """The shape measures' 2D rigs by name: top (1 view), low (8), confusion (8)."""
    return {"top": top_cameras(width, height), "low": low_cameras(width, height),
            "confusion": confusion_cameras(width, height)}


@lru_cache(maxsize=64)
def rig_gt_alpha(shape: str, rig: str) -> Tensor:
    """Ground-truth alpha [B, H, W, 1] of a shape from the top or low rig (cached: alpha has no colour)."""
    return render_gt(ObjectPrompt(COLOUR_NAMES[0], shape), shape_rigs()[rig]).alpha


@torch.no_grad()
def shape_votes(g: Gaussians, classifier=None, backend: str = "torch", rgb: Optional[Tensor] = None) -> dict[str, float]:
    """The classifier's shape calls over the confusion views: shape name -> share of views ({} without one).
    rgb: the confusion views [8, H, W, 3] (white background) if already rendered."""
    if classifier is None:
        return {}
    if rgb is None:
        rgb = render_views(g, {"confusion": confusion_cameras()}, backend)["confusion"][0]
    ids = classifier.classify(rgb.clamp(0, 1)).shape_ids.tolist()
    return {SHAPE_NAMES[i]: ids.count(i) / len(ids) for i in sorted(set(ids))}


@torch.no_grad()
def shape_scores(gaussians: Gaussians, prompt: str | Prompt | OpenPrompt, backend: str = "torch", classifier=None,
                 voxel: float = VOXEL, views: Optional[dict] = None) -> "ShapeScores":
    """The shape-aware metrics of `gaussians` against the ground truth of an object prompt. An open
    prompt ("a red shape") has a set of shapes: `metrics.shape_scores` scores it with
    `set_metrics.set_shape_scores`. views: `render_views` of `shape_rigs()` if the caller rendered them
    with its own (one batch of calls for every rig)."""
    p = as_prompt(prompt)
    if isinstance(p, OpenPrompt):
        raise ValueError(f"'{p}' is an open prompt (a set of shapes); "
                         "score it with steinsplat.shapeworld.metrics.shape_scores, which handles both")
    if not isinstance(p, ObjectPrompt):
        raise ValueError("shape metrics are defined for objects; rooms have their depth error")
    g = gaussians  # rendered where they live (Gaussians is a Module: .to() would move the caller's in place)
    views = views if views is not None else render_views(g, shape_rigs(), backend)
    occ = carved_occupancy(g, backend, voxel)
    return ShapeScores(
        top_iou=mask_iou(views["top"][1], rig_gt_alpha(p.shape, "top")),
        low_iou=mask_iou(views["low"][1], rig_gt_alpha(p.shape, "low")),
        iou_3d=iou_3d(occ, true_occupancy(p.shape, voxel)),
        chamfer_mm=chamfer_mm(surface_of(occ, voxel), true_mesh(p.shape)),
        shape_votes=shape_votes(g, classifier, backend, rgb=views["confusion"][0]),
    )


def gaussians_from_solid(shape: str, spacing: float = 0.015, opacity: float = 0.9,
                         colour: Optional[tuple[float, float, float]] = None) -> Gaussians:
    """A reference cloud for tests: isotropic Gaussians on a regular grid of `spacing` filling the
    ground-truth solid, std sigma = 0.6 spacing, kept only where the grid point lies at least
    `inset` inside the surface. Far inside, their density is D0 = o (2 pi)^(3/2) (sigma / spacing)^3
    (~3 here); across a flat boundary of the points it falls as D0 Phi(-x / sigma), so it crosses
    LEVEL at x = sigma Phi^-1(1 - LEVEL / D0) outside the last points: that is the inset, and the
    cloud's iso-surface lies on the true surface (its renders come out about a pixel fat: alpha adds
    up along the ray). It should score near 1 / a few mm against its own shape."""
    import open3d as o3d

    sigma = 0.6 * spacing
    d0 = opacity * (2 * math.pi) ** 1.5 * (sigma / spacing) ** 3
    inset = sigma * float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - LEVEL / d0)))
    ax = np.arange(-0.5, 0.5 + 1e-9, spacing, dtype=np.float32)
    cand = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    sdf = _scene(shape).compute_signed_distance(o3d.core.Tensor(cand), nsamples=3).numpy()  # < 0 inside
    means = torch.from_numpy(cand[sdf < -inset])
    rgb = torch.tensor(colour or (0.5, 0.5, 0.5)).expand(len(means), 3)
    return Gaussians.from_points(means, rgb, scale=sigma, opacity=opacity)
