"""gsplat's own rasterization() on CPU (the `gsplat_cpu` fixture, tests/gsplat_cpu.py) against the
torch backend: images, gradients and the meta its strategies read; gsplat's DefaultStrategy and
MCMCStrategy driven by that meta; and negative controls showing that a wrong argument in our
gsplat call is caught."""

from __future__ import annotations

import pytest
import torch

from steinsplat.cameras import OrbitSampler, orbit_cameras
from steinsplat.densify import Densifier, DensifyConfig, per_param_optimizers
from steinsplat.gaussians import Gaussians
from steinsplat.render import render
from test_densify import LRS, assert_optimizer_consistent
from test_render import KEYS, cameras, grads, random_scene, with_extras

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

MAX_OPACITY_LOGIT = 3.89  # sigmoid = 0.98: below both backends' alpha clamps (see test_alpha_clamp_...)


def parity_scene(seed: int) -> tuple[Gaussians, object]:
    """Three kinds of random scene: plain, with the hard cases (behind the camera, off screen,
    huge, tiny, transparent, at the near plane), and a larger one on an odd-sized image."""
    if seed == 0:
        g, cams = random_scene(60, 0), cameras()
    elif seed == 1:
        g, cams = with_extras(random_scene(50, 1)), cameras()
    else:
        g = random_scene(150, 2, sh_degree=2)
        cams = orbit_cameras([30.0, 0.0], [45.0, 135.0], [2.2, 1.6], fovy=50.0, width=37, height=29)
    with torch.no_grad():
        g.splats["opacities"].clamp_(max=MAX_OPACITY_LOGIT)
    return g, cams


def check_parity(g: Gaussians, cams, atol: float = 2e-5) -> dict[str, float]:
    """gsplat backend vs torch backend: every output, every parameter gradient, the screen-space
    gradient the strategies read; returns the max errors (gradients relative to their max)."""
    a = render(g, cams, background=(1.0, 1.0, 1.0), backend="gsplat")
    b = render(g, cams, background=(1.0, 1.0, 1.0), backend="torch")
    assert a.info["backend"] == "gsplat" and "isect_ids" in a.info  # gsplat's own meta, not ours
    errs = {}
    for name in ("rgb", "alpha", "depth", "normal"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, (name, x.shape, y.shape)
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4, msg=f"{name} differs")
        errs[name] = float((x - y).detach().abs().max())
    assert float(b.alpha.detach().amax()) > 0.5  # something drawn
    for o in (a, b):
        o.info["means2d"].retain_grad()
    ga, gb = grads(g, a), grads(g, b)
    for k in KEYS:
        scale = float(gb[k].abs().max()) + 1e-12
        torch.testing.assert_close(ga[k] / scale, gb[k] / scale, atol=1e-5, rtol=1e-4, msg=f"grad of {k} differs")
        errs[f"d{k}"] = float((ga[k] - gb[k]).abs().max()) / scale
    m_a, m_b = a.info["means2d"].grad, b.info["means2d"].grad  # [B, N, 2]
    vis = (b.info["radii"] > 0).all(-1)
    scale = float(m_b.abs().max())
    torch.testing.assert_close(m_a[vis] / scale, m_b[vis] / scale, atol=1e-5, rtol=1e-4, msg="means2d grad differs")
    # radii: gsplat's reference draws 3.33-sigma boxes, ours the exact opacity-aware ones (as gsplat's CUDA)
    ra, rb = a.info["radii"], b.info["radii"]
    assert ra.shape == rb.shape and ra.dtype == rb.dtype == torch.int32
    assert bool((ra[vis] >= rb[vis]).all())
    return errs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gsplat_backend_matches_torch_backend_on_cpu(gsplat_cpu, seed):
    g, cams = parity_scene(seed)
    errs = check_parity(g, cams)
    assert max(errs.values()) < 1e-4


def test_auto_backend_picks_gsplat_under_the_fixture_and_torch_without(gsplat_cpu, monkeypatch):
    g, cams = parity_scene(0)
    assert render(g, cams).info["backend"] == "gsplat"
    monkeypatch.undo()
    assert render(g, cams).info["backend"] == "torch"
    with pytest.raises(RuntimeError, match="needs CUDA"):
        render(g, cams, backend="gsplat")


def test_alpha_clamp_of_gsplat_and_torch_backends(gsplat_cpu):
    """A known difference, pinned: gsplat 1.5.3 clamps a Gaussian's alpha at 0.999 (its CUDA kernels
    and its reference alike), the torch backend at 0.99 (the original 3DGS value). A nearly opaque
    Gaussian straight ahead shows it at its centre pixel; everywhere below 0.99 they agree (above)."""
    g = Gaussians.from_points(torch.zeros(1, 3), scale=0.1, opacity=0.9999)
    cams = orbit_cameras([0.0], [0.0], [2.0], width=9, height=9)
    a = render(g, cams, backend="gsplat").alpha[0, 4, 4, 0].item()
    b = render(g, cams, backend="torch").alpha[0, 4, 4, 0].item()
    assert a == pytest.approx(0.999, abs=1e-6) and b == pytest.approx(0.99, abs=1e-6)


