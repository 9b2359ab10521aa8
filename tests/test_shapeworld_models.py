"""The embedded ShapeWorld models: tokenizer, prior, estimator, classifier, training utilities.

Tiny randomly initialised models only (built through the same classes and loaded back through the
same loading code as the shipped ones); the shipped weights are exercised when they exist.
"""

from __future__ import annotations

import json
import math


import pytest
import torch

from steinsplat.cameras import inside_out_cameras, object_eval_cameras, orbit_cameras
from steinsplat.shapeworld.classifier import ClassifierConfig, ShapeWorldClassifier
from steinsplat.shapeworld.estimator import (
    EstimatorConfig, ShapeWorldEstimator, align_depth, depth_loss, normal_loss,
)
from steinsplat.shapeworld.prior import (
    PriorConfig, ShapeWorldPrior, ShapeWorldTokenizer, build_tokenizer, camera_features, default_assets_dir,
)
from steinsplat.shapeworld.training import EMA, EpochSampler, TrainLoop, load_checkpoint, save_checkpoint
from steinsplat.shapeworld.vocab import PromptError, all_object_prompts, all_room_prompts, canonical_text

R = 8  # tiny model resolution


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_prior(seed: int = 0) -> ShapeWorldPrior:
    torch.manual_seed(seed)
    return ShapeWorldPrior.from_config(PriorConfig(resolution=R, text_dim=16), block_out_channels=(8, 16),
                                       layers_per_block=1, text_hidden_dim=16, norm_num_groups=4)


def tiny_estimator(seed: int = 0) -> ShapeWorldEstimator:
    torch.manual_seed(seed)
    return ShapeWorldEstimator(EstimatorConfig(resolution=R, width=8, time_dim=16))


def tiny_classifier(seed: int = 0) -> ShapeWorldClassifier:
    torch.manual_seed(seed)
    return ShapeWorldClassifier(ClassifierConfig(input_size=16, width=8))


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_unknown_words(tmp_path):
    tok = ShapeWorldTokenizer(build_tokenizer())
    prompts = [canonical_text(p) for p in all_object_prompts()[:5] + all_room_prompts()[:3]]
    ids, mask = tok(prompts)
    assert ids.shape == mask.shape == (len(prompts), tok.max_length)
    assert tok.decode(ids, mask) == prompts
    # non-canonical spellings map to the canonical ids
    ids2, _ = tok(["  A Red Cube. "])
    assert torch.equal(ids2[0], tok(["a red cube"])[0][0])
    # the empty prompt has no tokens
    assert not tok([""])[1].any()
    # save -> load gives the same ids
    tok.save_pretrained(tmp_path)
    tok2 = ShapeWorldTokenizer.from_pretrained(tmp_path)
    assert torch.equal(tok2(prompts)[0], ids)
    with pytest.raises(PromptError, match="corgi"):
        tok(["a red corgi"])
    with pytest.raises(PromptError):
        tiny_prior().encode_prompt(["a spacesuit"])


