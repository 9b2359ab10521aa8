"""Guidance estimators: Stein's identity, SDS inside the SSD family, equal means on a toy with a
closed-form score, variance reduction, and gradient flow through the renderer (tiny, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steinsplat.cameras import orbit_cameras
from steinsplat.gaussians import Gaussians
from steinsplat.guidance import (
    GUIDANCE, SDS, SSD, VSD, DepthBaseline, FunctionBaseline, GuidanceConfig, NormalBaseline, SSDConfig, VSDConfig,
    parameter_gradient_variance, stein_control_variate, surrogate_loss,
)
from steinsplat.geometry.tiny import TinyConvEstimator
from steinsplat.priors.base import TimestepRange
from steinsplat.priors.tiny import AnalyticGaussianPrior, TinyPixelPrior
from steinsplat.render import render



pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

# ---------------------------------------------------------------------------- Stein's identity
def _wrong_sign_cv(phi, x_t, eps, sigma):
    """The form printed on the project page: eps * phi + sigma * grad phi (not zero-mean)."""
    x = x_t.detach().requires_grad_(True)
    val = phi(x)
    (g,) = torch.autograd.grad(val.sum(), x)
    return eps * val.detach().view(-1, 1, 1, 1) + sigma * g


def _zero_mean_z(cv_fn, phi, x, alpha, sigma, n=16000, chunk=4000, seed=0):
    """Per-element z-scores |mean| / SE of CV over n draws of eps at x_t = alpha x + sigma eps."""
    g = torch.Generator().manual_seed(seed)
    s1 = torch.zeros_like(x)
    s2 = torch.zeros_like(x)
    for _ in range(n // chunk):
        eps = torch.randn((chunk, *x.shape), generator=g)
        x_t = alpha * x + sigma * eps
        cv = cv_fn(phi, x_t, eps, sigma)
        assert cv.shape == x_t.shape
        s1 += cv.sum(0)
        s2 += (cv * cv).sum(0)
    mean = s1 / n
    se = ((s2 / n - mean**2).clamp_min(1e-12) / n).sqrt()
    return (mean.abs() / se)


def _phis(D: int):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(D, generator=g) / D**0.5
    mlp = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return {
        "sum_squared": lambda x: x.flatten(1).sum(1) ** 2 / D,
        "tanh_linear": lambda x: torch.tanh(x.flatten(1) @ v),
        "random_mlp": lambda x: mlp(x.flatten(1)).squeeze(1),
    }


@pytest.mark.parametrize("name", ["sum_squared", "tanh_linear", "random_mlp"])
def test_stein_control_variate_has_zero_mean_and_wrong_sign_is_caught(name):
    torch.manual_seed(0)
    x = 0.5 + 0.5 * torch.randn(2, 4, 4)  # [C, H, W], non-zero mean so that E[grad phi] != 0
    alpha, sigma = 0.8, 0.6
    phi = _phis(x.numel())[name]
    z = _zero_mean_z(stein_control_variate, phi, x, alpha, sigma)
    # zero mean: |mean| / SE is half-normal (average ~0.8); allow 4 SE per element on average, 6 at most
    assert float(z.mean()) < 4.0 and float(z.max()) < 6.0, f"{name}: E[CV] != 0 (mean z {float(z.mean()):.2f})"
    assert float(z.mean()) < 1.5  # in fact much tighter
    z_wrong = _zero_mean_z(_wrong_sign_cv, phi, x, alpha, sigma)
    detected = not (float(z_wrong.mean()) < 4.0 and float(z_wrong.max()) < 6.0)
    assert detected, f"{name}: the wrong-sign form passed the zero-mean test (mean z {float(z_wrong.mean()):.2f})"


def test_stein_control_variate_shapes_and_constant_phi():
    x_t = torch.randn(3, 2, 4, 4)
    eps = torch.randn_like(x_t)
    cv = stein_control_variate(lambda x: torch.ones(x.shape[0]), x_t, eps, torch.rand(3))
    assert torch.equal(cv, eps)  # phi = 1: CV = eps * 1 - sigma * 0
    with pytest.raises(ValueError, match=r"\[B\]"):
        stein_control_variate(lambda x: x.sum(), x_t, eps, 0.5)


# ---------------------------------------------------------------------------- the toy with a closed-form score
def _toy(seed: int = 0, C: int = 3, R: int = 4, t_range: tuple[float, float] = (0.02, 0.98)):
    g = torch.Generator().manual_seed(seed)
    m = 0.5 * torch.randn(C, R, R, generator=g)
    prior = AnalyticGaussianPrior(m, std=0.5, timesteps=TimestepRange(t_range[0], t_range[1], anneal="none"))
    x = (m + 0.8 * torch.randn(C, R, R, generator=g)).unsqueeze(0)  # an off-manifold "render"
    return prior, x


def _quadratic_phi(prior):
    def phi(x_t, t):  # a function of x_t and t only (allowed), correlated with the noise
        a = prior.schedule.alpha_t(t)
        return ((x_t - a * prior.mean) ** 2).flatten(1).mean(1)

    return phi


def test_ssd_with_phi_one_and_mu_one_is_exactly_sds():
    prior, x = _toy()
    B = 4
    xs = x.expand(B, -1, -1, -1)
    cams = orbit_cameras([20.0] * B, [0.0, 90.0, 180.0, 270.0], 1.8, width=4, height=4)
    emb = prior.encode_prompt("toy")
    t = torch.tensor([20, 300, 600, 950])
    eps = torch.randn(xs.shape, generator=torch.Generator().manual_seed(3))
    sds = SDS(prior).step(xs, emb, cams, t=t, eps=eps).grad
    # the family's own constant term with mu = 1 (SSD's initial mu) ...
    ssd0 = SSD(prior, [FunctionBaseline(_quadratic_phi(prior))]).step(xs, emb, cams, t=t, eps=eps).grad
    # ... and an explicit phi = 1 baseline with mu = 1 (constant term switched off)
    one = FunctionBaseline(lambda x_t, t: torch.ones(x_t.shape[0]), name="one")
    ssd1 = SSD(prior, [one], SSDConfig(mu_mode="fixed", mu_fixed=(0.0, 1.0))).step(xs, emb, cams, t=t, eps=eps).grad
    assert torch.equal(ssd0, sds)
    assert torch.equal(ssd1, sds)


class AnalyticParticleScore:
    """eps_psi of q = uniform mixture of deltas at the particles (the exact score of the renders)."""

    def __init__(self, prior, particles):
        self.prior, self.particles = prior, particles  # [P, C, H, W]

    def predict(self, x_t, t, embeds, cameras):
        a, s = self.prior.schedule.alpha_t(t), self.prior.schedule.sigma_t(t)  # [B, 1, 1, 1]
        diff = x_t[:, None] - a[:, None] * self.particles[None]  # [B, P, C, H, W]
        logits = -(diff**2).flatten(2).sum(-1) / (2 * s.view(-1, 1) ** 2)  # [B, P]
        r = torch.softmax(logits, dim=1)
        return (r[:, :, None, None, None] * diff).sum(1) / s  # [B, C, H, W]

    def update(self, x, embeds, cameras, generator):
        return None


def _paired_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|mean(a - b)| / SE per element over the first axis (same noise for a and b)."""
    d = a - b
    return d.mean(0).abs() / (d.std(0) / d.shape[0] ** 0.5).clamp_min(1e-12)


