"""SSD's parts through their public methods: the fit of mu (mu_fit.py), the guard (guard.py), the
baselines' shared plumbing (baselines.py), the presets (ssd_config.py), and SSD's checkpoint state."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steinsplat.bench.methods import build as build_method
from steinsplat.cameras import orbit_cameras
from steinsplat.geometry.base import GeometryPrediction
from steinsplat.geometry.tiny import TinyConvEstimator
from steinsplat.gaussians import Gaussians
from steinsplat.guidance import (
    BASELINES, SSD, SSD_PRESETS, DepthBaseline, DepthPixelBaseline, FieldBaseline, FunctionBaseline, NormalBaseline,
    NormalPixelBaseline, SSDConfig,
)
from steinsplat.guidance.baselines import BaselineContext, EstimatorBaseline, ScalarBaseline, pearson
from steinsplat.guidance.guard import Guard, GuardState
from steinsplat.guidance.mu_fit import MuFit, moments, spd_solve
from steinsplat.priors.tiny import TinyPixelPrior
from steinsplat.render import render

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# ---------------------------------------------------------------------------- the fit of mu
def _two_cvs(coef: torch.Tensor, B=4, C=3, h=8, noise=0.0, seed=0):
    """CV_0 = eps, CV_1 = z (independent), eps_hat = coef[0, c] eps + coef[1, c] z (+ noise) per channel c."""
    g = torch.Generator().manual_seed(seed)
    eps, z = torch.randn(B, C, h, h, generator=g), torch.randn(B, C, h, h, generator=g)
    eps_hat = coef[0].view(1, C, 1, 1) * eps + coef[1].view(1, C, 1, 1) * z + noise * torch.randn(B, C, h, h, generator=g)
    return eps_hat, torch.stack([eps, z], 1)  # [B, C, h, w], [B, 2, C, h, w]


def test_least_squares_fit_recovers_a_known_optimum_per_channel_and_is_lagged():
    coef = torch.tensor([[0.7, 1.2, -0.4], [0.3, -0.5, 0.9]])  # [K, C]: the optimum of E||eps_hat - mu . CV||^2
    fit = MuFit(SSDConfig(ridge=1e-9, pool_updates=0), K=2, num_train_timesteps=1000)
    eps_hat, cv = _two_cvs(coef)
    fit.init_state(eps_hat)
    t = torch.full((4,), 420)
    w = torch.ones(4, 1, 1, 1)
    before = fit.current(t)  # [B, K, C, 1, 1]
    assert torch.equal(before[:, :, :, 0, 0], torch.tensor([1.0, 0.0]).view(1, 2, 1).expand(4, 2, 3))  # SDS's mu
    fit.update(eps_hat, cv, w, t)
    assert torch.equal(before, fit.current(t)) is False  # the update changes only later steps' mu
    mu = fit.current(t)[0, :, :, 0, 0]  # [K, C]
    assert torch.allclose(mu, coef, atol=1e-5), mu
    assert int(fit.state.n[fit.bins(t)[0]]) == 1 and int(fit.state.n.sum()) == 1  # only bin 4 was touched
    other = fit.current(torch.full((4,), 900))[0, :, :, 0, 0]
    assert torch.equal(other, torch.tensor([[1.0] * 3, [0.0] * 3]))


def test_least_squares_fit_converges_with_noise_and_the_ridge_pulls_towards_sds():
    coef = torch.tensor([[0.5] * 3, [0.8] * 3])
    fit = MuFit(SSDConfig(ridge=1e-6, pool_updates=0, ema_decay=0.9), K=2, num_train_timesteps=1000)
    t, w = torch.full((4,), 100), torch.ones(4, 1, 1, 1)
    for s in range(30):
        eps_hat, cv = _two_cvs(coef, noise=0.5, seed=s)
        if s == 0:
            fit.init_state(eps_hat)
        fit.update(eps_hat, cv, w, t)
    assert torch.allclose(fit.current(t)[0, :, :, 0, 0], coef, atol=0.05)
    # a huge ridge: mu is SDS's (1, 0), whatever the data
    stiff = MuFit(SSDConfig(ridge=1e6, pool_updates=0), K=2, num_train_timesteps=1000)
    eps_hat, cv = _two_cvs(coef)
    stiff.init_state(eps_hat)
    stiff.update(eps_hat, cv, w, t)
    assert torch.allclose(stiff.current(t)[0, :, :, 0, 0], torch.tensor([[1.0] * 3, [0.0] * 3]), atol=1e-3)


def test_optimizer_mode_moves_mu_towards_the_optimum():
    coef = torch.tensor([[0.2] * 3, [0.9] * 3])
    fit = MuFit(SSDConfig(mu_mode="optimizer", opt_lr=0.05, opt_steps=5), K=2, num_train_timesteps=1000)
    t, w = torch.full((4,), 300), torch.ones(4, 1, 1, 1)
    eps_hat, cv = _two_cvs(coef)
    fit.init_state(eps_hat)
    err0 = float((fit.current(t)[0, :, :, 0, 0] - coef).abs().max())
    for _ in range(20):
        fit.update(eps_hat, cv, w, t)
    err = float((fit.current(t)[0, :, :, 0, 0] - coef).abs().max())
    assert err < 0.5 * err0, (err0, err)
    assert int(fit.state.n[3]) == 20  # one count per update of the bin


def test_moments_agree_across_granularities():
    g = torch.Generator().manual_seed(1)
    cv, eps_hat = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    w2 = torch.rand(2, 1, 1, 1, 1, generator=g)
    A_p, b_p = moments(cv, eps_hat, w2, "pixel")  # [B, K, K, C, h, w], [B, K, C, h, w]
    A_c, b_c = moments(cv, eps_hat, w2, "channel")  # [B, K, K, C, 1, 1]
    A_s, b_s = moments(cv, eps_hat, w2, "scalar")  # [B, K, K, 1, 1, 1]
    assert A_p.shape == (2, 3, 3, 4, 5, 5) and A_c.shape == (2, 3, 3, 4, 1, 1) and A_s.shape == (2, 3, 3, 1, 1, 1)
    assert torch.allclose(A_p.mean((-2, -1), keepdim=True), A_c, atol=1e-6)
    assert torch.allclose(b_c.mean(-3, keepdim=True), b_s, atol=1e-6)
    assert torch.allclose(A_c[0, 1, 2, 3, 0, 0], (w2[0] * cv[0, 1, 3] * cv[0, 2, 3]).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="'scalar', 'channel' or 'pixel'"):
        moments(cv, eps_hat, w2, "per-view")


def test_spd_solve_matches_lapack():
    g = torch.Generator().manual_seed(2)
    for K in (1, 2, 4):
        R = torch.randn(7, K, K, generator=g)
        A = R @ R.transpose(1, 2) + 0.5 * torch.eye(K)
        b = torch.randn(7, K, generator=g)
        assert torch.allclose(spd_solve(A, b), torch.linalg.solve(A, b), atol=1e-5)


def test_mu_state_round_trips_through_state_tensors():
    coef = torch.tensor([[0.7] * 3, [0.3] * 3])
    for mode in ("least_squares", "optimizer"):
        cfg = SSDConfig(mu_mode=mode)
        fit = MuFit(cfg, K=2, num_train_timesteps=1000)
        assert fit.state_tensors() == {}
        eps_hat, cv = _two_cvs(coef)
        fit.init_state(eps_hat)
        t, w = torch.tensor([50, 150, 150, 700]), torch.ones(4, 1, 1, 1)
        fit.update(eps_hat, cv, w, t)
        saved = fit.state_tensors()
        assert {"ssd.A", "ssd.b", "ssd.n", "ssd.mu_table", "ssd.mu_param"} <= set(saved)
        assert any(k.startswith("ssd.opt.") for k in saved) == (mode == "optimizer")
        back = MuFit(cfg, K=2, num_train_timesteps=1000)
        back.load_state_tensors({k: v.clone() for k, v in saved.items()}, "cpu")
        assert saved.keys() == back.state_tensors().keys()
        assert all(torch.equal(saved[k], v) for k, v in back.state_tensors().items())
        fit.update(eps_hat, cv, w, t)  # the same next update from both
        back.update(eps_hat, cv, w, t)
        assert torch.equal(fit.current(t), back.current(t))
        with pytest.raises(ValueError, match="same baselines and timestep_bins"):
            MuFit(cfg, K=3, num_train_timesteps=1000).load_state_tensors(saved, "cpu")


# ---------------------------------------------------------------------------- the guard
def _guard(**kw):
    guard = Guard(SSDConfig(timestep_bins=4, guard_min_updates=2, guard_decay=0.5, guard_pool=1, **kw))
    guard.init_state("cpu")
    return guard


def test_guard_serves_sds_until_fitted_then_refuses_a_clearly_worse_fit():
    guard = _guard()
    grad_sds = torch.ones(2, 1, 2, 2)
    worse = torch.tensor([3.0, 3.2]).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()  # D = 8 and 9.24
    bins = torch.tensor([1, 1])
    few = torch.tensor([0, 2, 0, 0])  # bin 1 has guard_min_updates = 2 updates: not used yet, not measured
    assert torch.equal(guard.apply(worse, grad_sds, bins, few, update_state=True), grad_sds)
    assert torch.equal(guard.state.stats, torch.zeros(3, 4))
    fitted = torch.tensor([0, 3, 0, 0])
    out = guard.apply(worse, grad_sds, bins, fitted, update_state=True)
    assert torch.equal(out, worse)  # no evidence yet: the fit is served ...
    m, m2, n = guard.state.stats[:, 1]
    assert float(n) == 1 and float(m) == pytest.approx(8.62) and float(m2) == pytest.approx(8.62**2)  # ... and measured
    guard.apply(worse, grad_sds, bins, fitted, update_state=True)  # a second measurement
    assert torch.equal(guard.apply(worse, grad_sds, bins, fitted, update_state=False), grad_sds)  # m > z SE: SDS
    better = 0.5 * grad_sds
    g2 = _guard()
    for _ in range(3):
        out = g2.apply(better, grad_sds, bins, fitted, update_state=True)
    assert torch.equal(out, better)  # a better fit is kept


def test_guard_state_round_trips_and_old_checkpoints_start_fresh():
    guard = _guard()
    grad = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    guard.apply(2 * grad, grad, torch.tensor([0, 3]), torch.full((4,), 9), update_state=True)
    saved = guard.state_tensors()
    assert set(saved) == {"ssd.guard", "ssd.guard.counts", "ssd.guard.calls"} and saved["ssd.guard"].shape == (3, 4)
    assert float(saved["ssd.guard"][2].sum()) == 2 and saved["ssd.guard.counts"].shape == (5, 4)
    assert guard.summary()["views"] == 2 and guard.summary()["fit_vs_sds"] == pytest.approx(4.0)  # (2 g)^2 / g^2
    back = _guard()
    back.load_state_tensors({k: v.clone() for k, v in saved.items()}, "cpu")
    assert torch.equal(back.state.stats, saved["ssd.guard"]) and torch.equal(back.state.counts, saved["ssd.guard.counts"])
    back.load_state_tensors({"ssd.guard": saved["ssd.guard"].clone()}, "cpu")  # a checkpoint from before the counts
    assert torch.equal(back.state.stats, saved["ssd.guard"]) and float(back.state.counts.abs().sum()) == 0
    back.load_state_tensors({}, "cpu")
    assert torch.equal(back.state.stats, GuardState.zeros(4, "cpu").stats)
    with pytest.raises(ValueError, match="same timestep_bins"):
        back.load_state_tensors({"ssd.guard": torch.zeros(3, 10)}, "cpu")
    with pytest.raises(ValueError, match="guard_pool must be at least 1"):
        Guard(SSDConfig(guard_pool=0))
    with pytest.raises(ValueError, match="guard_alpha"):
        Guard(SSDConfig(guard_alpha=0.0))
    with pytest.raises(ValueError, match="guard_proxy"):
        Guard(SSDConfig(guard_proxy="image"))


# ---------------------------------------------------------------------------- the baselines
def test_pearson_on_known_cases():
    a = torch.arange(8.0).view(1, 8)
    assert float(pearson(a, 2 * a + 1)) == pytest.approx(1.0)
    assert float(pearson(a, -a)) == pytest.approx(-1.0)
    b = a.clone()
    b[0, 6:] = torch.tensor([-50.0, 80.0])  # outside the mask: ignored
    mask = torch.ones(1, 8)
    mask[0, 6:] = 0
    assert float(pearson(a, b, mask)) == pytest.approx(1.0)
    assert float(pearson(a, b)) < 0.9


def _scene(res=8):
    gs = Gaussians.random_ball(32, radius=0.4, opacity=0.6, generator=torch.Generator().manual_seed(0))
    cams = orbit_cameras([20.0, 30.0], [0.0, 120.0], 1.8, fovy=40.0, width=res, height=res)
    r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    return cams, r


def _ctx(prior, cams, r, t=(300, 600)):
    t = torch.tensor(t)
    return BaselineContext(t=t, alpha=prior.schedule.alpha_t(t), sigma=prior.schedule.sigma_t(t), cameras=cams,
                           render=r, prior=prior)


class _NormalsOnly:
    """An estimator that predicts normals and no depth."""

    input_space = "model"

    def __call__(self, image, t=None, cameras=None):
        n = torch.nn.functional.normalize(image + torch.tensor([0.0, 0.0, -3.0]).view(1, 3, 1, 1), dim=1)
        return GeometryPrediction(depth=None, normal=n)


@pytest.mark.parametrize("cls, other", [(DepthBaseline, "normal"), (DepthPixelBaseline, "normal-pixel")])
def test_estimator_baselines_share_their_checks(cls, other):
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams, r = _scene()
    x_t, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=f"the {cls.name} baseline needs the render: pass render="):
        cls(TinyConvEstimator()).control_variate(_ctx(prior, cams, None), x_t, eps)
    with pytest.raises(ValueError, match=f"predicts no depth; use the {other} baseline"):
        cls(_NormalsOnly()).control_variate(_ctx(prior, cams, r), x_t, eps)
    bl = cls(TinyConvEstimator(), mask_by_alpha=False, input_scale=0.5)
    assert isinstance(bl, EstimatorBaseline) and not bl.mask_by_alpha and bl.input_scale == 0.5
    cv, value = bl.control_variate(_ctx(prior, cams, r), x_t, eps)
    assert cv.shape == x_t.shape and value.shape == (2,) and torch.isfinite(cv).all()


def test_normal_baselines_take_the_depth_baselines_options():
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams, r = _scene()
    ctx = _ctx(prior, cams, r)
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for cls in (NormalBaseline, NormalPixelBaseline):
        build = (lambda bl: bl.build(ctx)) if cls is NormalBaseline else (lambda bl: bl.build_field(ctx))
        masked, everywhere = build(cls(TinyConvEstimator()))(x_t), build(cls(TinyConvEstimator(), mask_by_alpha=False))(x_t)
        assert not torch.allclose(masked, everywhere)  # the render leaves pixels uncovered
    assert NormalPixelBaseline(TinyConvEstimator(), seed=5).generator.get_state().equal(
        torch.Generator().manual_seed(5).get_state())  # FieldBaseline's options pass through


class _MeanDepthBaseline(EstimatorBaseline, ScalarBaseline):
    """The module docstring's recipe: a new baseline is a class like this (plus a BASELINES entry)."""

    name = "mean-depth"
    needs = "depth"
    instead = "normal"

    def build(self, ctx):
        self.require_render(ctx)
        return lambda x_t: self.predict(x_t, ctx).depth.flatten(1).mean(1)