# ---------------------------------------------------------------------------- round trips
def test_prior_save_load_round_trip(tmp_path):
    prior = tiny_prior().eval()
    prior.save_pretrained(tmp_path / "prior")
    loaded = ShapeWorldPrior.from_pretrained(tmp_path / "prior")
    cams = object_eval_cameras(R, R)[:4]
    x = torch.randn(4, 3, R, R, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        a = prior.predict_noise(x, t, prior.encode_prompt(["a red cube"] * 4), cams, 3.0)
        b = loaded.predict_noise(x, t, loaded.encode_prompt(["a red cube"] * 4), cams, 3.0)
    assert torch.equal(a, b)
    assert torch.equal(prior.alphas_cumprod, loaded.alphas_cumprod)
    s = loaded.sample("a blue torus", cams[:2], steps=2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, R, R, 3) and float(s.min()) >= 0 and float(s.max()) <= 1
    assert (tmp_path / "prior/unet/diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "prior/scheduler/scheduler_config.json").exists()
    assert (tmp_path / "prior/tokenizer/tokenizer.json").exists()


def test_estimator_and_classifier_save_load_round_trip(tmp_path):
    est = tiny_estimator().eval()
    est.save_pretrained(tmp_path / "est")
    est2 = ShapeWorldEstimator.from_pretrained(tmp_path / "est")
    x = torch.randn(2, 3, R, R)
    t = torch.tensor([0, 700])
    with torch.no_grad():
        o1, o2 = est(x, t), est2(x, t)
    assert torch.equal(o1.depth, o2.depth) and torch.equal(o1.normal, o2.normal)
    assert torch.allclose(o1.normal.norm(dim=1), torch.ones(2, R, R), atol=1e-4)

    clf = tiny_classifier().eval()
    clf.save_pretrained(tmp_path / "clf")
    clf2 = ShapeWorldClassifier.from_pretrained(tmp_path / "clf")
    imgs = torch.rand(3, 12, 12, 3)  # other sizes are resized
    a, b = clf.classify(imgs), clf2.classify(imgs)
    assert torch.equal(a.shape_logits, b.shape_logits) and torch.equal(a.colour_logits, b.colour_logits)
    assert a.shape_logits.shape == (3, 7) and a.colour_logits.shape == (3, 8)


# ---------------------------------------------------------------------------- maths
def test_v_to_eps_closed_form():
    prior = tiny_prior()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 3, R, R, generator=g) * 2 - 1
    eps = torch.randn(5, 3, R, R, generator=g)
    t = torch.tensor([0, 1, 400, 998, 999])
    alpha, sigma = prior.alpha_sigma(t)
    assert float(prior.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)  # zero terminal SNR
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    # our sign convention is diffusers' (its training target)
    assert torch.allclose(prior.scheduler.get_velocity(x0, eps, t), v, atol=1e-6)
    assert torch.allclose(ShapeWorldPrior.v_to_eps(v, x_t, alpha, sigma), eps, atol=1e-5)
    assert torch.allclose(ShapeWorldPrior.v_to_x0(v, x_t, alpha, sigma), x0, atol=1e-5)


def test_predict_noise_is_guided_eps_of_the_unet():
    prior = tiny_prior().eval()
    cams = orbit_cameras([10.0, 30.0], [0.0, 90.0], 1.8, width=R, height=R)
    cond = prior.encode_prompt(["a red cube", "a gray cone"], negative="")
    x = torch.randn(2, 3, R, R)
    t = torch.tensor([100, 900])
    with torch.no_grad():
        eps = prior.predict_noise(x, t, cond, cams, guidance_scale=2.5)
        f = prior.camera_features(cams)
        v_c = prior.model_output(x, t, cond.cond, f)
        v_u = prior.model_output(x, t, cond.uncond, f)
        a, s = prior.alpha_sigma(t)
        ref = a * (v_u + 2.5 * (v_c - v_u)) + s * x
    assert torch.allclose(eps, ref, atol=1e-5)


def test_camera_features():
    f = camera_features(orbit_cameras([0.0], [90.0], 2.0))
    assert torch.allclose(f, torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]]), atol=1e-6)
    r = camera_features(inside_out_cameras([180.0], [0.0]))
    assert torch.allclose(r, torch.tensor([[0.0, -1.0, 0.0, 1.0, 0.0, 1.0, 1.0]]), atol=1e-6)


def test_fourier_camera_features():
    f = camera_features(orbit_cameras([30.0], [45.0], 1.6), "fourier-rays", (1, 2, 3, 4))
    az, el = math.radians(45.0), math.radians(30.0)
    want = [g(k * az) for k in (1, 2, 3, 4) for g in (math.sin, math.cos)]
    want += [math.sin(el), math.cos(el), math.sin(2 * el), math.cos(2 * el), -1.0, 0.0, 1.0]
    assert torch.allclose(f, torch.tensor([want]), atol=1e-6)
    # az 0 and 45 are told apart by the k = 4 pair alone: cos(4 az) = +1 vs -1
    g = camera_features(orbit_cameras([20.0, 20.0], [0.0, 45.0], 1.8), "fourier-rays")
    assert g[0, 7] == pytest.approx(1.0) and g[1, 7] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="start with 1"):
        camera_features(orbit_cameras([0.0], [0.0], 1.8), "fourier-rays", (2, 4))
    with pytest.raises(ValueError, match="unknown camera encoding"):
        PriorConfig(camera_encoding="tokens")


