"""Our glTF files in Khronos's glTF-Validator (tests/gltf_validator.py): every mesh we write has no errors or
warnings (no zero-length normals, no degenerate triangles, a material saying what the vertex colours are)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gltf_validator import codes, validate
from steinsplat.export.mesh import MeshConfig, gaussians_to_mesh, linear_to_srgb, write_mesh
from steinsplat.export.mesh_repair import repair_mesh
from steinsplat.gaussians import Gaussians

RED = (0.85, 0.12, 0.10)


def glb_json(path: Path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[12:16])
    return json.loads(data[20 : 20 + length])


def red_ball(n: int = 1500) -> Gaussians:
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    return Gaussians.from_points(0.35 * d, torch.tensor(RED).expand(n, 3), scale=0.025, opacity=0.95)


# ---------------------------------------------------------------------------- the repair itself
def test_repair_removes_what_strict_readers_refuse() -> None:
    """An unused vertex, a triangle with a repeated corner, a collinear (zero-area) one, a repeated one and one
    with a NaN corner are removed; what is left has unit normals, pointing outwards on a closed tetrahedron."""
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],  # a tetrahedron
                  [5, 5, 5],  # used by no triangle
                  [0.5, 0, 0],  # on the edge 0-1: the triangle (0, 1, 5) has no area
                  [np.nan, 0, 0]], np.float64)
    t = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3],  # outward (counter-clockwise seen from outside)
                  [0, 0, 1], [0, 1, 5], [1, 2, 3], [3, 1, 2], [0, 1, 6]])
    c = np.tile([0.2, 0.4, 0.6], (len(v), 1))
    r = repair_mesh(v, t, c)
    assert len(r.triangles) == 4 and len(r.vertices) == 4 and r.dropped_triangles == 5 and r.dropped_vertices == 3
    assert np.allclose(np.linalg.norm(r.normals, axis=1), 1.0)
    centre = r.vertices.mean(0)
    assert ((r.normals * (r.vertices - centre)).sum(1) > 0).all()
    assert r.colors.shape == (4, 3)


def test_repair_gives_a_fold_vertex_a_normal() -> None:
    """Two triangles of equal area folded flat onto each other (normals +z and -z) cancel at their shared
    vertices 0 and 1: those get the normal of one of their triangles, not zero."""
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float64)
    t = np.array([[0, 1, 2], [0, 3, 1]])  # normals +z and -z, area 0.5 each
    r = repair_mesh(v, t)
    assert np.allclose(np.abs(r.normals[:, 2]), 1.0)
    assert np.allclose(r.normals[2], [0, 0, 1]) and np.allclose(r.normals[3], [0, 0, -1])


# ---------------------------------------------------------------------------- the validator on our meshes
@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict[str, Path]:
    """A TSDF mesh decimated hard (decimation leaves unused vertices: before the repair, 19 zero normals here)
    and a density mesh, each as .glb, .ply and .obj."""
    from test_mesh_video import red_shell

    folder = tmp_path_factory.mktemp("gltf-mesh")
    made = {
        "tsdf": gaussians_to_mesh(red_ball(), MeshConfig(views=9, resolution=64, voxel=0.01, max_triangles=2000)),
        "density": gaussians_to_mesh(red_shell(), MeshConfig(method="density", voxel=0.02, level=0.5,
                                                             max_triangles=1500)),
    }
    paths = {}
    for name, mesh in made.items():
        for ext in (".glb", ".ply", ".obj"):
            paths[name + ext] = folder / f"{name}{ext}"
            write_mesh(paths[name + ext], mesh)
    return paths


@pytest.mark.parametrize("method", ["tsdf", "density"])
def test_mesh_glb_passes_the_gltf_validator(meshes, method: str) -> None:
    report = validate(meshes[f"{method}.glb"])
    print(method, {k: report[k] for k in ("errors", "warnings", "infos", "hints")}, report["messages"][:3])
    assert report["errors"] == 0 and report["warnings"] == 0, report["messages"]
    assert "ACCESSOR_INDEX_TRIANGLE_DEGENERATE" not in codes(report, 2)
    doc = glb_json(meshes[f"{method}.glb"])
    prim = doc["meshes"][0]["primitives"][0]
    material = doc["materials"][prim["material"]]
    assert "KHR_materials_unlit" in material["extensions"] and "KHR_materials_unlit" in doc["extensionsUsed"]
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0.0  # not glTF's default, a black metal


@pytest.mark.parametrize("ext", [".ply", ".obj", ".glb"])
def test_mesh_files_have_unit_normals_and_no_unused_vertices(meshes, ext: str) -> None:
    """What open3d (assimp for .glb) reads back from each format: every normal a unit vector, every vertex used,
    every triangle with area, and the colour red again (.glb holds linear colour: encoded back to sRGB)."""
    import open3d as o3d

    for method in ("tsdf", "density"):
        m = o3d.io.read_triangle_mesh(str(meshes[method + ext]))
        v, t, n = np.asarray(m.vertices), np.asarray(m.triangles), np.asarray(m.vertex_normals)
        assert len(t) > 500 and len(n) == len(v)
        assert np.abs(np.linalg.norm(n, axis=1) - 1).max() < 1e-3
        assert len(np.unique(t)) == len(v)
        area = 0.5 * np.linalg.norm(np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]]), axis=1)
        assert area.min() > 0
        c = np.asarray(m.vertex_colors)
        if ext == ".glb":
            c = linear_to_srgb(c)
        assert np.allclose(c.mean(0), RED, atol=0.04)


def test_generated_cube_mesh_passes_the_gltf_validator(tmp_path: Path) -> None:
    """The demo's mesh: a (short) generated red cube, meshed with the default settings (TSDF, decimated to
    50,000 triangles), written by `steinsplat PROMPT --mesh`, has no validator errors or warnings."""
    from steinsplat.cli import main

    out, mesh = tmp_path / "cube.ply", tmp_path / "cube.glb"
    assert main(["a red cube", "--out", str(out), "--mesh", str(mesh), "--steps", "60", "--resolution", "32",
                 "--views", "1", "--preview-every", "0", "--checkpoint-every", "0", "--quiet"]) == 0
    report = validate(mesh)
    print({k: report[k] for k in ("errors", "warnings", "infos", "hints")}, report["info"]["totalTriangleCount"])
    assert report["errors"] == 0 and report["warnings"] == 0, report["messages"]
