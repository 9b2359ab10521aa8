"""Meshes from Gaussians, with vertex colours: TSDF fusion of rendered RGB-D views (open3d, the
default `method="tsdf"`) or marching cubes on the Gaussians' density grid (`method="density"`, in
`density_mesh.py`); both share the cleanup (small pieces, decimation) and the writers.
Which is better (benchmarks/mesh_quality.py, 7 ShapeWorld objects): on generated splats the density
mesh is closer to the ground truth (chamfer 37 mm at level 0.5, 34 mm at 0.3, vs 44 mm; F@2cm 0.24 /
0.34 vs 0.22) and always watertight (7/7 vs 0/7); on a clean, dense shell of splats on the true surface
TSDF is closer (16 vs 26 mm), because the iso-surface of a dense shell lies outside it by
sigma * sqrt(2 ln(sheet density / level)). Mixed, so TSDF stays the default.

TSDF steps:
  1. render the Gaussians from `views` orbit cameras around the object (or inside-out views of a
     scene) at `resolution`, with expected depth and alpha;
  2. keep depth only where alpha > `alpha_threshold` (elsewhere 0 = no measurement) and un-premultiply
     the colour there;
  3. integrate every view into an open3d `UniformTSDFVolume` (voxel size `voxel`, truncation
     `trunc_voxels * voxel`), with our world-to-camera matrices as open3d's extrinsics (the same
     OpenCV convention) and our K as the pinhole intrinsics;
  4. extract the zero level set with marching cubes (vertex colours from the fused colour), drop
     small disconnected pieces, and write .ply / .obj / .glb atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, inside_out_cameras, orbit_cameras
from ..gaussians import Gaussians
from .colour import linear_to_srgb, srgb_to_linear  # noqa: F401 (linear_to_srgb: for readers of our .glb)
from .errors import ExportError
from .mesh_config import MESH_EXTENSIONS, MeshConfig  # also imported from here


def fusion_cameras(cfg: MeshConfig) -> Cameras:
    """Views that cover an object from all around (three elevation rings) or a room from its centre."""
    n, r = cfg.views, cfg.resolution
    if cfg.mode == "scene":
        yaw = torch.arange(n) * (360.0 / n)
        pitch = torch.tensor([-30.0, 0.0, 30.0]).repeat((n + 2) // 3)[:n]
        return inside_out_cameras(yaw, pitch, fovy=60.0, width=r, height=r)
    el = torch.tensor([-20.0, 20.0, 60.0]).repeat((n + 2) // 3)[:n]
    az = torch.arange(n) * (360.0 / n)
    return orbit_cameras(el, az, 1.8, fovy=40.0, width=r, height=r)


@torch.no_grad()
def gaussians_to_mesh(gaussians: Gaussians, cfg: MeshConfig | None = None):  # -> open3d.geometry.TriangleMesh
    """The cleaned-up, coloured mesh of `gaussians` by `cfg.method`."""
    cfg = cfg or MeshConfig()
    if cfg.method == "tsdf":
        mesh = tsdf_mesh(gaussians, cfg)
    elif cfg.method == "density":
        from .density_mesh import density_mesh

        mesh = density_mesh(gaussians, cfg)
    else:
        raise ExportError(f"unknown mesh method {cfg.method!r}; use 'tsdf' or 'density'")
    return cleanup(mesh, cfg)


@torch.no_grad()
def tsdf_mesh(gaussians: Gaussians, cfg: MeshConfig):  # -> open3d.geometry.TriangleMesh (before cleanup)
    import open3d as o3d

    from ..render import render

    cams = fusion_cameras(cfg).to(gaussians.device)
    # a uniform cube of voxels around the content (open3d 0.20's ScalableTSDFVolume integrates nothing
    # from float depth images, checked on a flat synthetic depth map; the uniform volume does)
    lo, size = (np.array([-0.6, -0.6, -0.6]), 1.2) if cfg.mode == "object" else (np.array([-2.1, -2.1, -0.85]), 4.2)
    voxel = cfg.voxel if cfg.mode == "object" else max(cfg.voxel, 0.02)
    vol = o3d.pipelines.integration.UniformTSDFVolume(
        length=size, resolution=int(round(size / voxel)), sdf_trunc=cfg.trunc_voxels * voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8, origin=lo,
    )
    for i in range(len(cams)):
        cam = cams[i]
        out = render(gaussians, cam)  # transparent background: rgb is premultiplied
        alpha = out.alpha[0, ..., 0]  # [H, W]
        ok = alpha > cfg.alpha_threshold
        rgb = torch.where(ok[..., None], out.rgb[0] / alpha.clamp_min(1e-6)[..., None], torch.zeros_like(out.rgb[0]))
        depth = torch.where(ok, out.depth[0, ..., 0], torch.zeros_like(alpha))  # [H, W] metres, 0 = none
        color_img = o3d.geometry.Image(np.ascontiguousarray((rgb.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)))
        depth_img = o3d.geometry.Image(np.ascontiguousarray(depth.cpu().numpy().astype(np.float32)))
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            color_img, depth_img, depth_scale=1.0, depth_trunc=1e3, convert_rgb_to_intensity=False
        )
        K = cam.Ks[0].cpu().numpy().astype(np.float64)
        intr = o3d.camera.PinholeCameraIntrinsic(cfg.resolution, cfg.resolution, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        vol.integrate(rgbd, intr, cam.viewmats[0].cpu().numpy().astype(np.float64))
    mesh = vol.extract_triangle_mesh()
    if len(mesh.triangles) == 0:
        raise ExportError(
            "the TSDF fusion produced no surface: the Gaussians render (almost) transparent from every view; "
            "check the input or lower alpha_threshold"
        )
    return mesh


def cleanup(mesh, cfg: MeshConfig):  # open3d TriangleMesh -> the same, cleaned
    """Drop floaters (pieces much smaller than the largest), decimate above `max_triangles`, then remove
    degenerate triangles and unused vertices and add unit normals (`mesh_repair.py`)."""
    # 4. drop floaters: connected components much smaller than the largest
    labels, counts, _ = mesh.cluster_connected_triangles()
    labels, counts = np.asarray(labels), np.asarray(counts)
    small = counts[labels] < cfg.min_component_fraction * counts.max()
    mesh.remove_triangles_by_mask(small)
    mesh.remove_unreferenced_vertices()
    if cfg.max_triangles and len(mesh.triangles) > cfg.max_triangles:
        mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=cfg.max_triangles)
    # 5. what decimation leaves behind: unused vertices (open3d gives them zero normals), triangles without area
    from .mesh_repair import repair_open3d

    return repair_open3d(mesh)


MESH_MATERIAL = {
    # The vertex colours are the splats' appearance as rendered (lighting baked in), not an albedo to light again:
    # KHR_materials_unlit shows them as they are; a reader without it falls back to a rough dielectric (glTF's
    # default material would be fully metallic, which is black without an environment map).
    "name": "vertex colour: baked appearance, unlit",
    "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0},
    "extensions": {"KHR_materials_unlit": {}},
    "extras": {"vertexColors": "COLOR_0 holds the colour steinsplat renders for each vertex (display sRGB), decoded "
                               "to linear as glTF's COLOR_0 is; with the unlit material a viewer shows it unchanged"},
}


def glb_bytes(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray, normals: np.ndarray) -> bytes:
    """A binary glTF 2.0 file of one triangle mesh with vertex colours and normals, which Khronos's
    glTF-Validator accepts without errors (tests/test_gltf.py runs it): pass a mesh from `mesh_repair.repair_mesh`
    (every vertex used, unit normals; refused otherwise).

    glTF is +Y up and ours is +Z up, so positions and normals are rotated: (x, y, z) -> (x, z, -y).
    Colours: ours are display sRGB in [0, 1]; COLOR_0 is linear, so they are decoded; the material (MESH_MATERIAL)
    is unlit. Layout (`glb.py`): the GLB header, a JSON chunk and a BIN chunk holding positions, normals, colours
    (float32 VEC3) and uint32 indices.
    """
    from .. import __version__
    from .glb import BinaryBuilder, pack_glb

    def up(a: np.ndarray) -> np.ndarray:
        return np.stack([a[:, 0], a[:, 2], -a[:, 1]], 1)

    length = np.linalg.norm(np.asarray(normals, np.float64), axis=1)
    if len(vertices) == 0 or len(triangles) == 0 or not (np.abs(length - 1.0) < 1e-4).all() \
            or not np.isfinite(vertices).all():
        raise ExportError("glb_bytes: the mesh has no triangles, non-finite positions or normals that are not unit "
                          "vectors; pass it through steinsplat.export.mesh_repair.repair_mesh first")
    b = BinaryBuilder()
    attributes = {"POSITION": b.add(up(vertices), "VEC3", min_max=True), "NORMAL": b.add(up(normals), "VEC3"),
                  "COLOR_0": b.add(srgb_to_linear(np.asarray(colors, np.float64)), "VEC3")}
    indices = b.add(np.asarray(triangles).reshape(-1), "SCALAR", component=5125, target=34963)  # uint32, index buffer
    doc = {
        "asset": {"version": "2.0", "generator": f"steinsplat {__version__}"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": attributes, "indices": indices, "mode": 4, "material": 0}]}],
        "materials": [MESH_MATERIAL],
        "bufferViews": b.views,
        "accessors": b.accessors,
    }
    return pack_glb(doc, b.binary())


def write_mesh(path: str | Path, mesh, up: str = "z") -> int:
    """Write an open3d TriangleMesh to .ply / .obj / .glb atomically; returns the triangle count.

    The mesh is repaired first (`mesh_repair.py`: no degenerate or repeated triangles, no unused vertices, unit
    normals), so every file is one that strict readers (glTF-Validator, engines) accept. up: the up axis of a
    .ply / .obj ("z" ours, "y", "-y": vertices and normals rotated, `axes.py`); a .glb is +Y up whatever it says.
    """
    import open3d as o3d

    from .atomic import atomic_path, atomic_write_bytes
    from .mesh_repair import repair_open3d

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise ExportError(f"cannot write a mesh to '{path}': unsupported extension '{ext}'; use one of "
                          f"{', '.join(MESH_EXTENSIONS)}")
    if path.name.lower().endswith(".splats.glb"):
        raise ExportError(f"cannot write a mesh to '{path}': NAME.splats.glb means Gaussians as glTF "
                          "(KHR_gaussian_splatting) here; name the mesh NAME.glb")
    mesh = repair_open3d(mesh)
    if ext == ".glb":  # open3d 0.20 writes .glb files that it (assimp) cannot read back: our own writer
        colors = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.ones((len(mesh.vertices), 3))
        atomic_write_bytes(path, glb_bytes(np.asarray(mesh.vertices), np.asarray(mesh.triangles), colors,
                                           np.asarray(mesh.vertex_normals)))
        return len(mesh.triangles)
    if up != "z":
        from .axes import up_rotation

        R = up_rotation(up)
        mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) @ R.T)
        mesh.vertex_normals = o3d.utility.Vector3dVector(np.asarray(mesh.vertex_normals) @ R.T)
    with atomic_path(path) as tmp:  # open3d writes by file name (and picks the format from the extension)
        ok = o3d.io.write_triangle_mesh(str(tmp), mesh, write_vertex_colors=True, write_vertex_normals=True,
                                        write_ascii=False)
        if not ok:
            raise ExportError(f"open3d could not write '{path}'")
        if ext == ".obj":  # open3d writes the material beside the .obj under the temporary name
            _fix_obj_material(tmp, path)
    return len(mesh.triangles)


def _fix_obj_material(tmp: Path, final: Path) -> None:
    mtl_tmp = tmp.with_suffix(".mtl")
    if not mtl_tmp.exists():
        return
    text = tmp.read_text()
    tmp.write_text(text.replace(mtl_tmp.name, final.with_suffix(".mtl").name))
    os.replace(mtl_tmp, final.with_suffix(".mtl"))


def export_mesh(path: str | Path, gaussians: Gaussians, cfg: MeshConfig | None = None) -> int:
    cfg = cfg or MeshConfig()
    return write_mesh(path, gaussians_to_mesh(gaussians, cfg), up=cfg.up)
