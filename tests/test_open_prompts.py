"""Open (set-valued) prompts: the grammar, the mixture of conditionals, and the eps-oracle."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from steinsplat.cameras import orbit_cameras
from steinsplat.guidance import SDS, SDSConfig
from steinsplat.priors import ShapeWorldPriorAdapter
from steinsplat.priors.base import TimestepRange, cfg_combine
from steinsplat.priors.mixture import mix_predictions, mode_energies, mode_weights
from steinsplat.priors.tiny import AnalyticGaussianPrior
from steinsplat.shapeworld.vocab import (
    COLOUR_NAMES, SHAPE_NAMES, ObjectPrompt, OpenPrompt, PromptError, canonical_text, parse_prompt, prompt_modes,
)


# ---------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("text, expected, n", [
    ("a cube", OpenPrompt(shape="cube"), 8),
    ("Cube.", OpenPrompt(shape="cube"), 8),
    ("an orange object", OpenPrompt(colour="orange"), 7),
    ("a red shape", OpenPrompt(colour="red"), 7),
    ("an object", OpenPrompt(), 56),
    ("a shape", OpenPrompt(), 56),
])
def test_open_prompts_parse_to_their_set_of_answers(text, expected, n):
    p = parse_prompt(text)
    assert p == expected and len(p.modes) == n
    assert parse_prompt(canonical_text(p)) == p
    assert all(isinstance(m, ObjectPrompt) for m in p.modes) and len(set(p.modes)) == n
    if p.shape is not None:
        assert {m.colour for m in p.modes} == set(COLOUR_NAMES) and {m.shape for m in p.modes} == {p.shape}
    if p.colour is not None:
        assert {m.shape for m in p.modes} == set(SHAPE_NAMES)


def test_ordinary_prompts_are_their_own_single_mode_and_rooms_have_none():
    assert prompt_modes("a red cube") == (ObjectPrompt("red", "cube"),)
    assert parse_prompt("a red cube") == ObjectPrompt("red", "cube")  # unchanged
    with pytest.raises(PromptError, match="room"):
        prompt_modes("a room with blue walls and a gray floor")
    for bad in ("a red", "a cube object", "an object red", "a flying cube"):
        with pytest.raises(PromptError):
            parse_prompt(bad)


def test_the_text_encoder_refuses_an_open_prompt_with_the_way_out():
    from steinsplat.shapeworld.prior import ShapeWorldTokenizer, build_tokenizer

    tok = ShapeWorldTokenizer(build_tokenizer())
    with pytest.raises(PromptError, match="modes"):
        tok(["a cube"])
    assert tok(["a red cube"])[1].sum() == 3


# ---------------------------------------------------------------------------- the mixture's maths
def test_mode_weights_are_the_softmax_of_the_stated_energies():
    # one view, two modes, 1 channel 1x2 pixels: eps_c = alpha v_c + sigma x_t
    a, s = torch.tensor([[[[0.6]]]]), torch.tensor([[[[0.8]]]])
    x_t = torch.tensor([[[[1.0, -1.0]]]])  # [1, 1, 1, 2]
    v = torch.tensor([[[[[0.0, 0.0]]], [[[1.0, 2.0]]]]])  # [1, 2, 1, 1, 2]
    # by hand: eps_0 = 0.8 * (1, -1) -> E_0 = 0.5 * (0.64 + 0.64) = 0.64
    #          eps_1 = (0.6 + 0.8, 1.2 - 0.8) = (1.4, 0.4) -> E_1 = 0.5 * (1.96 + 0.16) = 1.06
    E = mode_energies(v, x_t, a, s)
    assert torch.allclose(E, torch.tensor([[0.64, 1.06]]), atol=1e-6)
    w = mode_weights(E)
    w0 = 1.0 / (1.0 + math.exp(0.64 - 1.06))
    assert torch.allclose(w, torch.tensor([[w0, 1 - w0]]), atol=1e-6)
    # the energy is ||x_t - alpha x0_c||^2 / (2 sigma^2) with x0_c = alpha x_t - sigma v_c
    x0 = a[:, None] * x_t[:, None] - s[:, None] * v
    E2 = ((x_t[:, None] - a[:, None] * x0) ** 2).flatten(2).sum(-1) / (2 * s.flatten() ** 2)
    assert torch.allclose(E, E2, atol=1e-6)
    v_mix, w3 = mix_predictions(v, x_t, a, s)
    assert torch.allclose(v_mix, w0 * v[:, 0] + (1 - w0) * v[:, 1], atol=1e-6) and torch.equal(w3, w)
    # a prior weight that puts everything on one mode returns that mode exactly
    one = torch.tensor([0.0, -1e9])
    assert torch.allclose(mix_predictions(v, x_t, a, s, log_prior=one)[0], v[:, 0])
    # zero terminal SNR: every eps_c = x_t, uniform weights
    _, w_T = mix_predictions(v, x_t, torch.zeros_like(a), torch.ones_like(s))
    assert torch.allclose(w_T, torch.full((1, 2), 0.5))
    with pytest.raises(ValueError, match="B, M, C, h, w"):
        mix_predictions(v[:, 0], x_t, a, s)


@pytest.fixture(scope="module")
def tiny_shapeworld(tmp_path_factory):
    from steinsplat.shapeworld.prior import PriorConfig, ShapeWorldPrior

    torch.manual_seed(0)
    sw = ShapeWorldPrior.from_config(PriorConfig(resolution=8, text_dim=8), block_out_channels=(8, 16),
                                     layers_per_block=1, text_hidden_dim=8, norm_num_groups=4)
    folder = tmp_path_factory.mktemp("sw") / "prior"
    sw.save_pretrained(folder)
    return ShapeWorldPriorAdapter.from_pretrained(folder)


def test_the_adapter_serves_an_open_prompt_as_the_mixture_of_its_answers(tiny_shapeworld):
    prior = tiny_shapeworld
    B = 3
    cams = orbit_cameras([20.0] * B, [0.0, 120.0, 240.0], 1.8, fovy=40.0, width=8, height=8)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(B, 3, 8, 8, generator=g)
    t = torch.tensor([200, 500, 800])
    emb = prior.encode_prompt("a cube")
    assert emb.modes.shape == (1, 8, 8) and emb.mode_prompts[0] == "a red cube"
    a, s = prior.schedule.alpha_t(t), prior.schedule.sigma_t(t)
    # by hand: each answer's conditional eps, weights from their energies, the weighted sum
    eps_c = torch.stack([prior.predict_noise(x_t, t, prior.encode_prompt(p), cams, 1.0) for p in emb.mode_prompts], 1)
    w = torch.softmax(-0.5 * eps_c.pow(2).flatten(2).sum(-1), dim=-1)  # [B, 8]
    expected = (w[:, :, None, None, None] * eps_c).sum(1)
    got = prior.predict_noise(x_t, t, emb, cams, 1.0)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(prior.last_mode_weights, w, atol=1e-5)
    # the guided variant: classifier-free guidance of the mixture against the unconditional branch
    eps_u = prior.predict_noise(x_t, t, dataclasses.replace(prior.encode_prompt("a red cube"),
                                                             cond=emb.uncond), cams, 1.0)
    assert torch.allclose(prior.predict_noise(x_t, t, emb, cams, 3.0), cfg_combine(eps_u, expected, 3.0), atol=1e-4)
    # one answer: its conditional (the mixture adds nothing)
    single = prior.encode_prompt("a red cube")
    one = dataclasses.replace(single, modes=single.cond[None], mode_prompts=("a red cube",))
    assert torch.allclose(prior.predict_noise(x_t, t, one, cams, 1.0), prior.predict_noise(x_t, t, single, cams, 1.0),
                          atol=1e-5)
    # raw v through denoise (VSD's LoRA path) mixes with the same weights
    v = prior.denoise(x_t, t, emb, cams, 1.0, raw=True)
    assert torch.allclose(v, (got - s * x_t) / a, atol=1e-4)


# ---------------------------------------------------------------------------- the eps-oracle
def test_eps_oracle_has_sds_mean_and_a_kth_of_its_eps_variance():
    g = torch.Generator().manual_seed(0)
    m = 0.5 * torch.randn(3, 4, 4, generator=g)
    f = 300 / 999
    prior = AnalyticGaussianPrior(m, std=0.5, timesteps=TimestepRange(f, f, anneal="none"))  # one t: eps noise only
    x = (m + 0.8 * torch.randn(3, 4, 4, generator=g)).unsqueeze(0)
    B, K = 16, 4
    xs = x.expand(B, -1, -1, -1)
    cams = orbit_cameras([20.0] * B, [0.0] * B, 1.8, width=4, height=4)
    emb = prior.encode_prompt("toy")
    sds, oracle = SDS(prior), SDS(prior, SDSConfig(eps_draws=K))
    torch.manual_seed(3)
    G_sds = torch.cat([sds.step(xs, emb, cams, generator=g).grad for _ in range(60)])  # [60 B, 3, 4, 4]
    G_or = torch.cat([oracle.step(xs, emb, cams, generator=g).grad for _ in range(60)])
    # same mean (unpaired: the oracle's extra draws are independent), within 4 standard errors
    se = (G_sds.var(0) / len(G_sds) + G_or.var(0) / len(G_or)).sqrt()
    assert float(((G_sds.mean(0) - G_or.mean(0)).abs() / se).max()) < 4.5
    ratio = float(G_or.var(0).mean() / G_sds.var(0).mean())
    assert 0.8 / K < ratio < 1.25 / K, ratio
    with pytest.raises(ValueError, match="eps_draws"):
        SDS(prior, SDSConfig(eps_draws=0))
    with pytest.raises(ValueError, match="antithetic"):
        SDS(prior, SDSConfig(eps_draws=2, antithetic=True))


# ---------------------------------------------------------------------------- the regimes
def test_camera_blind_serves_the_camera_dropped_branch(tiny_shapeworld):
    prior = tiny_shapeworld
    B = 2
    cams = orbit_cameras([20.0, 40.0], [0.0, 90.0], 1.8, fovy=40.0, width=8, height=8)
    x_t = torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([300, 600])
    emb = prior.encode_prompt("a red cube")
    seeing = prior.predict_noise(x_t, t, emb, cams, 1.0)
    try:
        prior.camera_blind = True
        blind = prior.predict_noise(x_t, t, emb, cams, 1.0)
        blind_open = prior.predict_noise(x_t, t, prior.encode_prompt("a cube"), cams, 1.0)
    finally:
        prior.camera_blind = False
    from steinsplat.shapeworld.prior import PromptConditioning

    pc = PromptConditioning(emb.cond.expand(B, -1), emb.uncond.expand(B, -1), ["a red cube"] * B)
    zero = torch.zeros(B, prior.prior.config.camera_dim)
    with torch.no_grad():
        expected = prior.prior.predict_noise(x_t, t, pc, zero, 1.0)
    assert torch.allclose(blind, expected, atol=1e-6) and not torch.allclose(blind, seeing, atol=1e-4)
    assert not torch.allclose(blind_open, prior.predict_noise(x_t, t, prior.encode_prompt("a cube"), cams, 1.0), atol=1e-4)


def test_regimes_set_the_prior_and_the_prompt(tiny_shapeworld):
    from steinsplat.bench.regimes import REGIMES, apply_regime, regime_prompt

    prior = tiny_shapeworld
    try:
        apply_regime(prior, "blind-mixture")
        assert prior.camera_blind and prior.guidance_scale == 1.0
        apply_regime(prior, "mixture-guided")
        assert not prior.camera_blind and prior.guidance_scale == REGIMES["mixture-guided"].guidance_scale > 1
    finally:
        apply_regime(prior, "single")
    assert regime_prompt("single", "a cube") == "a red cube" and regime_prompt("mixture", "a cube") == "a cube"
    assert regime_prompt("blind", "a blue pyramid") == "a blue pyramid"
    with pytest.raises(ValueError, match="choose from"):
        apply_regime(prior, "nuisance")
