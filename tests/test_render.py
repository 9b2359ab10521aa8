"""The torch rasteriser against the dense reference: images and gradients, hard cases included."""

from __future__ import annotations

import math

import pytest
import torch

from steinsplat.cameras import Cameras, orbit_cameras
from steinsplat.gaussians import Gaussians
from steinsplat.render import render
from steinsplat.render.dense import render_dense

KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def random_scene(n: int, seed: int, sh_degree: int = 1) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    g = Gaussians.random_ball(n, radius=0.5, opacity=0.5, sh_degree=sh_degree, generator=gen)
    with torch.no_grad():
        g.splats["scales"].add_(0.5 * torch.randn(n, 3, generator=gen))
        g.splats["quats"].copy_(torch.randn(n, 4, generator=gen))
        g.splats["opacities"].copy_(2.0 * torch.randn(n, generator=gen))
        g.splats["shN"].copy_(0.3 * torch.randn_like(g.splats["shN"]))
    return g


def with_extras(g: Gaussians) -> Gaussians:
    """Append the hard cases: behind the camera, off screen, huge, tiny, fully transparent,
    nearly opaque (alpha clamped at 0.99), and one straddling the near plane."""
    s = g.state_tensors()
    extra_means = torch.tensor(
        [
            [3.0, 0.0, 0.5],  # behind the az=0 camera at distance 1.8
            [0.0, 4.0, 0.0],  # far off to the side: off screen for most views
            [0.0, 0.0, 0.0],  # huge
            [0.1, -0.1, 0.05],  # tiny
            [0.05, 0.05, 0.0],  # fully transparent
            [-0.1, 0.0, 0.1],  # nearly opaque
            [1.795, 0.0, 0.65],  # right at the camera (z ~ near plane)
        ]
    )
    m = len(extra_means)
    scales = torch.log(torch.tensor([0.05, 0.05, 2.0, 1e-4, 0.1, 0.08, 0.05]))[:, None].repeat(1, 3)
    opac = torch.tensor([3.0, 3.0, 0.0, 3.0, -30.0, 12.0, 3.0])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(m, 1)
    sh0 = 0.5 * torch.randn(m, 1, 3, generator=torch.Generator().manual_seed(7))
    shN = torch.zeros(m, s["shN"].shape[1], 3)
    return Gaussians(
        torch.cat([s["means"], extra_means]), torch.cat([s["scales"], scales]), torch.cat([s["quats"], quats]),
        torch.cat([s["opacities"], opac]), torch.cat([s["sh0"], sh0]), torch.cat([s["shN"], shN]),
    )


def cameras(width: int = 24, height: int = 20) -> Cameras:
    return orbit_cameras([20.0, -5.0, 55.0], [0.0, 200.0, 95.0], [1.8, 1.3, 2.0], fovy=40.0, width=width, height=height)


def loss_of(out) -> torch.Tensor:
    """A loss that touches every output channel with distinct weights."""
    gen = torch.Generator().manual_seed(3)
    return (
        (out.rgb * torch.rand(out.rgb.shape, generator=gen)).sum()
        + (out.alpha * torch.rand(out.alpha.shape, generator=gen)).sum()
        + 0.3 * (out.depth * torch.rand(out.depth.shape, generator=gen)).sum()
        + (out.normal * torch.rand(out.normal.shape, generator=gen)).sum()
    )


def grads(g: Gaussians, out) -> dict[str, torch.Tensor]:
    params = [g.splats[k] for k in KEYS]
    gs = torch.autograd.grad(loss_of(out), params, allow_unused=True)
    return {k: (torch.zeros_like(p) if gr is None else gr) for k, p, gr in zip(KEYS, params, gs)}


@pytest.fixture(params=["eager", "compiled"])
def compile_mode(request, monkeypatch):
    import steinsplat.render.torch_backend as tb

    monkeypatch.setenv("STEINSPLAT_COMPILE", "0" if request.param == "eager" else "1")
    monkeypatch.setattr(tb, "_COMPILED", {})
    return request.param


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_backend_matches_dense_reference(seed, compile_mode):
    g = with_extras(random_scene(60, seed))
    cams = cameras()
    fast = render(g, cams, background=(1.0, 1.0, 1.0), backend="torch")
    ref = render_dense(g, cams, background=(1.0, 1.0, 1.0))
    for name in ("rgb", "alpha", "depth", "normal"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"{name} differs")
    # the scene is not trivial: something is drawn, and not everything is covered
    assert 0.05 < float((ref.alpha > 0.5).float().mean()) < 0.95
    gf, gr = grads(g, fast), grads(g, ref)
    for k in KEYS:
        scale = float(gr[k].abs().max()) + 1e-6
        torch.testing.assert_close(gf[k] / scale, gr[k] / scale, atol=2e-4, rtol=1e-3, msg=f"grad of {k} differs")
    assert float(gr["means"].abs().max()) > 0 and float(gr["shN"].abs().max()) > 0


def test_means2d_gradient_matches_dense():
    """The screen-space gradient that densification reads is the same on both renderers."""
    g = random_scene(40, 5, sh_degree=0)
    cams = cameras()
    outs = [render(g, cams, backend="torch"), render_dense(g, cams)]
    for o in outs:
        o.info["means2d"].retain_grad()
        loss_of(o).backward()
    torch.testing.assert_close(outs[0].info["means2d"].grad, outs[1].info["means2d"].grad, atol=1e-4, rtol=1e-3)