def test_sds_vsd_ssd_have_the_same_mean_on_the_gaussian_toy():
    prior, _ = _toy()
    P, Rep = 4, 8  # 4 particles, each drawn 8 times per step: batch 32
    g = torch.Generator().manual_seed(5)
    particles = prior.mean[None] + 0.8 * torch.randn(P, *prior.mean.shape, generator=g)  # [P, C, H, W]
    xs = particles.repeat(Rep, 1, 1, 1)  # [Rep * P, C, H, W]
    cams = orbit_cameras([20.0] * P * Rep, [0.0, 90.0, 180.0, 270.0] * Rep, 1.8, width=4, height=4)
    emb = prior.encode_prompt("toy")
    sds = SDS(prior)
    vsd = VSD(prior, VSDConfig(), particle_score=AnalyticParticleScore(prior, particles))
    ssd = SSD(prior, [FunctionBaseline(_quadratic_phi(prior))])  # mu learnt on the way (lagged, unbiased)
    G = {"sds": [], "vsd": [], "ssd": []}
    for _ in range(250):
        t = torch.randint(20, 980, (P * Rep,), generator=g)
        eps = torch.randn(xs.shape, generator=g)
        for name, est in (("sds", sds), ("vsd", vsd), ("ssd", ssd)):
            G[name].append(est.step(xs, emb, cams, t=t, eps=eps).grad.view(Rep, P, *xs.shape[1:]))
    S = {k: torch.cat(v) for k, v in G.items()}  # [N, P, C, H, W]
    # SSD vs SDS: same mean per particle and element
    z = _paired_z(S["ssd"], S["sds"])
    assert float(z.mean()) < 1.5 and float(z.max()) < 5.0, float(z.mean())
    # VSD vs SDS: same mean summed over the particles (per particle they differ by the repulsion term)
    z = _paired_z(S["vsd"].sum(1), S["sds"].sum(1))
    assert float(z.mean()) < 1.5 and float(z.max()) < 5.0, float(z.mean())
    # ... and the repulsion is really there (the test is not vacuous)
    z_pp = _paired_z(S["vsd"], S["sds"])
    assert float(z_pp.mean()) > 5.0


def _variance_after_warmup(est, prior, x, steps=240, warm=80, B=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = x.expand(B, -1, -1, -1)
    cams = orbit_cameras([20.0] * B, [0.0] * B, 1.8, width=4, height=4)
    emb = prior.encode_prompt("toy")
    out = []
    for i in range(steps):
        o = est.step(xs, emb, cams, generator=g)
        if i >= warm:
            out.append(o.grad)
    return float(torch.cat(out).var(0).mean())


@pytest.mark.parametrize("t_fixed", [None, 200, 500])
def test_optimised_ssd_has_lower_variance_than_sds_and_least_squares_wins(t_fixed):
    if t_fixed is None:
        prior, x = _toy()
    else:
        f = t_fixed / 999
        prior, x = _toy(t_range=(f, f))
    phi = _quadratic_phi(prior)
    v_sds = _variance_after_warmup(SDS(prior), prior, x)
    pix = dict(guard_pool=1)  # the toy's parameters are its pixels: the guard judges them one by one
    v_ls = _variance_after_warmup(SSD(prior, [FunctionBaseline(phi)], SSDConfig(mu_mode="least_squares", **pix)), prior, x)
    v_opt = _variance_after_warmup(SSD(prior, [FunctionBaseline(phi)], SSDConfig(mu_mode="optimizer", **pix)), prior, x)
    print(f"\nt={t_fixed}: variance SDS {v_sds:.3e}  SSD least-squares {v_ls:.3e} ({v_ls / v_sds:.3f}x)  "
          f"SSD optimizer {v_opt:.3e} ({v_opt / v_sds:.3f}x)")
    assert SSDConfig().mu_mode == "least_squares"  # the default is the winner below
    assert v_ls <= v_opt
    if t_fixed is None:
        # random t: the spread of E[grad | t] over t is no noise a control variate can remove
        assert v_ls < 0.95 * v_sds
    else:
        assert v_ls < 0.05 * v_sds


def test_running_and_repeated_draw_diagnostics():
    prior, x = _toy()
    cams = orbit_cameras([20.0] * 2, [0.0, 90.0], 1.8, width=4, height=4)
    est = SDS(prior, GuidanceConfig(variance_draws=4))
    emb = prior.encode_prompt("toy")
    for _ in range(3):
        out = est.step(x.expand(2, -1, -1, -1), emb, cams)
    d = out.diagnostics
    assert d.mc_variance is not None and d.mc_variance > 0
    assert d.running_variance is not None and d.running_variance >= 0
    assert d.t.shape == (2,) and d.weight.shape == (2,)
    # the surrogate's gradient is exactly grad
    xx = x.expand(2, -1, -1, -1).clone().requires_grad_(True)
    surrogate_loss(xx, out.grad).backward()
    assert torch.allclose(xx.grad, out.grad)


# ---------------------------------------------------------------------------- through the renderer
def _scene():
    g = torch.Generator().manual_seed(0)
    gs = Gaussians.random_ball(48, radius=0.4, opacity=0.5, generator=g)
    with torch.no_grad():  # anisotropic and rotated, so that rotations matter
        gs.splats["scales"] += 0.4 * torch.randn(gs.splats["scales"].shape, generator=g)
        gs.splats["quats"] += 0.3 * torch.randn(gs.splats["quats"].shape, generator=g)
    cams = orbit_cameras([20.0, 30.0], [0.0, 120.0], 1.8, fovy=40.0, width=16, height=16)
    return gs, cams


@pytest.mark.parametrize("backend", ["torch", pytest.param("gsplat", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="the gsplat backend needs CUDA")])])
def test_ssd_gradients_reach_every_gaussian_parameter_and_never_the_prior(backend):
    gs, cams = _scene()
    prior = TinyPixelPrior(resolution=16)
    est = TinyConvEstimator()
    ssd = SSD(prior, [DepthBaseline(est), NormalBaseline(est)])
    emb = prior.encode_prompt("a red cube")
    if backend == "gsplat":  # render on the GPU; the tiny prior and estimator stay on the CPU (.cpu() keeps autograd)
        gs = gs.to("cuda")
        r = render(gs, cams.to("cuda"), background=(1.0, 1.0, 1.0), backend="gsplat")
        out_r = dataclasses.replace(r, rgb=r.rgb.cpu(), alpha=r.alpha.cpu(), depth=r.depth.cpu(), normal=r.normal.cpu())
    else:
        out_r = render(gs, cams, background=(1.0, 1.0, 1.0), backend=backend)
    x = prior.encode_images(out_r.rgb)  # [B, 3, 16, 16]
    out = ssd.step(x, emb, cams, render=out_r, generator=torch.Generator().manual_seed(0))
    assert out.grad.shape == x.shape and torch.isfinite(out.grad).all()
    assert out.diagnostics.phi is not None and out.diagnostics.phi.shape == (2, 2)
    x.backward(out.grad)
    for name, p in gs.splats.items():
        if p.numel() == 0:  # shN at SH degree 0
            continue
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"no gradient reached {name}"
    for mod in (prior, est):
        for p in mod.parameters():
            assert not p.requires_grad and p.grad is None