def test_plucker_rays_geometry():
    """Ray maps against first principles: unit directions; the centre pixel of an orbit camera looks
    at the origin (moment 0); every ray passes through the camera centre (o x d = m with o the centre);
    d is orthogonal to m; the ray map rebuilt from the features equals the real cameras' one."""
    from steinsplat.shapeworld.prior import plucker_rays, rays_from_features

    cams = orbit_cameras([20.0, -10.0, 55.0], [0.0, 45.0, 200.0], [1.8, 1.6, 2.0], width=64, height=64)
    r = plucker_rays(cams, 32)  # [3, 6, 32, 32]
    d, m = r[:, :3], r[:, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones(3, 32, 32), atol=1e-5)
    assert (d * m).sum(1).abs().max() < 1e-5
    centre = d[:, :, 15:17, 15:17].mean((2, 3))  # [3, 3] mean of the 4 centre pixels
    assert torch.allclose(torch.nn.functional.normalize(centre, dim=1), -cams.centers / cams.centers.norm(dim=1, keepdim=True), atol=1e-3)
    o = cams.centers[:, :, None, None].expand_as(d)
    assert torch.allclose(torch.linalg.cross(o, d, dim=1), m, atol=1e-5)
    # image rows go down: the top row's rays point higher (+z) than the bottom row's
    assert bool((d[:, 2, 0].mean(1) > d[:, 2, -1].mean(1)).all())
    f = camera_features(cams, "fourier-rays")
    assert torch.allclose(rays_from_features(f, 32), r, atol=1e-5)
    rooms = inside_out_cameras([30.0, 250.0], [5.0, -10.0], width=32, height=32)
    fr = camera_features(rooms, "fourier-rays")
    assert torch.allclose(rays_from_features(fr, 32), plucker_rays(rooms, 32), atol=1e-5)
    assert not rays_from_features(torch.zeros_like(f), 32).any()  # a dropped camera: no rays


def test_prior_sees_the_rays_and_old_folders_still_load(tmp_path):
    prior = tiny_prior().eval()
    assert prior.unet.config.in_channels == 3 + 6 and prior.config.camera_dim == 15
    x, t = torch.randn(1, 3, R, R), torch.tensor([500])
    text = prior.encode_text(["a red cube"])
    with torch.no_grad():
        f0 = prior.camera_features(orbit_cameras([20.0], [0.0], 1.8))
        f45 = prior.camera_features(orbit_cameras([20.0], [45.0], 1.8))
        assert not torch.allclose(prior.model_output(x, t, text, f0), prior.model_output(x, t, text, f45))
        # with the feature vector fixed, the ray channels alone change the output
        sample0, sample45 = prior.unet_input(x, f0), prior.unet_input(x, f45)
        assert torch.equal(sample0[:, :3], x) and not torch.allclose(sample0[:, 3:], sample45[:, 3:])
    # a folder written by the first prior (no camera_encoding in its config) loads as "angles"
    torch.manual_seed(0)
    old = ShapeWorldPrior.from_config(PriorConfig(resolution=R, text_dim=16, camera_encoding="angles"), block_out_channels=(8, 16),
                                      layers_per_block=1, text_hidden_dim=16, norm_num_groups=4)
    old.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "prior_config.json").read_text())
    cfg.pop("camera_encoding"), cfg.pop("azimuth_frequencies"), cfg.update(camera_dim=7)
    (tmp_path / "old" / "prior_config.json").write_text(json.dumps(cfg))
    back = ShapeWorldPrior.from_pretrained(tmp_path / "old")
    assert back.config.camera_encoding == "angles" and back.unet.config.in_channels == 3
    cams = orbit_cameras([20.0], [45.0], 1.8, width=R, height=R)
    with torch.no_grad():
        assert torch.allclose(back.model_output(x, t, back.encode_text(["a red cube"]), back.camera_features(cams)),
                              old.model_output(x, t, old.encode_text(["a red cube"]), old.camera_features(cams)), atol=1e-6)


def test_condition_dropout_really_drops():
    prior = tiny_prior()
    ids, mask = prior.tokenizer(["a red cube"] * 400)
    cams = torch.randn(400, prior.config.camera_dim)
    g = torch.Generator().manual_seed(0)
    m1, c1 = prior.drop_conditions(mask, cams, g, 1.0, 1.0)
    assert not m1.any() and not c1.any()
    null = prior.text_encoder(ids, m1)
    assert torch.equal(null, prior.text_encoder.null.expand_as(null))
    assert torch.equal(null[:1], prior.encode_text([""]))
    m0, c0 = prior.drop_conditions(mask, cams, g, 0.0, 0.0)
    assert torch.equal(m0, mask) and torch.equal(c0, cams)
    mh, ch = prior.drop_conditions(mask, cams, g, 0.12, 0.12)
    frac_t = float((~mh.any(1)).float().mean())
    frac_c = float((ch == 0).all(1).float().mean())
    assert 0.06 < frac_t < 0.18 and 0.06 < frac_c < 0.18


