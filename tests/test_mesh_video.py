"""Mesh (TSDF fusion) and turntable exports: files that other readers (open3d/assimp, imageio) load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steinsplat.export.errors import ExportError
from steinsplat.export.mesh import MeshConfig, export_mesh, glb_bytes
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
    c = np.asarray(m.vertex_colors).mean(0)
    assert np.allclose(c, RED, atol=0.04)
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