def test_vsd_trains_its_lora_and_leaves_the_prior_alone():
    gs, cams = _scene()
    prior = TinyPixelPrior(resolution=16, prediction_type="v_prediction")
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    vsd = VSD(prior, VSDConfig(lora_steps=2))
    lora = vsd.particle_score.trainable_parameters()
    assert lora and all("lora" in n for n, p in vsd.particle_score.unet.named_parameters() if p.requires_grad)
    lora0 = [p.detach().clone() for p in lora]
    emb = prior.encode_prompt("a red cube")
    out_r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    x = prior.encode_images(out_r.rgb)
    out = vsd.step(x, emb, cams, generator=torch.Generator().manual_seed(0))
    assert out.diagnostics.lora_loss is not None and out.grad.shape == x.shape
    x.backward(out.grad)
    assert gs.splats["means"].grad is not None and float(gs.splats["means"].grad.abs().sum()) > 0
    assert any(not torch.equal(a, b) for a, b in zip(lora0, lora))  # the LoRA moved
    for k, v in prior.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in prior.parameters())


def test_parameter_gradient_variance_helper():
    gs, cams = _scene()
    prior = TinyPixelPrior(resolution=16)
    emb = prior.encode_prompt("a red cube")

    def make_x():
        r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
        return prior.encode_images(r.rgb), r

    pv = parameter_gradient_variance(SDS(prior), dict(gs.splats), make_x, emb, cams, draws=3)
    assert pv.total > 0 and pv.draws == 3 and set(pv.per_parameter) == set(gs.splats)
    assert pv.seconds_per_draw > 0


def test_guidance_mapping_is_explicit():
    assert GUIDANCE == {"sds": SDS, "vsd": VSD, "ssd": SSD}


@pytest.mark.parametrize("mode", ["least_squares", "optimizer"])
@pytest.mark.parametrize("granularity", ["scalar", "pixel"])
def test_ssd_mu_options_run_and_keep_their_shapes(mode, granularity):
    prior, x = _toy()
    cams = orbit_cameras([20.0] * 3, [0.0, 90.0, 180.0], 1.8, width=4, height=4)
    ssd = SSD(prior, [FunctionBaseline(_quadratic_phi(prior))], SSDConfig(mu_mode=mode, mu_granularity=granularity))
    emb = prior.encode_prompt("toy")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = ssd.step(x.expand(3, -1, -1, -1), emb, cams, generator=g)
    assert out.grad.shape == (3, 3, 4, 4) and torch.isfinite(out.grad).all()
    assert out.diagnostics.mu.shape == (2,)
    assert ssd.current_mu(out.diagnostics.t).shape == ((3, 2, 1, 1, 1) if granularity == "scalar" else (3, 2, 3, 4, 4))


@pytest.mark.parametrize("kind", ["ssd", "vsd"])
def test_guidance_state_round_trip_resumes_exactly(kind):
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams = orbit_cameras([20.0, 40.0], [0.0, 90.0], 1.8, width=8, height=8)
    emb = prior.encode_prompt("a red cube")
    x = torch.rand(2, 3, 8, 8) * 2 - 1

    def make():
        if kind == "ssd":
            return SSD(prior, [FunctionBaseline(lambda x_t, t: torch.tanh(x_t.flatten(1).mean(1)))])
        return VSD(prior, VSDConfig())

    a = make()
    for i in range(3):
        a.step(x, emb, cams, generator=torch.Generator().manual_seed(i))
    b = make()
    b.load_state_tensors({k: v.clone() for k, v in a.state_tensors().items()})
    assert set(a.state_tensors()) == set(b.state_tensors()) and len(a.state_tensors()) > 3
    for i in range(3, 5):
        ga = a.step(x, emb, cams, generator=torch.Generator().manual_seed(i)).grad
        gb = b.step(x, emb, cams, generator=torch.Generator().manual_seed(i)).grad
        assert torch.allclose(ga, gb, atol=1e-6)


# ---------------------------------------------------------------------------- step 3b: modulated shifted noises
def test_shift_noise_matches_a_one_hot_convolution():
    from steinsplat.guidance.noise_cv import noise_shifts, shift_noise

    eps = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    shifts = noise_shifts(3, True, 3)
    assert shifts[0] == (0, 0, 0) and len(shifts) == 27 and len(set(shifts)) == 27
    for c, dy, dx in shifts:
        k = torch.zeros(3, 3, 3, 3)  # [out, in, ky, kx]: out channel o reads channel (o + c) % 3 at (dy, dx)
        for o in range(3):
            k[o, (o + c) % 3, 1 + dy, 1 + dx] = 1.0
        ref = torch.nn.functional.conv2d(eps, k, padding=1)  # zero padding = zero outside the image
        assert torch.equal(shift_noise(eps, c, dy, dx), ref), (c, dy, dx)
    with pytest.raises(ValueError, match="odd"):
        noise_shifts(2, False, 3)