def test_a_new_baseline_from_the_recipe_runs_in_ssd():
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams, r = _scene()
    x = prior.encode_images(r.rgb)
    ssd = SSD(prior, [_MeanDepthBaseline(TinyConvEstimator())])
    out = ssd.step(x, prior.encode_prompt("a red cube"), cams, render=r, generator=torch.Generator().manual_seed(0))
    assert out.diagnostics.phi.shape == (2, 1) and torch.isfinite(out.grad).all() and ssd.K == 2
    assert set(BASELINES) == {"depth", "normal", "depth-pixel", "normal-pixel"}
    assert all(issubclass(c, EstimatorBaseline) for c in BASELINES.values())
    assert {n for n, c in BASELINES.items() if issubclass(c, FieldBaseline)} == {"depth-pixel", "normal-pixel"}


# ---------------------------------------------------------------------------- presets
def test_presets_are_defined_once_and_used_by_bench_and_cli():
    from steinsplat.guidance import SSD_NOISE_PRESETS

    assert set(SSD_PRESETS) == {"filter", "constant"}  # one name per variant: --ssd-noise's
    assert SSD_PRESETS["constant"]() == SSDConfig()
    fil = SSD_PRESETS["filter"]()
    assert (fil.noise_kernel, fil.noise_mix_channels, fil.noise_maps) == (3, True, "poly2")
    fil.noise_kernel = 5
    assert SSD_PRESETS["filter"]().noise_kernel == 3  # a fresh config per call
    assert SSD_NOISE_PRESETS == {"filter": "filter", "constant": "constant"}
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    assert build_method("ssd-filter", prior, None, "object").config == SSD_PRESETS["filter"]()
    assert build_method("ssd-depth", prior, TinyConvEstimator(), "object").config == SSD_PRESETS["constant"]()


