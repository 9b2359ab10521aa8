"""Mesh (TSDF fusion) and turntable exports: files that other readers (open3d/assimp, imageio) load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steinsplat.export.errors import ExportError
from steinsplat.export.mesh import MeshConfig, export_mesh, glb_bytes, linear_to_srgb
from steinsplat.export.video import VideoConfig, export_video, write_video
from steinsplat.gaussians import Gaussians

RED = (0.85, 0.12, 0.10)


def red_ball(n: int = 1500) -> Gaussians:
    """Gaussians on a sphere of radius 0.35 (ShapeWorld's sphere), red."""
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    return Gaussians.from_points(0.35 * d, torch.tensor(RED).expand(n, 3), scale=0.025, opacity=0.95)


@pytest.fixture(scope="module")
def mesh_files(tmp_path_factory):
    import open3d as o3d

    from steinsplat.export.mesh import gaussians_to_mesh, write_mesh

    folder = tmp_path_factory.mktemp("mesh")
    mesh = gaussians_to_mesh(red_ball(), MeshConfig(views=9, resolution=64, voxel=0.015, max_triangles=5000))
    paths = {ext: folder / f"ball{ext}" for ext in (".ply", ".obj", ".glb")}
    for p in paths.values():
        write_mesh(p, mesh)
    return {ext: o3d.io.read_triangle_mesh(str(p)) for ext, p in paths.items()}, paths


@pytest.mark.parametrize("ext", [".ply", ".obj", ".glb"])
def test_mesh_is_the_sphere_with_its_colour(mesh_files, ext):
    meshes, paths = mesh_files
    m = meshes[ext]
    v = np.asarray(m.vertices)
    if ext == ".glb":  # glTF is +Y up: back to our +Z up
        v = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    assert 1000 < len(m.triangles) <= 5000
    r = np.linalg.norm(v, axis=1)
    assert abs(r.mean() - 0.36) < 0.02 and r.std() < 0.03  # the sphere (plus the splats' thickness)
    lo, hi = v.min(0), v.max(0)
    assert np.allclose((lo + hi) / 2, 0.0, atol=0.02) and np.allclose(hi - lo, 0.76, atol=0.05)  # centred, 2r across
    c = np.asarray(m.vertex_colors)
    if ext == ".glb":  # glTF's COLOR_0 is linear: back to our sRGB
        c = linear_to_srgb(c)
    assert np.allclose(c.mean(0), RED, atol=0.04)
    assert not list(paths[ext].parent.glob(".*"))  # no temporary files left behind


def test_glb_layout():
    import json
    import struct

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float64)
    data = glb_bytes(v, np.array([[0, 1, 2]]), np.full((3, 3), 0.5), np.tile([0.0, 0.0, 1.0], (3, 1)))
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert (magic, version, total) == (b"glTF", 2, len(data)) and total % 4 == 0
    jlen, jtype = struct.unpack("<I4s", data[12:20])
    doc = json.loads(data[20 : 20 + jlen])
    assert jtype == b"JSON" and doc["accessors"][0]["max"] == [1.0, 0.0, 0.0]  # +Y of ours became -Z
    assert doc["accessors"][0]["min"] == [0.0, 0.0, -1.0]


def test_mesh_errors(tmp_path):
    with pytest.raises(ExportError, match="unsupported extension"):
        export_mesh(tmp_path / "x.stl", red_ball(50))
    empty = Gaussians.from_points(torch.zeros(1, 3), scale=0.01, opacity=0.01)
    with pytest.raises(ExportError, match="no surface"):
        export_mesh(tmp_path / "x.ply", empty, MeshConfig(views=3, resolution=32, voxel=0.03))


@pytest.mark.parametrize("ext", [".gif", ".mp4"])
def test_turntable_reads_back(tmp_path, ext):
    import imageio.v3 as iio

    path = tmp_path / f"turn{ext}"
    n = export_video(path, red_ball(400), VideoConfig(frames=6, resolution=64, fps=10))
    frames = iio.imread(path, index=None)
    assert n == 6 and frames.shape[0] == 6 and frames.shape[1:3] == (64, 64)
    f0 = frames[0][..., :3].astype(int)
    assert (f0[0, 0] > 240).all()  # white background
    centre = f0[32, 32]
    assert centre[0] > 150 and centre[1] < 90  # the red ball in the middle


def test_video_errors(tmp_path):
    with pytest.raises(ExportError, match="unsupported extension"):
        write_video(tmp_path / "x.avi", np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ExportError, match="uint8"):
        write_video(tmp_path / "x.gif", np.zeros((2, 16, 16, 3), np.float32))


# ---------------------------------------------------------------------------- density-grid marching cubes
def one_gaussian(scales, quat=(1.0, 0.0, 0.0, 0.0), opacity: float = 0.9) -> Gaussians:
    o = torch.tensor([opacity])
    return Gaussians(torch.zeros(1, 3), torch.tensor([scales]).log(), torch.tensor([quat]), torch.log(o / (1 - o)),
                     torch.zeros(1, 1, 3))