class CorrelatedGaussianPrior(AnalyticGaussianPrior):
    """Data ~ N(m, s^2 L L^T) with L mixing neighbours and channels: eps_hat is linear in x_t but
    not diagonal, eps_hat = sigma_t Sigma_t^-1 (x_t - alpha_t m), Sigma_t = alpha_t^2 Sigma + sigma_t^2 I."""

    def __init__(self, mean, std, timesteps=None):
        super().__init__(mean, std, timesteps)
        C, h, w = mean.shape
        D = C * h * w
        eye = torch.eye(D).view(D, C, h, w)
        blur = torch.nn.functional.avg_pool2d(eye, 3, stride=1, padding=1, count_include_pad=False)
        L = (eye + 2.0 * blur + 0.8 * torch.roll(blur, 1, dims=1)).view(D, D).T  # columns: images of the basis
        self.register_buffer("cov", std**2 * L @ L.T)  # [D, D]

    def denoise(self, x_t, t, embeds, cameras=None, guidance_scale=1.0, unet=None, class_labels=None, raw=False):
        from steinsplat.priors.base import as_timesteps

        t = as_timesteps(t, x_t.shape[0], x_t.device)
        a, s = self.schedule.alpha_t(t).view(-1, 1, 1), self.schedule.sigma_t(t).view(-1, 1, 1)  # [B, 1, 1]
        D = self.cov.shape[0]
        cov_t = a * a * self.cov + s * s * torch.eye(D)  # [B, D, D]
        r = (x_t - a.view(-1, 1, 1, 1) * self.mean).flatten(1).unsqueeze(-1)  # [B, D, 1]
        return (s * torch.linalg.solve(cov_t, r)).view_as(x_t)


def _correlated_toy(t_range):
    g = torch.Generator().manual_seed(0)
    m = 0.5 * torch.randn(3, 6, 6, generator=g)
    prior = CorrelatedGaussianPrior(m, std=0.5, timesteps=TimestepRange(t_range[0], t_range[1], anneal="none"))
    return prior, (m + 0.8 * torch.randn(3, 6, 6, generator=g)).unsqueeze(0)


def test_shifted_noise_control_variates_cancel_a_correlated_denoiser():
    f = 300 / 999
    prior, x = _correlated_toy((f, f))
    v_sds = _variance_after_warmup(SDS(prior), prior, x, steps=160, warm=60)
    v_const = _variance_after_warmup(SSD(prior), prior, x, steps=160, warm=60)
    v_conv = _variance_after_warmup(SSD(prior, config=SSDConfig(noise_kernel=3, noise_mix_channels=True)), prior, x,
                                    steps=160, warm=60)
    print(f"\nvariance at t=300: SDS {v_sds:.3e}, constant term {v_const / v_sds:.3f}x, 3x3 filter {v_conv / v_sds:.3f}x")
    assert v_conv < 0.5 * v_const  # the diagonal mu_0 cannot cancel an off-diagonal Jacobian; the filter can
    assert v_const < v_sds


def test_modulated_noise_control_variates_keep_the_mean():
    prior, x = _correlated_toy((0.02, 0.98))
    B = 16
    xs = x.expand(B, -1, -1, -1)
    cams = orbit_cameras([20.0] * B, [0.0] * B, 1.8, width=6, height=6)
    emb = prior.encode_prompt("toy")
    g = torch.Generator().manual_seed(2)
    sds = SDS(prior)
    ssd = SSD(prior, [FunctionBaseline(_quadratic_phi(prior))],
              SSDConfig(noise_kernel=3, noise_mix_channels=True, noise_maps="poly2"))
    assert ssd.K == 27 * (2 + 3 + 6) + 1
    G_sds, G_ssd = [], []
    for _ in range(150):
        t = torch.randint(20, 980, (B,), generator=g)
        eps = torch.randn(xs.shape, generator=g)
        G_sds.append(sds.step(xs, emb, cams, t=t, eps=eps).grad)
        G_ssd.append(ssd.step(xs, emb, cams, t=t, eps=eps).grad)
    a, b = torch.cat(G_ssd), torch.cat(G_sds)
    z = _paired_z(a, b)
    assert float(z.mean()) < 1.5 and float(z.max()) < 5.0, float(z.mean())
    assert not torch.equal(a, b)  # the control variates were really used


@pytest.mark.parametrize("mix", [False, True])
def test_noise_features_agree_with_the_materialised_control_variates(mix):
    from steinsplat.guidance.noise_cv import NoiseFeatures, modulated_noises, noise_maps, noise_shifts
    from steinsplat.guidance.mu_fit import moments as _moments

    g = torch.Generator().manual_seed(0)
    B, C, h, w = 3, 3, 6, 5
    eps, x = torch.randn(B, C, h, w, generator=g), torch.rand(B, C, h, w, generator=g) * 2 - 1
    maps = noise_maps("poly2", x, None)
    shifts = noise_shifts(3, mix, C)
    ref = modulated_noises(eps, maps, shifts)  # [B, K_noise, C, h, w]
    feats = NoiseFeatures(eps, maps, shifts, 3)
    assert feats.K == ref.shape[1] == len(maps) * len(shifts)
    mu = torch.randn(B, feats.K, C, generator=g)
    assert torch.allclose(feats.combine(mu), (mu[..., None, None] * ref).sum(1), atol=1e-5)
    others = torch.randn(B, 2, C, h, w, generator=g)  # two baseline CVs
    eps_hat, w2 = torch.randn(B, C, h, w, generator=g), torch.rand(B, generator=g)
    residual = eps_hat - feats.combine(mu)
    A, b = feats.moments(eps_hat, others, w2, residual)
    A_ref, b_ref = _moments(torch.cat([ref, others], 1), eps_hat, w2.view(B, 1, 1, 1, 1), "channel")
    A_ref, b_ref = A_ref[..., 0, 0], b_ref[..., 0, 0]  # [B, K, K, C], [B, K, C]
    Kn = feats.K
    # the noise terms' b: the exact E[w^2 eps CV_i] (= E[A]_(i, 0), eps being CV_0) plus the sampled
    # moments of SDS's residual eps_hat - eps; its expectation is the sampled b's ...
    b_r = _moments(ref, eps_hat - eps, w2.view(B, 1, 1, 1, 1), "channel")[1][..., 0, 0]  # [B, Kn, C]
    assert torch.allclose(b[:, :Kn], A[:, :Kn, 0] + b_r, atol=1e-5)
    assert not torch.allclose(b[:, :Kn], b_ref[:, :Kn], atol=1e-3)  # ... but not its noise
    # the baselines' block is sampled (their b against the residual: the second stage), the cross block is 0 ...
    b_res = _moments(others, residual, w2.view(B, 1, 1, 1, 1), "channel")[1][..., 0, 0]
    assert torch.allclose(b[:, Kn:], b_res, atol=1e-5)
    assert torch.allclose(A[:, Kn:, Kn:], A_ref[:, Kn:, Kn:], atol=1e-5) and float(A[:, :Kn, Kn:].abs().max()) == 0.0
    # ... the noise-noise block is its exact expectation over eps: compare with a Monte-Carlo mean
    draws = 400
    acc = torch.zeros_like(A_ref[:, :Kn, :Kn])
    for _ in range(draws):
        e = torch.randn(B, C, h, w, generator=g)
        acc += _moments(modulated_noises(e, maps, shifts), eps_hat, w2.view(B, 1, 1, 1, 1), "channel")[0][..., 0, 0]
    mc = acc / draws
    scale = float(A[:, :Kn, :Kn].abs().max())
    assert float((mc - A[:, :Kn, :Kn]).abs().max()) < 0.15 * scale  # MC error ~ scale * 3 / sqrt(draws * pixels)
    assert float((mc - A[:, :Kn, :Kn]).abs().mean()) < 0.01 * scale
    assert float((A_ref[:, :Kn, :Kn] - A[:, :Kn, :Kn]).abs().mean()) > 0.5 * float((mc - A[:, :Kn, :Kn]).abs().mean())  # one draw is far noisier


