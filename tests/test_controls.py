"""The study's negative control, SSD-sham: SSD's full cost, SDS's gradient (guidance/ssd.py step 6)."""

from __future__ import annotations

import pytest
import torch

from steinsplat.bench.methods import SAME_MEAN_AS_SDS, build
from steinsplat.cameras import orbit_cameras
from steinsplat.geometry.tiny import TinyConvEstimator
from steinsplat.gaussians import Gaussians
from steinsplat.guidance import SDS, SSD, SSD_PRESETS, DepthBaseline, SSDConfig
from steinsplat.priors.tiny import TinyPixelPrior
from steinsplat.render import render

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _scene(res=8, views=2):
    gs = Gaussians.random_ball(32, radius=0.4, opacity=0.6, generator=torch.Generator().manual_seed(0))
    cams = orbit_cameras([20.0] * views, [0.0 + 120.0 * i for i in range(views)], 1.8, fovy=40.0, width=res, height=res)
    r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    return cams, r


class _Counting:
    """Wraps a callable and counts its calls and the views (batch rows) it was given."""

    def __init__(self, fn):
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, x, *a, **k):
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.fn(x, *a, **k)

    def __getattr__(self, name):  # the estimator's other attributes (input_space, ...)
        return getattr(self.fn, name)


def _sham_cfg(base: SSDConfig) -> SSDConfig:
    base.sham = True
    return base


@pytest.mark.parametrize("preset", ["constant", "filter"])
def test_the_sham_serves_exactly_sds_gradient_for_the_same_t_eps_and_cameras(preset):
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams, r = _scene()
    x = prior.encode_images(r.rgb)  # [B, C, h, w]
    emb = prior.encode_prompt("a red cube")
    sds = SDS(prior)
    sham = SSD(prior, [DepthBaseline(TinyConvEstimator())], _sham_cfg(SSD_PRESETS[preset]()))
    real = SSD(prior, [DepthBaseline(TinyConvEstimator())], SSD_PRESETS[preset]())
    g = torch.Generator().manual_seed(0)
    differs = 0
    for _ in range(12):  # past the guard's warm-up: the real SSD serves its fit by then, the sham never does
        t = torch.randint(20, 980, (len(cams),), generator=g)
        eps = torch.randn(x.shape, generator=g)
        a = sds.step(x, emb, cams, render=r, t=t, eps=eps)
        b = sham.step(x, emb, cams, render=r, t=t, eps=eps)
        c = real.step(x, emb, cams, render=r, t=t, eps=eps)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)
        differs += int(not torch.allclose(c.grad, a.grad, rtol=1e-5, atol=1e-6))
        assert float(b.diagnostics.mu[0]) == 1.0 and float(b.diagnostics.mu[1:].abs().sum()) == 0.0
    assert differs > 0  # the real SSD did depart from SDS: the comparison has teeth
    # the sham's fit and guard were updated like the real SSD's (the same bookkeeping)
    assert torch.equal(sham.fit.state.n, real.fit.state.n) and int(sham.fit.state.n.sum()) > 0
    assert float(sham.guard.state.stats[2].sum()) > 0


def test_the_sham_mean_gradient_equals_sds_mean():
    """Monte Carlo over (t, eps) at a fixed x: the sham's mean gradient is SDS's (here even draw by draw)."""
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams, r = _scene()
    x = prior.encode_images(r.rgb)
    emb = prior.encode_prompt("a red cube")
    sham = build("ssd-sham", prior, None, "object")
    sds = build("sds", prior, None, "object")
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ma = mb = 0.0
    n = 40
    for _ in range(n):
        ma = ma + sham.step(x, emb, cams, render=r, generator=ga).grad / n
        mb = mb + sds.step(x, emb, cams, render=r, generator=gb).grad / n
    torch.testing.assert_close(ma, mb, rtol=1e-5, atol=1e-6)
    assert "ssd-sham" in SAME_MEAN_AS_SDS


@pytest.mark.parametrize("mode", ["object", "scene"])
def test_the_sham_costs_what_ssd_costs(mode):
    """Same prior calls, same estimator calls (the baselines run), same fit and guard updates as "ssd-filter"."""
    counts = {}
    for name in ("ssd-filter", "ssd-sham", "sds"):
        prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
        est = TinyConvEstimator()
        prior.predict_noise = _Counting(prior.predict_noise)
        counted = _Counting(est)
        guidance = build(name, prior, counted, mode)
        cams, r = _scene()
        x = prior.encode_images(r.rgb)
        emb = prior.encode_prompt("a red cube")
        g = torch.Generator().manual_seed(1)
        for _ in range(6):
            guidance.step(x, emb, cams, render=r, generator=g)
        fit = getattr(guidance, "fit", None)
        counts[name] = (prior.predict_noise.calls, prior.predict_noise.rows, counted.calls, counted.rows,
                        None if fit is None else fit.state.n.tolist(),
                        None if fit is None else float(guidance.guard.state.stats[2].sum()))
    assert counts["ssd-sham"] == counts["ssd-filter"]
    assert counts["ssd-filter"][:2] == counts["sds"][:2] == (6, 12)  # one prior call per step, one row per view
    if mode == "scene":
        assert counts["ssd-filter"][2] == 6  # the depth baseline's estimator runs every step, in the sham too
    assert build("ssd-sham", TinyPixelPrior(resolution=8, block_out_channels=(4, 8)), None, "object").config.sham
    assert not build("ssd-filter", TinyPixelPrior(resolution=8, block_out_channels=(4, 8)), None, "object").config.sham