# ---------------------------------------------------------------------------- strategies
def optimise_with_gsplat_meta(strategy: str, steps: int = 50, cap: int = 160, n0: int = 40):
    """A 50-step densifying fit of random Gaussians to renders of a target, every render (and so
    every `info` the strategy reads) from gsplat's rasterization()."""
    target = Gaussians.random_ball(200, radius=0.4, opacity=0.8, generator=torch.Generator().manual_seed(1))
    g = Gaussians.random_ball(n0, radius=0.3, opacity=0.3, sh_degree=1, generator=torch.Generator().manual_seed(2))
    opt = per_param_optimizers(g, LRS)
    cfg = DensifyConfig(strategy=strategy, start=5, stop=100, interval=10, cap=cap, grow_grad2d=1e-6)
    d = Densifier(cfg, g, opt)
    sampler = OrbitSampler(width=24, height=24)
    gen = torch.Generator().manual_seed(3)
    losses = []
    for step in range(steps):
        cams = sampler.sample(2, gen)
        with torch.no_grad():
            tgt = render(target, cams, background=(1.0, 1.0, 1.0), backend="torch").rgb
        out = render(g, cams, background=(1.0, 1.0, 1.0), backend="gsplat")
        assert out.info["backend"] == "gsplat" and out.info["means2d"].shape == (2, len(g), 2)
        d.pre_backward(step, out.info)
        loss = (out.rgb - tgt).abs().mean()
        loss.backward()
        losses.append(float(loss.detach()))
        for o in opt.values():
            o.step()
            o.zero_grad(set_to_none=True)
        d.post_backward(step, out.info, lr=LRS["means"])
    return g, opt, d, losses


def test_default_strategy_densifies_on_gsplat_meta(gsplat_cpu):
    g, opt, d, losses = optimise_with_gsplat_meta("default")
    assert [h["step"] for h in d.history] == [10, 20, 30, 40]
    assert d.history[0]["after"] > d.history[0]["before"]  # grew from gsplat's means2d gradients
    assert len(g) > 40 and max(h["after"] for h in d.history) <= 160
    assert float(d.state["count"].max()) > 0  # visibility counted from gsplat's radii
    assert_optimizer_consistent(g, opt)
    assert all(torch.isfinite(torch.tensor(losses))) and min(losses[-10:]) < losses[0]


def test_mcmc_strategy_relocates_and_grows_on_gsplat_meta(gsplat_cpu):
    g, opt, d, losses = optimise_with_gsplat_meta("mcmc", cap=46)
    assert [h["after"] for h in d.history] == [42, 44, 46, 46]  # +5 % per refinement (int), up to the cap
    assert_optimizer_consistent(g, opt)
    assert min(losses[-10:]) < losses[0]


# ---------------------------------------------------------------------------- negative controls
def _broken_call(monkeypatch, mutate) -> None:
    """Make steinsplat's gsplat backend pass one wrong argument to gsplat.rasterization."""
    import gsplat

    real = gsplat.rasterization

    def wrapped(**kw):
        mutate(kw)
        return real(**kw)

    monkeypatch.setattr(gsplat, "rasterization", wrapped)


BROKEN = {
    "colours without the depth channel": lambda kw: kw.update(colors=kw["colors"][..., :6]),
    "colours with an extra channel": lambda kw: kw.update(colors=torch.cat([kw["colors"][..., :1], kw["colors"]], -1)),
    "colours [N, B, F] instead of [B, N, F]": lambda kw: kw.update(colors=kw["colors"].transpose(0, 1)),
    "colours in float16": lambda kw: kw.update(colors=kw["colors"].half()),
    "log-scales instead of scales": lambda kw: kw.update(scales=kw["scales"].log()),
    "opacity logits instead of opacities": lambda kw: kw.update(opacities=torch.logit(kw["opacities"])),
    "camera-to-world instead of world-to-camera": lambda kw: kw.update(viewmats=torch.linalg.inv(kw["viewmats"])),
    "quaternions x, y, z, w": lambda kw: kw.update(quats=kw["quats"].roll(-1, dims=-1)),
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_a_wrong_gsplat_argument_is_caught(gsplat_cpu, monkeypatch, what):
    g, cams = parity_scene(0)
    _broken_call(monkeypatch, BROKEN[what])
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        check_parity(g, cams)


def test_positive_control_the_unbroken_call_passes(gsplat_cpu, monkeypatch):
    g, cams = parity_scene(0)
    _broken_call(monkeypatch, lambda kw: None)
    check_parity(g, cams)