def test_noise_filter_fit_samples_only_the_residual():
    """With eps_hat = eps (a perfect denoiser: SDS's gradient is 0), the filter's least-squares fit is
    exactly SDS's mu (1, 0, ..., 0) after a single update: the noise-noise moments are exact and only
    eps_hat - eps is sampled. Fitting the sampled E[w^2 eps_hat CV] instead would give a mu of
    order 1 / sqrt(pixels) away from it, which adds variance (the bench saw up to 12x SDS's at high t).
    With a residual that is a known filter of the noise, one update finds that filter."""
    from steinsplat.guidance.noise_cv import NoiseFeatures, noise_maps, shift_noise

    prior, _ = _toy()
    g = torch.Generator().manual_seed(3)
    B, C, h = 2, 3, 32
    xs = torch.rand(B, C, h, h, generator=g)
    eps = torch.randn(B, C, h, h, generator=g)
    t = torch.tensor([300, 310])  # one bin
    w = torch.ones(B, 1, 1, 1)
    for maps, eps_hat, expect in (
        ("poly2", eps.clone(), {(0, 0, 0): 1.0}),
        ("none", eps + 0.3 * shift_noise(eps, 1, 0, 1), {(0, 0, 0): 1.0, (1, 0, 1): 0.3}),  # reads channel c+1, one pixel right
    ):
        ssd = SSD(prior, [], SSDConfig(noise_kernel=3, noise_mix_channels=True, noise_maps=maps, ridge=1e-6))
        ssd.init_state(xs)
        feats = NoiseFeatures(eps, noise_maps(maps, xs, None), ssd.shifts, 3)
        ssd.fit.update(eps_hat, None, w, t, noise=feats, residual=None)
        mu = ssd.fit.state.mu_table[int(ssd.fit.bins(t)[0])][..., 0, 0]  # [K, C]
        target = torch.zeros_like(mu)
        for shift, v in expect.items():
            target[ssd.shifts.index(shift)] = v
        tol = 1e-4 if maps == "poly2" else 0.03  # exact / one draw of a sampled residual
        assert float((mu - target).abs().max()) < tol, (maps, float((mu - target).abs().max()))


def test_bins_with_few_updates_borrow_their_neighbours_moments():
    """pool_updates: a bin with fewer updates is solved from its own and its nearest bins' moments
    (each scaled by 1 / trace, weighted by its updates); a bin with enough updates from its own alone."""
    prior, x = _toy()
    ssd = SSD(prior, [FunctionBaseline(_quadratic_phi(prior))], SSDConfig(pool_updates=10, timestep_bins=5))
    ssd.init_state(x)
    K = ssd.K
    g = torch.Generator().manual_seed(0)
    for k in range(5):  # distinct SPD moments per bin, at different scales
        R = torch.randn(K, K, generator=g)
        ssd.fit.state.A[k] = (R @ R.T + K * torch.eye(K)).mul(10.0**k).view(K, K, 1, 1, 1).expand_as(ssd.fit.state.A[k])
        ssd.fit.state.b[k] = torch.randn(K, generator=g).mul(10.0**k).view(K, 1, 1, 1).expand_as(ssd.fit.state.b[k])
    ssd.fit.state.n[:] = torch.tensor([12, 4, 4, 0, 3])
    A, b = ssd.fit.pooled_moments(torch.tensor([0, 1, 3, 4]))
    assert torch.equal(A[0], ssd.fit.state.A[0]) and torch.equal(b[0], ssd.fit.state.b[0])  # 12 >= 10: its own
    tr = [float(ssd.fit.state.A[j, :, :, 0].diagonal().sum()) for j in range(5)]
    # bin 1: itself (4), then bin 0 (12): 16 >= 10
    exp = 4 / tr[1] * ssd.fit.state.A[1] + 12 / tr[0] * ssd.fit.state.A[0]
    assert torch.allclose(A[1], exp, rtol=1e-5)
    # bin 3 has no updates: bins 2 (4) and 4 (3), then 1 (4): 11 >= 10
    exp_b = 4 / tr[2] * ssd.fit.state.b[2] + 3 / tr[4] * ssd.fit.state.b[4] + 4 / tr[1] * ssd.fit.state.b[1]
    assert torch.allclose(b[2], exp_b, rtol=1e-5)
    # the solve uses them: bin 1's mu is the pooled least-squares solution (up to the ridge)
    ssd.fit.solve(torch.tensor([1]))
    Ap, bp = A[1][:, :, 0, 0, 0], b[1][:, 0, 0, 0]
    assert torch.allclose(ssd.fit.state.mu_table[1][:, 0, 0, 0], torch.linalg.solve(Ap, bp), rtol=1e-2, atol=1e-3)


def test_guard_falls_back_to_sds_where_the_fitted_mu_does_worse():
    """At t = 500 on the toy, Adam on mu overshoots (about 2.5x SDS's variance without the guard);
    the guard measures that on later steps and serves SDS's gradient in that bin instead."""
    f = 500 / 999
    prior, x = _toy(t_range=(f, f))
    phi = _quadratic_phi(prior)
    v_sds = _variance_after_warmup(SDS(prior), prior, x)
    cfg = dict(mu_mode="optimizer", opt_lr=0.5, guard_pool=1)  # the toy's parameters are its pixels
    v_raw = _variance_after_warmup(SSD(prior, [FunctionBaseline(phi)], SSDConfig(guard=False, **cfg)), prior, x)
    v_guard = _variance_after_warmup(SSD(prior, [FunctionBaseline(phi)], SSDConfig(guard=True, **cfg)), prior, x)
    assert v_raw > 1.3 * v_sds  # the unguarded fit really is worse here ...
    assert v_guard < 1.05 * v_sds  # ... and the guard keeps SSD at SDS's level