def test_culling_rules():
    """Behind the camera and off screen give radius 0; the transparent one too; huge is drawn."""
    g = with_extras(random_scene(5, 0))
    cams = orbit_cameras([20.0], [0.0], [1.8], width=24, height=20)
    radii = render(g, cams, backend="torch").info["radii"][0]  # [N, 2]
    n = 5
    assert radii.dtype == torch.int32
    assert (radii[n + 0] == 0).all()  # behind
    assert (radii[n + 1] == 0).all()  # off screen
    assert (radii[n + 2] > 10).all()  # huge
    assert (radii[n + 4] == 0).all()  # opacity ~ 1e-13 < 1/255


def test_empty_scene_and_nothing_visible():
    cams = cameras()
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 1, 3))
    out = render(empty, cams, background=(0.2, 0.3, 0.4), backend="torch")
    assert out.rgb.shape == (3, 20, 24, 3)
    torch.testing.assert_close(out.rgb, torch.tensor([0.2, 0.3, 0.4]).expand(3, 20, 24, 3))
    assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0
    # a scene entirely behind every camera: all culled, gradients exist and are zero
    g = Gaussians.from_points(torch.tensor([[0.0, 0.0, 50.0]]), scale=0.1, opacity=0.9)
    out = render(g, orbit_cameras([-30.0], [0.0], [1.8], width=8, height=8), backend="torch")
    assert float(out.alpha.max()) == 0.0
    gr = torch.autograd.grad(out.rgb.sum(), g.splats["means"], allow_unused=True)[0]
    assert gr is None or float(gr.abs().max()) == 0.0


def test_single_gaussian_analytic():
    """One isotropic Gaussian straight ahead: alpha at the centre pixel is o * exp(-sigma) with the
    0.3-pixel low-pass, and the expected depth is its distance."""
    sigma_w, d, o = 0.05, 2.0, 0.6
    g = Gaussians.from_points(torch.zeros(1, 3), scale=sigma_w, opacity=o)
    cams = orbit_cameras([0.0], [0.0], [d], fovy=40.0, width=33, height=33)
    out = render(g, cams, backend="torch")
    f = float(cams.Ks[0, 0, 0])
    var = (f * sigma_w / d) ** 2 + 0.3  # pixel variance after the low-pass
    # centre pixel (16, 16) has centre (16.5, 16.5) = the projected mean
    assert out.alpha[0, 16, 16, 0].item() == pytest.approx(o, rel=1e-5)
    # one pixel to the right: sigma = 0.5 * 1 / var
    assert out.alpha[0, 16, 17, 0].item() == pytest.approx(o * math.exp(-0.5 / var), rel=1e-4)
    assert out.depth[0, 16, 16, 0].item() == pytest.approx(d, rel=1e-5)
    # the normal is the shortest axis flipped towards the camera (+X side): any unit vector, facing it
    n = out.normal[0, 16, 16]
    assert n.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_front_to_back_order_and_early_stop():
    """Four Gaussians on the line of sight with alpha 0.95 each: transmittance after them is
    0.05, 0.0025, 1.25e-4 (> 1e-4: the third counts) and 6.25e-6 (the fourth is dropped, as gsplat
    stops before T falls to 1e-4). Colours tell which ones were composited, and in what order."""
    pts = torch.tensor([[0.6, 0.0, 0.0], [0.2, 0.0, 0.0], [-0.2, 0.0, 0.0], [-0.6, 0.0, 0.0]])  # camera at +X
    cols = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    g = Gaussians.from_points(pts, cols, scale=0.3, opacity=0.95)
    cams = orbit_cameras([0.0], [0.0], [3.0], width=9, height=9)
    for out in (render(g, cams, backend="torch"), render_dense(g, cams)):
        c = out.rgb[0, 4, 4]  # the centre pixel's centre is every Gaussian's projected mean
        expected = torch.tensor([0.95, 0.05 * 0.95, 0.0025 * 0.95])  # the white one would add 1.2e-4 to each
        torch.testing.assert_close(c, expected, atol=1e-6, rtol=1e-5)
        assert out.alpha[0, 4, 4, 0].item() == pytest.approx(1 - 1.25e-4, abs=1e-6)


def test_render_rejects_bad_backend_and_gsplat_on_cpu():
    g = random_scene(3, 0)
    with pytest.raises(ValueError, match="unknown render backend"):
        render(g, cameras(), backend="opengl")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="needs CUDA"):
        render(g, cameras(), backend="gsplat")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_backend_matches_torch_backend_on_cuda():
    g = random_scene(200, 3).to("cuda")
    cams = cameras(64, 48).to("cuda")
    a = render(g, cams, background=(1.0, 1.0, 1.0), backend="gsplat")
    b = render(g, cams, background=(1.0, 1.0, 1.0), backend="torch")
    for name in ("rgb", "alpha", "depth", "normal"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=2e-3, rtol=1e-2)
    ga, gb = grads(g, a), grads(g, b)
    for k in KEYS:
        scale = float(gb[k].abs().max()) + 1e-6
        torch.testing.assert_close(ga[k] / scale, gb[k] / scale, atol=5e-3, rtol=5e-2)
