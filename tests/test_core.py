"""Gaussians and cameras: activations, initialisers, conventions of docs/shapeworld.md, view tags."""

from __future__ import annotations

import math

import pytest
import torch

from steinsplat.cameras import (Cameras, InsideOutSampler, OrbitSampler, inside_out_cameras, object_eval_cameras,
                                orbit_cameras, scene_eval_cameras)
from steinsplat.gaussians import Gaussians, eval_sh, quat_to_rotmat, rgb_to_sh0, sh0_to_rgb


def project(cams: Cameras, p: torch.Tensor) -> torch.Tensor:
    """World points [M, 3] -> pixel coords [B, M, 2] and camera z [B, M]."""
    pc = torch.einsum("bij,mj->bmi", cams.viewmats[:, :3, :3], p) + cams.viewmats[:, None, :3, 3]
    uv = torch.einsum("bij,bmj->bmi", cams.Ks, pc)
    return uv[..., :2] / uv[..., 2:3], pc[..., 2]


def test_orbit_camera_conventions():
    cams = orbit_cameras([20.0], [90.0], [1.8])
    el, az = math.radians(20), math.radians(90)
    expected = torch.tensor([1.8 * math.cos(el) * math.cos(az), 1.8 * math.cos(el) * math.sin(az), 1.8 * math.sin(el)])
    torch.testing.assert_close(cams.centers[0], expected, atol=1e-5, rtol=0)
    uv, z = project(cams, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.3], [0.2, 0.0, 0.0]]))
    torch.testing.assert_close(uv[0, 0], torch.tensor([32.0, 32.0]))  # origin at the image centre
    assert z[0, 0].item() == pytest.approx(1.8, abs=1e-5)
    assert uv[0, 1, 1] < 32  # +Z is up in the image (OpenCV y points down)
    # camera at +Y looking at the origin: +X appears on the left, -X on the right (right-handed world)
    assert uv[0, 2, 0] < 32
    # rotation is orthonormal with det +1
    R = cams.viewmats[0, :3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.linalg.det(R).item() == pytest.approx(1.0, abs=1e-6)


def test_fov_and_intrinsics():
    cams = orbit_cameras([0.0], [0.0], [2.0], fovy=40.0, width=64, height=48)
    fy = cams.Ks[0, 1, 1].item()
    assert fy == pytest.approx(24.0 / math.tan(math.radians(20.0)))
    # a point at the top edge of the vertical field of view lands on row 0
    top = torch.tensor([[0.0, 0.0, 2.0 * math.tan(math.radians(20.0))]])
    uv, _ = project(cams, top)
    assert uv[0, 0, 1].item() == pytest.approx(0.0, abs=1e-4)
    half = cams.resized(32, 24)
    assert half.Ks[0, 1, 1].item() == pytest.approx(fy / 2) and half.Ks[0, 0, 2].item() == 16.0


def test_inside_out_and_eval_rigs():
    cams = inside_out_cameras([90.0], [10.0])
    torch.testing.assert_close(cams.centers[0], torch.tensor([0.0, 0.0, 1.2]), atol=1e-5, rtol=0)
    fwd = cams.viewmats[0, 2, :3]  # camera +z in world
    torch.testing.assert_close(fwd, torch.tensor([0.0, math.cos(math.radians(10)), math.sin(math.radians(10))]),
                               atol=1e-5, rtol=0)
    obj = object_eval_cameras()
    assert len(obj) == 8 and obj.azimuth.tolist() == [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]
    assert torch.allclose(obj.centers.norm(dim=-1), torch.tensor(1.8)) and bool((obj.elevation == 20).all())
    scene = scene_eval_cameras()
    assert len(scene) == 8 and torch.allclose(scene.centers, torch.tensor([0.0, 0.0, 1.2]).expand(8, 3))


def test_samplers_respect_ranges_and_seed():
    s = OrbitSampler()
    a = s.sample(500, torch.Generator().manual_seed(0))
    b = s.sample(500, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.viewmats, b.viewmats)
    assert a.elevation.min() >= -10 and a.elevation.max() <= 60
    assert a.azimuth.min() >= 0 and a.azimuth.max() < 360
    d = a.centers.norm(dim=-1)
    assert d.min() >= 1.6 - 1e-5 and d.max() <= 2.0 + 1e-5
    r = InsideOutSampler().sample(200, torch.Generator().manual_seed(1))
    assert r.elevation.abs().max() <= 15 and torch.allclose(r.centers[:, 2], torch.tensor(1.2))


def test_view_tags():
    cams = orbit_cameras([0, 0, 0, 0, 70], [0, 90, 180, 300, 0], 1.8)
    assert cams.view_tags() == ["front", "side", "back", "side", "overhead"]
    assert orbit_cameras([0], [350], 1.8).view_tags() == ["front"]
    # without stored angles the tags come from the camera position
    c = orbit_cameras([0], [180], 1.8)
    c.azimuth = c.elevation = None
    assert c.view_tags() == ["back"]


def test_camera_validation():
    with pytest.raises(ValueError, match="viewmats"):
        Cameras(torch.eye(4), torch.eye(3)[None], 8, 8)
    with pytest.raises(ValueError, match="positive"):
        orbit_cameras([0.0], [0.0], [-1.0])
    with pytest.raises(ValueError, match="image size"):
        Cameras(torch.eye(4)[None], torch.eye(3)[None], 0, 8)


def test_gaussian_activations_and_sh():
    g = Gaussians.from_points(torch.zeros(2, 3), torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]]), scale=0.1,
                              opacity=0.3, sh_degree=3)
    torch.testing.assert_close(g.scales, torch.full((2, 3), 0.1))
    torch.testing.assert_close(g.opacities, torch.full((2,), 0.3))
    torch.testing.assert_close(g.colors(), torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]]))
    torch.testing.assert_close(sh0_to_rgb(rgb_to_sh0(torch.tensor([0.3]))), torch.tensor([0.3]))
    assert g.sh_degree == 3 and g.splats["shN"].shape == (2, 15, 3)
    # degree-1 band: c1 * (-y, z, -x) on a unit direction, checked on +Y
    coeffs = torch.zeros(1, 16, 3)
    coeffs[0, 1, 0] = 1.0
    out = eval_sh(3, coeffs, torch.tensor([[0.0, 1.0, 0.0]]))
    assert out[0, 0].item() == pytest.approx(-0.4886025119029199)
    # unit quaternion -> rotation
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)


