"""SSD's guard, calibrated (guidance/guard.py): the neutral refusal rate, a clearly worse fit, and the
render proxy that catches a fit the 8x8-pooled image lets through (benchmarks/guard_calibration.py
does the same on a real ShapeWorld snapshot at t = 700)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steinsplat.bench.guard_check import synthetic_refusal_rate
from steinsplat.cameras import orbit_cameras
from steinsplat.gaussians import Gaussians
from steinsplat.guidance import SSD, SSDConfig
from steinsplat.guidance.guard import Guard, render_pullback, t_quantile
from steinsplat.priors.tiny import TinyPixelPrior
from steinsplat.render import render

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


class _OldRule(Guard):
    """The rule before the calibration: refuse where m > 1 SE."""

    def refused(self):
        m, m2, n = self.state.stats
        cap = (1 + self.config.guard_decay) / (1 - self.config.guard_decay)
        return (n >= 2) & (m > ((m2 - m * m).clamp_min(0.0) / n.clamp(1.0, cap)).sqrt())


def _refusal_rate(cls, scale=1.0, steps=1500, seed=0, rho=0.5, B=4, h=8, **cfg):
    """Share of views served SDS's gradient for synthetic paired draws (bench/guard_check.py)."""
    return synthetic_refusal_rate(cls, SSDConfig(**cfg), steps, seed, rho, scale, B, h)


def test_t_quantile_matches_tables():
    for nu, want in ((1, 6.3138), (2, 2.9200), (3, 2.3534), (5, 2.0150), (18, 1.7341), (30, 1.6973), (math.inf, 1.6449)):
        assert t_quantile(0.95, nu) == pytest.approx(want, rel=3e-3), nu
    assert t_quantile(0.96, 18) > t_quantile(0.95, 18)


def test_a_neutral_fit_is_refused_on_at_most_5_percent_of_its_views():
    rates = [_refusal_rate(Guard, seed=k, rho=rho) for k, rho in ((0, 0.0), (1, 0.5), (2, 0.9))]
    assert max(rates) <= 0.05 and min(rates) > 0.005, rates  # calibrated, not switched off
    assert _refusal_rate(_OldRule, seed=1) > 0.12  # the old one-standard-error rule: ~17 %


def test_a_clearly_worse_fit_is_refused():
    assert _refusal_rate(Guard, scale=math.sqrt(1.5), steps=400, rho=0.9) > 0.8  # 1.5x SDS's variance (refused from its first few measurements per bin on)
    assert _refusal_rate(Guard, scale=math.sqrt(0.7), steps=400, rho=0.9) < 0.01  # a better one is kept


def _scene(res=16):
    gs = Gaussians.random_ball(96, radius=0.4, opacity=0.8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gs.splats["scales"].fill_(math.log(0.03))  # small splats: footprints of ~2 px
    cams = orbit_cameras([20.0, 20.0], [0.0, 180.0], 1.8, fovy=40.0, width=res, height=res)
    out = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    return gs, out, out.rgb.permute(0, 3, 1, 2)  # x [B, 3, h, w] with its graph


def _split(n):
    L = F.interpolate(F.avg_pool2d(n, 8), scale_factor=8, mode="nearest")  # 8x8-block-constant part
    return L, n - L


def test_the_render_proxy_refuses_a_fit_the_pooled_image_lets_through():
    """The fit trades low-frequency noise (halved) for high-frequency noise (+25 %): better in the pooled
    image, worse for the Gaussians' parameters. The old proxy serves it; the pull-back refuses it."""
    gs, out, x = _scene()
    params = list(gs.splats.values())
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(x.shape, generator=g)
    fit = lambda gs_: mean + 0.5 * _split(gs_ - mean)[0] + 1.25 * _split(gs_ - mean)[1]  # noqa: E731
    draws = [mean + torch.randn(x.shape, generator=g) for _ in range(32)]

    def var(vecs):
        V = torch.stack(vecs)
        return float(((V - V.mean(0)) ** 2).sum(1).mean())

    jt = lambda v: torch.cat([q.flatten() for q in torch.autograd.grad(x, params, v, retain_graph=True, allow_unused=True) if q is not None])  # noqa: E731
    param_ratio = var([jt(fit(d)) for d in draws]) / var([jt(d) for d in draws])
    pooled_ratio = var([F.avg_pool2d(fit(d), 8).flatten() for d in draws]) / var([F.avg_pool2d(d, 8).flatten() for d in draws])
    assert param_ratio > 1.1 and pooled_ratio < 0.5  # worse in parameter space, better pooled

    pull = render_pullback(x, out.info["means2d"])
    rates = {}
    for proxy in ("pooled", "render"):
        guard = Guard(SSDConfig(guard_proxy=proxy))
        guard.init_state("cpu")
        bins, fitted = torch.tensor([7, 7]), torch.full((10,), 100)
        refused = 0
        for i in range(80):
            gsd = mean + torch.randn(x.shape, generator=g)
            o = guard.apply(fit(gsd), gsd, bins, fitted, update_state=True, pullback=pull)
            refused += int(i >= 10 and torch.equal(o, gsd))
        rates[proxy] = refused / 70
        assert guard.summary()["proxy"] == proxy
    assert rates["pooled"] < 0.1 and rates["render"] > 0.7, rates


def test_ssd_uses_the_render_proxy_when_x_has_a_graph_and_records_what_it_served():
    prior = TinyPixelPrior(resolution=16, block_out_channels=(4, 8))
    gs, out, _ = _scene()
    x = prior.encode_images(out.rgb)  # [B, C, h, w] with its graph to the Gaussians
    emb = prior.encode_prompt("a red cube")
    ssd = SSD(prior, [], SSDConfig(timestep_bins=2))
    calls = []
    orig = ssd._pullback
    ssd._pullback = lambda render: calls.append(orig(render)) or calls[-1]
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        ssd.step(x, emb, orbit_cameras([20.0] * 2, [0.0, 180.0], 1.8, width=16, height=16), render=out, generator=gen)
    assert calls and all(c is not None for c in calls)
    assert ssd._x_graph is None  # the step's graph is not kept
    s = ssd.guard.summary()
    assert s["views"] == 16 and 0 <= s["served_fit_fraction"] <= 1 and s["fit_vs_sds"] > 0
    assert float(ssd.guard.state.stats[2].sum()) > 0  # measured (every guard_every = 2 steps)
    # detached x (no graph): the pooled proxy, as before
    ssd2 = SSD(prior, [], SSDConfig(timestep_bins=2))
    ssd2.step(x.detach(), emb, orbit_cameras([20.0] * 2, [0.0, 180.0], 1.8, width=16, height=16), render=out, generator=gen)
    assert ssd2._pullback(out) is None
    with pytest.raises(ValueError, match="guard_every"):
        Guard(SSDConfig(guard_every=0))