def test_density_single_gaussian_is_the_analytic_sphere():
    from steinsplat.export.mesh import gaussians_to_mesh

    sigma, o, level, voxel = 0.1, 0.9, 0.3, 0.01
    m = gaussians_to_mesh(one_gaussian([sigma] * 3, opacity=o), MeshConfig(method="density", level=level, voxel=voxel))
    v, n = np.asarray(m.vertices), np.asarray(m.vertex_normals)  # [V, 3]
    r = np.linalg.norm(v, axis=1)
    expected = sigma * np.sqrt(2 * np.log(o / level))  # 0.148: where o exp(-r^2 / 2 sigma^2) = level
    assert abs(r.mean() - expected) < voxel and r.max() - r.min() < voxel
    assert ((n * v).sum(1) > 0.9 * r).all()  # unit normals point outwards
    assert m.is_edge_manifold(allow_boundary_edges=False) and m.is_vertex_manifold()  # closed


def test_density_rotated_gaussian_is_its_ellipsoid():
    from steinsplat.export.mesh import gaussians_to_mesh
    from steinsplat.gaussians import quat_to_rotmat

    scales, o, level = torch.tensor([0.15, 0.06, 0.03]), 0.8, 0.2
    q = torch.nn.functional.normalize(torch.tensor([0.9, 0.3, -0.2, 0.25]), dim=0)
    m = gaussians_to_mesh(one_gaussian(scales.tolist(), q.tolist(), o), MeshConfig(method="density", level=level, voxel=0.005))
    local = np.asarray(m.vertices) @ quat_to_rotmat(q).numpy()  # [V, 3] coordinates along the Gaussian's axes
    semi = scales.numpy() * np.sqrt(2 * np.log(o / level))  # semi-axes of the iso-ellipsoid
    assert np.allclose(np.abs(local).max(0), semi, atol=0.006)
    assert np.abs(np.linalg.norm(local / semi, axis=1) - 1).max() < 0.12  # every vertex on the ellipsoid


def red_shell(n: int = 800) -> Gaussians:
    """Gaussians (sigma 2.5 cm) evenly on a sphere of radius 0.35 (a Fibonacci lattice): a closed, hollow shell."""
    k = torch.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = k * np.pi * (3 - np.sqrt(5))
    d = torch.stack([(1 - z * z).sqrt() * phi.cos(), (1 - z * z).sqrt() * phi.sin(), z], 1)  # [n, 3]
    return Gaussians.from_points(0.35 * d, torch.tensor(RED).expand(n, 3), scale=0.025, opacity=0.95)


@pytest.mark.parametrize("ext", [".ply", ".obj", ".glb"])
def test_density_mesh_of_a_shell_reads_back(tmp_path, ext):
    import open3d as o3d

    path = tmp_path / f"ball{ext}"
    n = export_mesh(path, red_shell(), MeshConfig(method="density", voxel=0.02, level=0.5))
    m = o3d.io.read_triangle_mesh(str(path))
    v = np.asarray(m.vertices)
    if ext == ".glb":  # glTF is +Y up: back to our +Z up
        v = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    assert len(m.triangles) == n > 1000
    # a sheet of density 800 / (4 pi 0.35^2) per m^2 of Gaussians (0.95, sigma) has density 1.94 exp(-h^2 / 2 sigma^2)
    # at a distance h: the level 0.5 is h = 0.041 outside (and inside, but the hollow inside is filled)
    r = np.linalg.norm(v, axis=1)
    assert abs(r.mean() - 0.391) < 0.01 and r.min() > 0.37 and r.max() < 0.41
    c = np.asarray(m.vertex_colors)
    assert np.allclose((linear_to_srgb(c) if ext == ".glb" else c).mean(0), RED, atol=0.02)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_density_mesh_errors(tmp_path):
    ball = red_ball(50)  # opacity 0.95
    for level in (0.0, -1.0, 0.95, 2.0):
        with pytest.raises(ExportError, match="level .* outside"):
            export_mesh(tmp_path / "x.ply", ball, MeshConfig(method="density", level=level))
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 1, 3))
    with pytest.raises(ExportError, match="empty set of Gaussians"):
        export_mesh(tmp_path / "x.ply", empty, MeshConfig(method="density"))
    with pytest.raises(ExportError, match="unknown mesh method"):
        export_mesh(tmp_path / "x.ply", ball, MeshConfig(method="marching"))  # type: ignore[arg-type]
    far = Gaussians.from_points(torch.tensor([[5.0, 0.0, 0.0]]), scale=0.01, opacity=0.9)
    with pytest.raises(ExportError, match="outside the object volume"):
        export_mesh(tmp_path / "x.ply", far, MeshConfig(method="density"))
    assert not (tmp_path / "x.ply").exists()