def test_initialisers():
    gen = torch.Generator().manual_seed(0)
    ball = Gaussians.random_ball(2000, radius=0.5, generator=gen)
    assert ball.means.norm(dim=-1).max() <= 0.5 + 1e-6
    assert ball.means.norm(dim=-1).median() > 0.3  # uniform in volume, not clustered at the centre
    box = Gaussians.random_box_shell(1000, generator=gen)
    m = box.means
    lo, hi = torch.tensor([-2.0, -2.0, 0.0]), torch.tensor([2.0, 2.0, 2.5])
    on_face = ((m - lo).abs() < 1e-5) | ((m - hi).abs() < 1e-5)
    assert bool(on_face.any(-1).all())
    # flat discs: the scale across the face (its normal axis) is `flatness` times the scales along it
    flat = Gaussians.random_box_shell(500, flatness=0.1, generator=gen)
    fm = flat.means
    normal_axis = torch.minimum((fm - lo).abs(), (hi - fm).abs()).argmin(-1)  # [N]
    s = flat.scales  # [N, 3]
    across = s[torch.arange(500), normal_axis]
    torch.testing.assert_close(across, 0.1 * s.max(-1).values, rtol=1e-5, atol=0)
    assert bool((box.scales.max(-1).values == box.scales.min(-1).values).all())  # default: isotropic
    with pytest.raises(ValueError, match="flatness"):
        Gaussians.random_box_shell(10, flatness=0.0)
    pts = Gaussians.from_points(torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]]))
    assert pts.scales.max().item() < 0.2
    with pytest.raises(ValueError, match="shape"):
        Gaussians(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="positive"):
        Gaussians.random_ball(0)


def test_gaussians_to_device_and_state_roundtrip():
    g = Gaussians.random_ball(10, sh_degree=1)
    h = Gaussians.from_state_tensors(g.state_tensors()).to("cpu")
    for k in g.splats:
        torch.testing.assert_close(g.splats[k], h.splats[k])
    assert isinstance(h.splats["means"], torch.nn.Parameter)