@pytest.mark.parametrize("pool, expect_fit", [(1, False), (8, True)])
def test_guard_judges_the_pooled_gradient(pool, expect_fit):
    """The guard compares second moments after f x f average pooling (what the Gaussians' parameters
    see: sums over footprints). A fitted gradient that halves the smooth part but adds a checkerboard
    is worse element by element (10 vs 5) and better pooled (1 vs 4): pool 1 keeps SDS, pool 8 the fit."""
    prior, _ = _toy()
    ssd = SSD(prior, [FunctionBaseline(_quadratic_phi(prior))], SSDConfig(guard_pool=pool, guard_min_updates=0))
    h = 16
    ssd.init_state(torch.zeros(1, 3, h, h))
    ssd.fit.state.n[:] = 10  # every bin fitted
    check = (torch.arange(h)[:, None] + torch.arange(h)[None, :]).remainder(2).float() * 2 - 1  # [h, w] +-1
    smooth = torch.full((2, 3, h, h), 2.0)  # [B, C, h, w]
    grad_sds = smooth + check
    grad_fit = 0.5 * smooth + 3 * check
    t = torch.tensor([500, 510])
    first = ssd.guard.apply(grad_fit, grad_sds, ssd.fit.bins(t), ssd.fit.state.n, update_state=True)
    assert torch.equal(first, grad_fit)  # nothing measured yet: a fitted bin serves its fit
    for _ in range(2):  # the decision is lagged: it needs two measurements
        out = ssd.guard.apply(grad_fit, grad_sds, ssd.fit.bins(t), ssd.fit.state.n, update_state=True)
    assert torch.equal(out, grad_fit if expect_fit else grad_sds)
    ssd.fit.state.n[:] = 0  # a bin with no fit serves SDS's gradient
    assert torch.equal(ssd.guard.apply(grad_fit, grad_sds, ssd.fit.bins(t), ssd.fit.state.n, update_state=False), grad_sds)
    with pytest.raises(ValueError, match="guard_pool"):
        SSD(prior, [], SSDConfig(guard_pool=0))


# ---------------------------------------------------------------------------- per-pixel Stein fields (stein_pixel.py)
from steinsplat.guidance import (  # noqa: E402
    BASELINES, DepthPixelBaseline, FunctionFieldBaseline, NormalPixelBaseline, SDSConfig, stein_field_control_variate,
)
from steinsplat.guidance.stein_pixel import (  # noqa: E402
    jacobian_diagonal_exact, jacobian_diagonal_hutchinson,
)


def _fields(C: int):
    """Fields with a large Jacobian diagonal (so that the Stein term is O(1) per element)."""
    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(C, C, 3, padding=1)
    conv1 = torch.nn.Conv2d(C, 1, 3, padding=1)
    with torch.no_grad():
        for c in (conv, conv1):
            for p in c.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return {
        "square": lambda x: x**2,  # diagonal 2 x: exact for Hutchinson too
        "conv_tanh": lambda x: torch.tanh(conv(x)) + 0.5 * x**2,  # C channels, neighbours mixed
        "broadcast": lambda x: torch.tanh(conv1(x)) ** 2 + (x**2).mean(1, keepdim=True),  # one channel for all
    }