def test_the_old_names_of_the_ssd_variants_still_work_with_one_warning():
    from steinsplat.bench.methods import METHODS

    for old, new in (("steinsplat", "filter"), ("paper", "constant")):
        with pytest.warns(FutureWarning, match=f"SSD preset '{old}' is now '{new}'"):
            assert SSD_PRESETS[old]() == SSD_PRESETS[new]()
    assert "paper" in SSD_PRESETS and "paper" not in list(SSD_PRESETS)  # found, but not listed
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    with pytest.warns(FutureWarning, match="bench method 'ssd' is now 'ssd-filter'"):
        assert build_method("ssd", prior, None, "object").config == SSD_PRESETS["filter"]()
    assert "ssd" in METHODS and "ssd" not in list(METHODS)
    with pytest.raises(KeyError):
        SSD_PRESETS["loud"]


# ---------------------------------------------------------------------------- SSD's state
@pytest.mark.parametrize("preset", ["constant", "filter"])
def test_ssd_resumes_exactly_from_its_state_tensors(preset):
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams, r = _scene()
    x = prior.encode_images(r.rgb)
    emb = prior.encode_prompt("a red cube")
    make = lambda: SSD(prior, [DepthPixelBaseline(TinyConvEstimator(), seed=1),  # noqa: E731
                               FunctionBaseline(lambda x_t, t: (x_t**2).flatten(1).mean(1))], SSD_PRESETS[preset]())
    ssd = make()
    assert set(ssd.state_tensors()) == set()  # nothing before the first step
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ssd.step(x, emb, cams, render=r, generator=g)
    saved = {k: v.clone() for k, v in ssd.state_tensors().items()}
    assert {"ssd.A", "ssd.b", "ssd.n", "ssd.mu_table", "ssd.mu_param", "ssd.guard", "ssd.baseline0.rng"} <= set(saved)
    back = make()
    back.load_state_tensors(saved)
    assert all(torch.equal(saved[k], v) for k, v in back.state_tensors().items())
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):  # the fit, the guard and the probes all continue alike
        a = ssd.step(x, emb, cams, render=r, generator=ga)
        b = back.step(x, emb, cams, render=r, generator=gb)
        assert torch.equal(a.grad, b.grad)
    assert all(torch.equal(v, back.state_tensors()[k]) for k, v in ssd.state_tensors().items())