def test_estimator_is_differentiable_wrt_input(tmp_path):
    est = tiny_estimator()
    est.save_pretrained(tmp_path)
    est = ShapeWorldEstimator.from_pretrained(tmp_path)  # frozen weights, as used by SSD
    x = torch.randn(2, 3, R, R, requires_grad=True)
    out = est(x, torch.tensor([50, 600]))
    (out.depth.sum() + out.normal[:, 2].sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_depth_alignment_is_scale_shift_invariant():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 1, R, R, generator=g) + 1.0
    mask = torch.rand(2, 1, R, R, generator=g) > 0.3
    assert torch.allclose(align_depth(3.0 * d - 2.0, d, mask)[mask], d[mask], atol=1e-4)
    assert float(depth_loss(-0.5 * d + 7.0, d, mask)) < 1e-4
    n = torch.nn.functional.normalize(torch.randn(2, 3, R, R, generator=g), dim=1)
    assert float(normal_loss(n, n, mask)) < 1e-6


# ---------------------------------------------------------------------------- training
def _fixed_batch_losses(loss_fn, params, steps: int = 6, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_training_steps_decrease_the_loss():
    g = torch.Generator().manual_seed(0)
    # prior: same batch, same t and eps every step (the generator is re-seeded)
    prior = tiny_prior()
    x0 = torch.rand(4, 3, R, R, generator=g) * 2 - 1
    ids, mask = prior.tokenizer(["a red cube", "a blue cone", "a gray torus", "a room with red walls and a blue floor"])
    cams = prior.camera_features(orbit_cameras([0.0, 10.0, 20.0, 30.0], [0.0, 45.0, 90.0, 200.0], 1.8))
    lp = _fixed_batch_losses(lambda: prior.training_loss(x0, ids, mask, cams, torch.Generator().manual_seed(3), 0.0, 0.0),
                             prior.parameters())
    assert lp[-1] < lp[0]
    # estimator
    est = tiny_estimator()
    data = {"images": (torch.rand(4, 3, R, R, generator=g) * 255).to(torch.uint8),
            "depth": torch.rand(4, 1, R, R, generator=g) + 1.0,
            "normal": torch.nn.functional.normalize(torch.randn(4, 3, R, R, generator=g), dim=1),
            "mask": torch.ones(4, 1, R, R, dtype=torch.bool)}
    le = _fixed_batch_losses(lambda: est.training_loss(data, torch.arange(4), torch.Generator().manual_seed(3)),
                             est.parameters())
    assert le[-1] < le[0]
    # classifier
    clf = tiny_classifier()
    imgs = torch.rand(4, 3, 16, 16, generator=g)
    lc = _fixed_batch_losses(lambda: clf.loss(imgs, torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])), clf.parameters())
    assert lc[-1] < lc[0]


