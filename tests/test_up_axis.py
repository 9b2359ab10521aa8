"""Which way is up in the files we write (export/axes.py): `--up z|y|-y` rotates the Gaussians exactly (means,
rotations, view-dependent colour), every format reads back to the rotated values, a PLY records the axis and
reads back upright, and `steinsplat info` says what each file holds. Browser renders with the viewers' default
up vector: tests/test_web_formats.py (Spark for --up y, Babylon.js for glTF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steinsplat.cameras import Cameras, orbit_cameras
from steinsplat.export import export_gaussians, load_gaussians, read_ply, read_splat, read_spz
from steinsplat.export.axes import UP_AXES, rotate_gaussians, up_rotation
from steinsplat.gaussians import Gaussians


def varied(n: int = 300, seed: int = 5) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(torch.rand(n, 3, generator=gen) - 0.5, torch.rand(n, 3, generator=gen) * 2 - 5,
                     torch.randn(n, 4, generator=gen), torch.randn(n, generator=gen) * 2,
                     torch.rand(n, 1, 3, generator=gen) * 2 - 1, torch.rand(n, 15, 3, generator=gen) - 0.5)


def test_up_conventions_put_our_up_on_theirs() -> None:
    """Each R is a rotation (no mirror) that takes our +Z to the convention's up."""
    expected = {"z": [0, 0, 1], "y": [0, 1, 0], "-y": [0, -1, 0]}
    assert set(UP_AXES) == set(expected)
    for up, axis in expected.items():
        R = up_rotation(up)
        assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
        assert np.allclose(R @ [0, 0, 1], axis)
    with pytest.raises(ValueError, match="unknown up axis 'x'"):
        up_rotation("x")


@pytest.mark.parametrize("up", ["y", "-y"])
def test_rotated_gaussians_look_the_same_from_the_rotated_camera(up: str) -> None:
    """Rendered from the camera turned with them, rotated Gaussians (SH degree 3) give the same image: the
    view-dependent colour turned too (with the SH left as they were, the image differs by more than 0.5)."""
    from steinsplat.render import render

    g = varied()
    R = up_rotation(up)
    cam = orbit_cameras([20.0], [30.0], [1.8], fovy=40.0, width=48, height=48)
    world_to_ours = torch.eye(4)
    world_to_ours[:3, :3] = torch.tensor(R.T, dtype=torch.float32)  # file coordinates -> ours
    cam_r = Cameras(cam.viewmats @ world_to_ours, cam.Ks, cam.width, cam.height)
    turned = rotate_gaussians(g, R)
    with torch.no_grad():
        ref, out = render(g, cam).rgb, render(turned, cam_r).rgb
        unturned_sh = Gaussians(*(turned.splats[k] for k in ("means", "scales", "quats", "opacities", "sh0")),
                                g.splats["shN"].detach())
        wrong = render(unturned_sh, cam_r).rgb
    assert float((out - ref).abs().max()) < 1e-4
    assert float((wrong - ref).abs().max()) > 0.5