def test_ssd_choices_are_written_once_and_match_the_command_line():
    # the one rule of `baseline: auto` and the one map of `ssd_noise`, which generation and the bench share
    import typing

    from steinsplat.guidance import BASELINES, SSD_NOISE_PRESETS, baseline_kind, ssd_config_for
    from steinsplat.guidance_spec import SSDSpec

    hints = typing.get_type_hints(SSDSpec)
    assert set(typing.get_args(hints["noise"])) == set(SSD_NOISE_PRESETS)
    assert set(typing.get_args(hints["baseline"])) == {"auto", "none", *BASELINES}
    assert (baseline_kind("auto", "scene"), baseline_kind("auto", "object")) == ("depth", "none")
    assert baseline_kind("normal", "object") == "normal" and baseline_kind("none", "scene") == "none"
    with pytest.raises(ValueError, match="settle it first"):
        baseline_kind("auto", "auto")
    assert ssd_config_for("filter") == SSD_PRESETS["filter"]() and ssd_config_for("constant") == SSDConfig()
    assert ssd_config_for("filter", sham=True).sham and not SSD_PRESETS["filter"]().sham
    with pytest.raises(ValueError, match="ssd_noise"):
        ssd_config_for("loud")


@pytest.mark.parametrize("method, noise, kinds", [
    ("ssd-filter", "filter", {"object": [], "scene": ["depth"]}), ("ssd-depth", "constant", {"object": ["depth"]}),
    ("ssd-normal-pixel", "constant", {"object": ["normal-pixel"]}), ("filter+depth", "filter", {"scene": ["depth"]}),
    ("ssd-sham", "filter", {"object": [], "scene": ["depth"]})])
def test_bench_ssd_methods_are_built_from_the_same_choices(method, noise, kinds):
    from steinsplat.guidance import BASELINES

    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    for mode, names in kinds.items():
        g = build_method(method, prior, TinyConvEstimator(), mode)
        assert [type(b) for b in g.baselines] == [BASELINES[n] for n in names]
        assert g.config == dataclasses.replace(SSD_PRESETS[noise](),
                                               sham=method == "ssd-sham")