def test_checkpoint_resume_continues_identically(tmp_path):
    data = torch.randn(40, 5)
    target = data @ torch.randn(5, 1)

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, EMA(model, 0.9), EpochSampler(40, 8, seed=0), torch.Generator().manual_seed(0)

    def step_fn(model, opt, ema, sampler, gen):
        def step(i: int) -> float:
            idx = sampler.next()
            noise = 0.01 * torch.randn(8, 1, generator=gen) + 0.001 * torch.randn(8, 1)  # training + global RNG
            loss = ((model(data[idx]) - target[idx] - noise) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(model)
            return float(loss.detach())
        return step

    # uninterrupted: 7 steps
    ref = make()
    ref_losses = TrainLoop("t", 7, 1.0, 100, log=lambda s: None, progress=False).run(0, step_fn(*ref), lambda s: None).losses

    # 4 steps, checkpoint, then a fresh process-like restart resumes for 3 more
    first = make()
    saver = lambda s: save_checkpoint(tmp_path, s, {"model": first[0]}, first[1], first[2], first[3], first[4])  # noqa: E731
    r1 = TrainLoop("t", 4, 1.0, 100, log=lambda s: None, progress=False).run(0, step_fn(*first), saver)
    assert r1.step == 4
    torch.manual_seed(123)  # scramble the global RNG: the checkpoint must restore it
    second = make()
    state = load_checkpoint(tmp_path, {"model": second[0]}, second[1], second[2], second[3], second[4])
    assert state["step"] == 4
    r2 = TrainLoop("t", 7, 1.0, 100, log=lambda s: None, progress=False).run(state["step"], step_fn(*second), lambda s: None)
    assert r2.step == 7
    assert r1.losses + r2.losses == pytest.approx(ref_losses, abs=0, rel=1e-6)
    for (k, a), b in zip(ref[0].state_dict().items(), second[0].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-7), k
    for k in ref[2].shadow:
        assert torch.allclose(ref[2].shadow[k], second[2].shadow[k], atol=1e-7), k


def test_time_budget_stops_and_saves():
    saved = []
    res = TrainLoop("t", 10**6, max_minutes=0.0, checkpoint_every=10, log=lambda s: None, progress=False).run(
        5, lambda i: 0.0, saved.append)
    assert res.stopped_by == "time" and res.step == 5 and saved == [5]


# ---------------------------------------------------------------------------- shipped weights
ASSETS = default_assets_dir()


@pytest.mark.skipif(not (ASSETS / "prior" / "prior_config.json").exists(), reason="no shipped prior in steinsplat/assets/shapeworld")
def test_shipped_prior_one_denoising_step():
    prior = ShapeWorldPrior.from_pretrained(ASSETS / "prior")
    Rp = prior.resolution
    cams = object_eval_cameras(Rp, Rp)[:2]
    cond = prior.encode_prompt(["a red cube", "a cyan torus"])
    x = torch.randn(2, 3, Rp, Rp, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = prior.predict_noise(x, torch.tensor([500, 500]), cond, cams)
    assert eps.shape == x.shape and torch.isfinite(eps).all()


@pytest.mark.skipif(not (ASSETS / "prior" / "prior_config.json").exists(), reason="no shipped prior in steinsplat/assets/shapeworld")
def test_shipped_prior_follows_the_azimuth():
    """The same noise, prompt and elevation at az 0 and az 45 give different cubes, and each sample's
    silhouette matches its own azimuth's ground truth better (the first prior gave the same image twice)."""
    from steinsplat.shapeworld.evaluate import assign_views, sample_mask, view_cameras

    prior = ShapeWorldPrior.from_pretrained()
    cams = view_cameras([0.0, 45.0], prior.resolution)
    noise_seed = 3
    a = prior.sample("a red cube", cams[torch.tensor([0])], steps=20, generator=torch.Generator().manual_seed(noise_seed))
    b = prior.sample("a red cube", cams[torch.tensor([1])], steps=20, generator=torch.Generator().manual_seed(noise_seed))
    assert (a - b).abs().mean() > 0.02
    from steinsplat.shapeworld.groundtruth import render_gt

    gt = render_gt("a red cube", view_cameras([0.0, 45.0])).alpha > 0.5  # [2, 64, 64, 1]
    got = assign_views(sample_mask(torch.cat([a, b])), gt[None].expand(2, *gt.shape))
    assert got.tolist() == [0, 1]


@pytest.mark.skipif(not (ASSETS / "estimator" / "config.json").exists(), reason="no shipped estimator in steinsplat/assets/shapeworld")
def test_shipped_estimator_one_call():
    est = ShapeWorldEstimator.from_pretrained(ASSETS / "estimator")
    r = est.config.resolution
    x = torch.zeros(1, 3, r, r, requires_grad=True)
    out = est(x, torch.tensor([200]))
    out.depth.mean().backward()
    assert out.depth.shape == (1, 1, r, r) and out.normal.shape == (1, 3, r, r)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not (ASSETS / "classifier" / "config.json").exists(), reason="no shipped classifier in steinsplat/assets/shapeworld")
def test_shipped_classifier_one_call():
    from steinsplat.shapeworld.groundtruth import render_gt

    clf = ShapeWorldClassifier.from_pretrained(ASSETS / "classifier")
    gt = render_gt(["a red cube"], object_eval_cameras()[:1])
    assert clf.classify(gt.rgb).names() == [("red", "cube")]


def test_r_precision_in_evaluate_uses_the_shipped_classifier():
    """Gaussians covering a red sphere: R-precision 1 for "a red sphere", 0 for the wrong colour,
    and None for rooms (the classifier knows objects only)."""
    from steinsplat.gaussians import Gaussians
    from steinsplat.shapeworld.metrics import evaluate
    from steinsplat.shapeworld.vocab import COLOURS

    n = 2000
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    g = Gaussians.from_points(0.33 * d, torch.tensor(COLOURS["red"]).expand(n, 3), scale=0.03, opacity=0.95)
    assert evaluate(g, "a red sphere").r_precision >= 0.75
    assert evaluate(g, "a blue sphere").r_precision == 0.0
    assert evaluate(g, "a red sphere", r_precision=False).r_precision is None