def _field_cv_z(field, x, alpha, sigma, n=12000, chunk=3000, seed=0, sign=-1.0, scale="sigma", divergence="exact"):
    """Per-element z-scores |mean| / SE of eps ⊙ g + sign * s * D over n draws (s = sigma, sigma^2 or 1)."""
    gen = torch.Generator().manual_seed(seed)
    probe_gen = torch.Generator().manual_seed(seed + 1)
    s1, s2 = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(n // chunk):
        eps = torch.randn((chunk, *x.shape), generator=gen)
        x_t = alpha * x + sigma * eps
        out = stein_field_control_variate(field, x_t, eps, sigma, divergence=divergence, probes=1, generator=probe_gen)
        D = out.stein_term / sigma  # the diagonal
        s = {"sigma": sigma, "sigma2": sigma**2, "one": 1.0}[scale]
        cv = out.eps_term + sign * s * D
        if sign == -1.0 and scale == "sigma":
            assert torch.allclose(cv, out.cv, atol=1e-6)
        s1 += cv.sum(0)
        s2 += (cv * cv).sum(0)
    mean = s1 / n
    return mean.abs() / ((s2 / n - mean**2).clamp_min(1e-12) / n).sqrt()


@pytest.mark.parametrize("name", ["square", "conv_tanh", "broadcast"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_field_control_variate_is_zero_mean_and_wrong_sign_or_scale_is_caught(name, divergence):
    C = 2
    torch.manual_seed(0)
    x = 0.8 + 0.4 * torch.randn(C, 3, 3)  # non-zero mean: the diagonal's mean is far from 0
    alpha, sigma = 0.8, 0.6
    field = _fields(C)[name]
    z = _field_cv_z(field, x, alpha, sigma, divergence=divergence)
    assert float(z.mean()) < 1.5 and float(z.max()) < 4.5, f"{name}: E[CV] != 0 (mean z {float(z.mean()):.2f})"
    # negative controls: the flipped sign of the Stein term, and the wrong scales sigma^2 and 1, must fail
    for sign, scale in ((1.0, "sigma"), (-1.0, "sigma2"), (-1.0, "one")):
        zw = _field_cv_z(field, x, alpha, sigma, sign=sign, scale=scale, divergence=divergence)
        assert float(zw.mean()) > 6.0, f"{name}: sign {sign} scale {scale} passed (mean z {float(zw.mean()):.2f})"


def test_jacobian_diagonal_matches_autograd_and_hutchinson_is_unbiased():
    C = 2
    x = torch.randn(2, C, 3, 4, generator=torch.Generator().manual_seed(1))
    for name, field in _fields(C).items():
        full = torch.autograd.functional.jacobian(lambda z: field(z), x)  # [B, Cg, h, w, B, C, h, w]
        B, Cg, h, w = full.shape[:4]
        ref = torch.zeros_like(x)
        for b in range(B):
            for c in range(C):
                for i in range(h):
                    for j in range(w):
                        ref[b, c, i, j] = full[b, c if Cg > 1 else 0, i, j, b, c, i, j]
        xx = x.clone().requires_grad_(True)
        g = field(xx)
        assert torch.allclose(jacobian_diagonal_exact(g, xx), ref, atol=1e-6), name
        one = jacobian_diagonal_hutchinson(g, xx, 1, torch.Generator().manual_seed(0))
        many = jacobian_diagonal_hutchinson(g, xx, 4000, torch.Generator().manual_seed(0))
        if name == "square":  # a diagonal Jacobian: one probe is exact (v_e^2 = 1)
            assert torch.allclose(one, ref, atol=1e-6)
        else:  # off-diagonal terms: one probe is noisy, the mean over probes converges to the diagonal
            assert float((one - ref).abs().max()) > 1e-2
            assert float((many - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.02, name


def _pixel_scene(resolution: int = 8):
    g = torch.Generator().manual_seed(0)
    gs = Gaussians.random_ball(48, radius=0.5, opacity=0.8, generator=g)
    cams = orbit_cameras([20.0, 30.0], [0.0, 120.0], 1.8, fovy=40.0, width=resolution, height=resolution)
    r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    return gs, cams, r


@pytest.mark.parametrize("cls", [DepthPixelBaseline, NormalPixelBaseline])
def test_pixel_baselines_stein_term_matches_finite_differences_and_averages_to_the_papers_phi(cls):
    from steinsplat.guidance.baselines import BaselineContext

    _, cams, r = _pixel_scene(8)
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    est = TinyConvEstimator(hidden=8).double()
    t = torch.tensor([300, 600])
    ctx = BaselineContext(t=t, alpha=prior.schedule.alpha_t(t), sigma=prior.schedule.sigma_t(t), cameras=cams,
                          render=r, prior=prior)
    bl = cls(est, divergence="exact")
    field = bl.build_field(ctx)
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    xx = x_t.clone().requires_grad_(True)
    g = field(xx)
    assert g.shape == (2, 1, 8, 8) and float(g.detach().abs().sum()) > 0
    D = jacobian_diagonal_exact(g, xx)
    h = 1e-5
    for (b, c, i, j) in [(0, 0, 3, 3), (1, 2, 4, 2), (0, 1, 5, 4), (1, 0, 2, 5)]:
        xp, xm = x_t.clone(), x_t.clone()
        xp[b, c, i, j] += h
        xm[b, c, i, j] -= h
        fd = (field(xp)[b, 0, i, j] - field(xm)[b, 0, i, j]) / (2 * h)
        assert abs(float(fd) - float(D[b, c, i, j])) < 1e-6 + 1e-4 * abs(float(fd)), (b, c, i, j)
    assert float(D.abs().max()) > 1e-3  # the Stein term is really there
    # the per-pixel field averages to the paper's scalar phi (over the covered pixels)
    paper = {DepthPixelBaseline: DepthBaseline, NormalPixelBaseline: NormalBaseline}[cls](est).build(ctx)(x_t)
    if cls is DepthPixelBaseline:
        from steinsplat.guidance.baselines import alpha_mask as _alpha_mask

        m = _alpha_mask(r, (8, 8)).double()
    else:
        R = cams.viewmats[:, :3, :3].double()
        m = (torch.einsum("bij,bhwj->bihw", R, r.normal.double()).norm(dim=1, keepdim=True) > 0.5).double()
    per_pixel_mean = g.detach().flatten(1).sum(1) / m.flatten(1).sum(1)
    assert torch.allclose(per_pixel_mean, paper, atol=1e-5), (per_pixel_mean, paper)


class QuadraticDenoiserPrior(AnalyticGaussianPrior):
    """eps_hat(x_t) = u^2 / (2 sigma_t^2) with u = x_t - alpha_t m: quadratic in eps at the data mean x = m.
    There eps_hat - eps = eps^2 / 2 - eps; the field g = u / sigma_t has CV = eps^2 - 1 (Stein term 1),
    so mu = (1, 1/2) leaves a constant: zero variance (SDS: 1.5 per element, the constant term alone 0.5)."""

    def denoise(self, x_t, t, embeds, cameras=None, guidance_scale=1.0, unet=None, class_labels=None, raw=False):
        from steinsplat.priors.base import as_timesteps

        t = as_timesteps(t, x_t.shape[0], x_t.device)
        a, s = self.schedule.alpha_t(t), self.schedule.sigma_t(t)
        return (x_t - a * self.mean) ** 2 / (2 * s * s)


def _quadratic_toy(t_range=(0.3, 0.3)):
    g = torch.Generator().manual_seed(0)
    m = 0.5 * torch.randn(3, 4, 4, generator=g)
    prior = QuadraticDenoiserPrior(m, std=0.5, timesteps=TimestepRange(t_range[0], t_range[1], anneal="none"))
    return prior, m.unsqueeze(0).clone()


def _u_over_sigma(prior):
    return lambda x_t, t: (x_t - prior.schedule.alpha_t(t) * prior.mean) / prior.schedule.sigma_t(t)


def test_per_pixel_field_removes_the_variance_the_constant_term_cannot():
    prior, x = _quadratic_toy()
    pix = dict(guard_pool=1)
    v_sds = _variance_after_warmup(SDS(prior), prior, x, steps=120, warm=40)
    v_const = _variance_after_warmup(SSD(prior, [], SSDConfig(**pix)), prior, x, steps=120, warm=40)
    fb = FunctionFieldBaseline(_u_over_sigma(prior))
    v_field = _variance_after_warmup(SSD(prior, [fb], SSDConfig(**pix)), prior, x, steps=120, warm=40)
    # the scalar form of the same statistic (phi = mean of g) is O(1/pixels) in its Stein term: no gain
    v_scalar = _variance_after_warmup(
        SSD(prior, [FunctionBaseline(lambda x_t, t: _u_over_sigma(prior)(x_t, t).flatten(1).mean(1))], SSDConfig(**pix)),
        prior, x, steps=120, warm=40)
    print(f"\nquadratic toy: SDS {v_sds:.3e}, constant {v_const / v_sds:.3f}x, scalar phi {v_scalar / v_sds:.3f}x, "
          f"per-pixel field {v_field / v_sds:.4f}x")
    assert 0.25 < v_const / v_sds < 0.45  # 0.5 / 1.5 in theory
    assert v_scalar > 0.8 * v_const
    assert v_field < 0.02 * v_sds


def test_field_baseline_keeps_sds_mean_through_ssd():
    prior, x = _quadratic_toy((0.05, 0.95))
    B = 8
    xs = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).expand(B, -1, -1, -1)
    cams = orbit_cameras([20.0] * B, [0.0] * B, 1.8, width=4, height=4)
    emb = prior.encode_prompt("toy")
    g = torch.Generator().manual_seed(2)
    sds = SDS(prior)
    ssd = SSD(prior, [FunctionFieldBaseline(lambda x_t, t: torch.tanh(x_t) ** 2)])  # Hutchinson is exact here
    G_sds, G_ssd = [], []
    for _ in range(200):
        t = torch.randint(50, 950, (B,), generator=g)
        eps = torch.randn(xs.shape, generator=g)
        G_sds.append(sds.step(xs, emb, cams, t=t, eps=eps).grad)
        G_ssd.append(ssd.step(xs, emb, cams, t=t, eps=eps).grad)
    a, b = torch.cat(G_ssd), torch.cat(G_sds)
    z = _paired_z(a, b)
    assert float(z.mean()) < 1.5 and float(z.max()) < 5.0, float(z.mean())
    assert not torch.equal(a, b)


def test_antithetic_sds_has_sds_mean_and_no_odd_order_noise():
    prior, x = _quadratic_toy((0.05, 0.95))
    B = 8
    xs = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).expand(B, -1, -1, -1)
    cams = orbit_cameras([20.0] * B, [0.0] * B, 1.8, width=4, height=4)
    emb = prior.encode_prompt("toy")
    sds, anti = SDS(prior), SDS(prior, SDSConfig(antithetic=True))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(50, 950, (B,), generator=g)
    eps = torch.randn(xs.shape, generator=g)
    # odd orders removed: the estimate is an even function of eps (exactly)
    assert torch.equal(anti.step(xs, emb, cams, t=t, eps=eps).grad, anti.step(xs, emb, cams, t=t, eps=-eps).grad)
    assert not torch.equal(sds.step(xs, emb, cams, t=t, eps=eps).grad, sds.step(xs, emb, cams, t=t, eps=-eps).grad)
    # same mean as SDS (paired Monte Carlo)
    G_sds, G_anti = [], []
    for _ in range(200):
        t = torch.randint(50, 950, (B,), generator=g)
        eps = torch.randn(xs.shape, generator=g)
        G_sds.append(sds.step(xs, emb, cams, t=t, eps=eps).grad)
        G_anti.append(anti.step(xs, emb, cams, t=t, eps=eps).grad)
    z = _paired_z(torch.cat(G_anti), torch.cat(G_sds))
    assert float(z.mean()) < 1.5 and float(z.max()) < 5.0, float(z.mean())
    # on the Gaussian toy eps_hat is linear in eps: at a fixed t antithetic SDS has no eps-variance at all
    f = 300 / 999
    gprior, gx = _toy(t_range=(f, f))
    v_sds = _variance_after_warmup(SDS(gprior), gprior, gx, steps=40, warm=0)
    v_anti = _variance_after_warmup(SDS(gprior, SDSConfig(antithetic=True)), gprior, gx, steps=40, warm=0)
    assert v_anti < 1e-10 * v_sds


def test_field_baseline_state_round_trip_resumes_exactly():
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    cams = orbit_cameras([20.0, 40.0], [0.0, 90.0], 1.8, width=8, height=8)
    emb = prior.encode_prompt("a red cube")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def make():
        # guard off: the fitted mu (and so the probes) are used from the first steps on
        return SSD(prior, [FunctionFieldBaseline(lambda x_t, t: torch.tanh(conv(x_t)), seed=5)], SSDConfig(guard=False))

    a = make()
    for i in range(3):
        a.step(x, emb, cams, generator=torch.Generator().manual_seed(i))
    b = make()
    state = {k: v.clone() for k, v in a.state_tensors().items()}
    assert "ssd.baseline0.rng" in state  # the Hutchinson probes' generator is part of the state
    b.load_state_tensors(state)
    for i in range(3, 5):
        ga = a.step(x, emb, cams, generator=torch.Generator().manual_seed(i)).grad
        gb = b.step(x, emb, cams, generator=torch.Generator().manual_seed(i)).grad
        assert torch.equal(ga, gb)
    # without the generator's state the probes differ: the test above is not vacuous
    c, d = make(), make()
    c.load_state_tensors({k: v for k, v in state.items() if k != "ssd.baseline0.rng"})
    d.load_state_tensors(state)
    step3 = [e.step(x, emb, cams, generator=torch.Generator().manual_seed(3)).grad for e in (c, d)]
    assert not torch.equal(*step3)


def test_baseline_mapping_is_explicit_and_pixel_baselines_run_through_the_renderer():
    assert BASELINES == {"depth": DepthBaseline, "normal": NormalBaseline, "depth-pixel": DepthPixelBaseline,
                         "normal-pixel": NormalPixelBaseline}
    gs, cams = _scene()
    prior = TinyPixelPrior(resolution=16)
    est = TinyConvEstimator()
    ssd = SSD(prior, [DepthPixelBaseline(est), NormalPixelBaseline(est)],
              SSDConfig(noise_kernel=3, noise_mix_channels=True, noise_maps="poly2"))
    r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    x = prior.encode_images(r.rgb)
    out = ssd.step(x, prior.encode_prompt("a red cube"), cams, render=r, generator=torch.Generator().manual_seed(0))
    assert out.grad.shape == x.shape and torch.isfinite(out.grad).all() and out.diagnostics.phi.shape == (2, 2)
    x.backward(out.grad)
    assert float(gs.splats["means"].grad.abs().sum()) > 0
    for p in est.parameters():
        assert p.grad is None
    last = ssd.baselines[0].last
    assert float(last.stein_term.pow(2).mean()) > 0  # the Stein term of a per-pixel field is not negligible


@pytest.mark.parametrize("kind, cls", [("depth", DepthBaseline), ("depth-pixel", DepthPixelBaseline),
                                       ("normal-pixel", NormalPixelBaseline)])
def test_generate_builds_the_named_baseline(kind, cls):
    from steinsplat import config
    from steinsplat.pipeline import GenerateConfig, build_guidance

    cfg = config.parse(GenerateConfig, ["a red cube", "--baseline", kind, "--seed", "3", "--quiet"], prog="test")
    prior = TinyPixelPrior(resolution=8, block_out_channels=(4, 8))
    g = build_guidance(cfg, prior, "shapeworld", torch.device("cpu"))
    assert isinstance(g, SSD) and len(g.baselines) == 1 and type(g.baselines[0]) is cls
    if kind.endswith("-pixel"):  # the probes follow the run's seed: same seed, same bytes
        assert torch.equal(g.baselines[0].generator.get_state(), torch.Generator().manual_seed(3).get_state())