@pytest.mark.parametrize("ext", [".ply", ".splat", ".spz", ".splats.glb"])
@pytest.mark.parametrize("up", ["y", "-y"])
def test_export_up_reads_back(tmp_path: Path, ext: str, up: str) -> None:
    """The file holds R @ ours (what its reader returns without any rotation equals the +Z file's values turned
    by R); a PLY says so in its header and load_gaussians turns it back; glTF is always +Y up and refuses -y."""
    g = varied()
    R = up_rotation(up)
    if ext == ".splats.glb":
        if up == "-y":
            with pytest.raises(ValueError, match="glTF is \\+Y up by definition"):
                export_gaussians(tmp_path / f"g{ext}", g, up=up)
            return
        export_gaussians(tmp_path / f"g{ext}", g, up=up)
        from steinsplat.export.glb import read_accessor, unpack_glb

        doc, binary = unpack_glb((tmp_path / f"g{ext}").read_bytes(), "test")
        raw_means = read_accessor(doc, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"], binary, "t", 10**6)
        assert np.allclose(raw_means, g.means.detach().double().numpy() @ R.T, atol=1e-6)
        assert np.allclose(load_gaussians(tmp_path / f"g{ext}").means.detach(), g.means.detach(), atol=1e-6)
        return
    raw_reader = {".ply": read_ply, ".splat": read_splat, ".spz": read_spz}[ext]
    export_gaussians(tmp_path / f"z{ext}", g)
    export_gaussians(tmp_path / f"u{ext}", g, up=up)
    z, u = raw_reader(tmp_path / f"z{ext}"), raw_reader(tmp_path / f"u{ext}")
    tol = 1e-6 if ext != ".spz" else 1.0 / 4096  # .spz: 12 fractional bits of position
    assert np.allclose(u.means.detach().numpy(), z.means.detach().numpy() @ R.T, atol=tol)
    Rq = torch.as_tensor(R, dtype=torch.float32)
    from steinsplat.gaussians import quat_to_rotmat

    rz, ru = quat_to_rotmat(z.quats.detach()), quat_to_rotmat(u.quats.detach())  # [N, 3, 3]
    assert float((ru - Rq @ rz).abs().max()) < (1e-5 if ext == ".ply" else 0.05)  # .splat/.spz: 8-9 bit rotations
    assert np.allclose(u.scales.detach(), z.scales.detach(), rtol=1e-5 if ext == ".ply" else 0.07)
    if ext == ".ply":
        head = (tmp_path / f"u{ext}").read_bytes()[:1000]
        assert f"comment up {'+Y' if up == 'y' else '-Y'}\n".encode() in head
        assert b"comment" not in (tmp_path / f"z{ext}").read_bytes()[:1000]  # the default: INRIA's header exactly
        back = load_gaussians(tmp_path / f"u{ext}")
        assert float((back.means - g.means).abs().max().detach()) < 1e-6
        assert float((back.splats["shN"] - g.splats["shN"]).abs().max().detach()) < 1e-5


def test_cli_export_up_and_info(tmp_path: Path, capsys) -> None:
    """`steinsplat export --up y` writes the rotated file; `steinsplat info` says which axis each file has up."""
    from steinsplat.cli import main
    from steinsplat.export import write_ply

    write_ply(tmp_path / "g.ply", varied())
    assert main(["export", str(tmp_path / "g.ply"), "--to", str(tmp_path / "y.ply"), "--up", "y"]) == 0
    assert main(["export", str(tmp_path / "g.ply"), "--to", str(tmp_path / "g.splats.glb")]) == 0
    assert main(["export", str(tmp_path / "g.ply"), "--to", str(tmp_path / "m.spz"), "--up", "-y"]) == 0
    said = {}
    for name in ("g.ply", "y.ply", "g.splats.glb", "m.spz"):
        capsys.readouterr()
        assert main(["info", str(tmp_path / name)]) == 0
        said[name] = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table's cells, unwrapped
    assert "not recorded: +Z if steinsplat wrote it without --up" in said["g.ply"]
    assert "+Y (its header says so" in said["y.ply"]
    assert "+Y (glTF's convention" in said["g.splats.glb"]
    assert "not recorded (.spz has no field for it)" in said["m.spz"]
    assert main(["export", str(tmp_path / "g.ply"), "--to", str(tmp_path / "x.splats.glb"), "--up", "-y"]) == 2
    assert "glTF is +Y up by definition" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "g.ply"), "--to", str(tmp_path / "x.glb")]) == 2
    assert "x.splats.glb" in capsys.readouterr().err


def test_mesh_up(tmp_path: Path) -> None:
    """A .ply mesh written with up y has its vertices and normals turned; a .glb is +Y up whatever it is told."""
    import open3d as o3d

    from steinsplat.export.mesh import write_mesh

    mesh = o3d.geometry.TriangleMesh.create_cone(radius=0.2, height=0.5)  # apex at +Z
    for ext, up in ((".ply", "z"), (".ply", "y"), (".glb", "y"), (".glb", "z")):
        write_mesh(tmp_path / f"{up}{ext}", o3d.geometry.TriangleMesh(mesh), up=up)
    apex = lambda p: np.asarray(o3d.io.read_triangle_mesh(str(p)).vertices).max(0)  # noqa: E731
    assert np.isclose(apex(tmp_path / "z.ply")[2], 0.5) and np.isclose(apex(tmp_path / "y.ply")[1], 0.5)
    assert np.isclose(apex(tmp_path / "y.glb")[1], 0.5) and np.isclose(apex(tmp_path / "z.glb")[1], 0.5)


@pytest.mark.parametrize("argv,message", [
    (["--out", "{d}/c.splats.glb", "--up", "-y"], "glTF is +Y up by definition"),
    (["--out", "{d}/c.ply", "--mesh", "{d}/m.splats.glb"], "NAME.splats.glb is for --out"),
    (["--out", "{d}/c.glb"], "a plain .glb is the --mesh"),
])
def test_generate_refuses_ambiguous_outputs_before_running(tmp_path: Path, capsys, argv, message: str) -> None:
    from steinsplat.cli import main

    assert main(["a red cube", *(a.format(d=tmp_path) for a in argv), "--steps", "1", "--quiet"]) == 2
    assert message in capsys.readouterr().err
