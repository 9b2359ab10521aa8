"""Priors and estimators loaded through the project's real loading code from tiny random
components saved with save_pretrained (nothing downloaded)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from steinsplat.cameras import orbit_cameras
from steinsplat.geometry import (
    ESTIMATORS, EstimatorUnavailableError, TransformersDepthEstimator, normals_from_depth,
)
from steinsplat.guidance import SSD, VSD, DepthBaseline, NormalBaseline, VSDConfig
from steinsplat.priors import PRIORS, PriorUnavailableError, ShapeWorldPriorAdapter, StableDiffusionPrior
from steinsplat.priors.base import DiffusionPrior, TimestepRange



pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

# ---------------------------------------------------------------------------- tiny SD on disk
def _tiny_tokenizer(folder: Path):
    """A CLIPTokenizer from a hand-written vocab.json and a merges.txt with only the version line."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [",", "."]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    return tok, len(tokens)


def _save_tiny_sd(root: Path, prediction_type: str = "epsilon") -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok, vocab = _tiny_tokenizer(root / "_vocab")
    tok.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return _save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def _cams(B: int = 4, size: int = 16):
    return orbit_cameras([10.0, 20.0, 15.0, 75.0][:B], [0.0, 90.0, 180.0, 45.0][:B], 1.8, width=size, height=size)


def test_stable_diffusion_prior_loads_tiny_components_and_predicts_noise(tiny_sd):
    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", guidance_scale=7.5)
    assert isinstance(prior, DiffusionPrior)
    assert prior.dtype == torch.float32 and prior.model_resolution == 16 and prior.model_channels == 4
    assert all(not p.requires_grad for p in prior.parameters())
    cams = _cams()
    assert cams.view_tags() == ["front", "side", "back", "overhead"]
    emb = prior.encode_prompt("a red cube", negative_prompt="blurry")
    assert set(emb.by_view) == {"front", "side", "back", "overhead"}
    cond, uncond = emb.for_cameras(cams)
    assert cond.shape == (4, 16, 16) and uncond.shape == (4, 16, 16)
    assert not torch.allclose(cond[0], cond[1])  # "..., front view" vs "..., side view"
    assert prior.encode_prompt("a red cube", negative_prompt="blurry") is emb  # cached
    # images -> latents, differentiable w.r.t. the render
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    x = prior.encode_images(rgb)
    assert x.shape == (4, 4, 8, 8)
    t = torch.tensor([10, 200, 500, 900])
    eps_hat = prior.predict_noise(x, t, emb, cams)
    assert eps_hat.shape == x.shape and not eps_hat.requires_grad
    x.sum().backward()
    assert rgb.grad is not None and float(rgb.grad.abs().sum()) > 0
    assert prior.decode(x.detach()).shape == (4, 16, 16, 3)
    lo, hi = prior.timestep_range(0.0)
    lo2, hi2 = prior.timestep_range(1.0)
    assert lo == lo2 and hi2 < hi  # annealed upper bound


def test_stable_diffusion_prior_converts_v_prediction_to_eps(tiny_sd, tmp_path):
    import shutil

    from diffusers import DDPMScheduler

    root = tmp_path / "sd-v"
    shutil.copytree(tiny_sd, root)
    sched = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    DDPMScheduler.from_config(sched.config, prediction_type="v_prediction").save_pretrained(root / "scheduler")
    prior = StableDiffusionPrior.from_pretrained(root, device="cpu", attention_slicing=True)
    assert prior.prediction_type == "v_prediction"
    cams = _cams(2)
    emb = prior.encode_prompt("a cube")
    x_t = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 700])
    cond, _ = emb.for_cameras(cams)
    with torch.no_grad():
        v = prior.unet(x_t, t, encoder_hidden_states=cond).sample
    a, s = prior.schedule.alpha_t(t), prior.schedule.sigma_t(t)
    # v = alpha eps - sigma x  =>  eps = alpha v + sigma x_t
    assert torch.allclose(prior.predict_noise(x_t, t, emb, cams, guidance_scale=1.0), a * v + s * x_t, atol=1e-5)


def test_missing_model_gives_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(PriorUnavailableError, match="hf download"):
        StableDiffusionPrior.from_pretrained(tmp_path / "no-such-model", device="cpu")
    # a hub id that is not in the (empty) cache, offline: no network call, the same error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    with pytest.raises(PriorUnavailableError) as e:
        StableDiffusionPrior.from_pretrained("someone/not-cached-model", device="cpu", allow_download=True)
    msg = str(e.value)
    assert "hf download someone/not-cached-model" in msg and "HF_HUB_OFFLINE" in msg
    assert "local folder" in msg
    with pytest.raises(EstimatorUnavailableError, match="hf download"):
        TransformersDepthEstimator.from_pretrained("someone/not-cached-depth", device="cpu")


def test_vsd_lora_on_tiny_sd_targets_attention_and_adds_a_camera_embedding(tiny_sd):
    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", guidance_scale=7.5)
    vsd = VSD(prior, VSDConfig())
    names = [n for n, p in vsd.particle_score.unet.named_parameters() if p.requires_grad]
    assert any("to_q.lora_A" in n for n in names) and any("class_embedding" in n for n in names)
    cams = _cams()
    emb = prior.encode_prompt("a red cube")
    x = prior.encode_images(torch.rand(4, 16, 16, 3))
    before = {n: p.detach().clone() for n, p in vsd.particle_score.unet.named_parameters() if p.requires_grad}
    out = vsd.step(x, emb, cams, generator=torch.Generator().manual_seed(0))
    assert out.grad.shape == x.shape and out.diagnostics.lora_loss is not None
    after = dict(vsd.particle_score.unet.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None and not p.requires_grad for p in prior.parameters())


# ---------------------------------------------------------------------------- transformers depth
def _save_tiny_dpt(folder: Path) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                    fusion_hidden_size=8, head_in_index=-1, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(cfg).save_pretrained(folder)
    return folder


def _save_tiny_depth_anything(folder: Path) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    bb = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=28,
                      patch_size=7, out_features=["stage1", "stage2", "stage3", "stage4"],
                      reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bb, patch_size=7, reassemble_hidden_size=16,
                              neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["dpt", "depth_anything"])
def test_transformers_depth_estimator_is_differentiable(tmp_path, kind):
    folder = (_save_tiny_dpt if kind == "dpt" else _save_tiny_depth_anything)(tmp_path / kind)
    est = ESTIMATORS["transformers"].from_pretrained(folder, device="cpu")
    assert est.depth_kind == "disparity"  # relative inverse depth for both families
    img = torch.rand(2, 3, 20, 20, requires_grad=True)
    pred = est(img, cameras=_cams(2, 20))
    assert pred.depth.shape == (2, 1, 20, 20) and pred.normal.shape == (2, 3, 20, 20)
    assert torch.allclose(pred.normal.norm(dim=1), torch.ones(2, 20, 20), atol=1e-4)
    (pred.depth.sum() + pred.normal[:, 2].sum()).backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    assert all(p.grad is None for p in est.parameters())


def test_ssd_with_sd_latents_and_a_transformers_estimator(tiny_sd, tmp_path):
    from steinsplat.gaussians import Gaussians
    from steinsplat.render import render

    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", guidance_scale=7.5)
    est = TransformersDepthEstimator.from_pretrained(_save_tiny_dpt(tmp_path / "dpt"), device="cpu")
    gs = Gaussians.random_ball(32, radius=0.4, opacity=0.5, generator=torch.Generator().manual_seed(0))
    cams = _cams(2)
    r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    x = prior.encode_images(r.rgb)
    out = SSD(prior, [DepthBaseline(est), NormalBaseline(est)]).step(x, prior.encode_prompt("a cube"), cams, render=r)
    assert out.grad.shape == x.shape and torch.isfinite(out.grad).all()
    x.backward(out.grad)
    assert float(gs.splats["means"].grad.abs().sum()) > 0


def test_normals_from_depth_planes():
    K = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]])
    flat = torch.full((1, 1, 16, 16), 2.0)
    n = normals_from_depth(flat, K)
    assert torch.allclose(n[0, :, 4:12, 4:12], torch.tensor([0.0, 0.0, -1.0]).view(3, 1, 1).expand(3, 8, 8), atol=1e-5)
    # plane through z = 2 tilted about the y axis: z = 2 + 0.5 X  ->  normal ∝ (0.5, 0, -1) facing the camera
    v, u = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    xn = (u - 8) / 20.0  # X / z
    z = 2.0 / (1 - 0.5 * xn)  # solve z = 2 + 0.5 * xn * z
    n = normals_from_depth(z.view(1, 1, 16, 16), K)
    want = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, -1.0]), dim=0).view(3, 1, 1)
    assert torch.allclose(n[0, :, 4:12, 4:12], want.expand(3, 8, 8), atol=1e-4)


# ---------------------------------------------------------------------------- ShapeWorld prior
def test_shapeworld_adapter_loads_a_saved_prior_and_matches_its_predict_noise(tmp_path):
    from steinsplat.shapeworld.prior import PriorConfig, ShapeWorldPrior

    torch.manual_seed(0)
    sw = ShapeWorldPrior.from_config(PriorConfig(resolution=16, text_dim=8), block_out_channels=(8, 16),
                                     layers_per_block=1, text_hidden_dim=8, norm_num_groups=4)
    sw.save_pretrained(tmp_path / "prior")
    prior = PRIORS["shapeworld"].from_pretrained(tmp_path / "prior")
    assert isinstance(prior, DiffusionPrior) and prior.model_resolution == 16
    assert all(not p.requires_grad for p in prior.parameters())
    cams = _cams()
    emb = prior.encode_prompt("a red cube")
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    x = prior.encode_images(rgb)
    assert x.shape == (4, 3, 16, 16)
    t = torch.tensor([10, 300, 600, 990])
    eps_hat = prior.predict_noise(x, t, emb, cams, guidance_scale=3.0)
    # the adapter's own path (used with LoRA copies) agrees with the prior's predict_noise
    with torch.no_grad():
        eps2 = prior.denoise(x, t, emb, cams, guidance_scale=3.0)
    assert torch.allclose(eps_hat, eps2, atol=1e-5)
    x.sum().backward()
    assert float(rgb.grad.abs().sum()) > 0
    vsd = VSD(prior, VSDConfig())
    names = [n for n, p in vsd.particle_score.unet.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)  # conv/linear LoRA, no extra camera embedding
    out = vsd.step(x.detach(), emb, cams)
    assert out.grad.shape == x.shape


def test_shapeworld_adapter_missing_weights(tmp_path):
    with pytest.raises(PriorUnavailableError, match="shapeworld.train prior"):
        ShapeWorldPriorAdapter.from_pretrained(tmp_path / "nothing")


def test_prior_mapping_is_explicit():
    assert PRIORS == {"sd": StableDiffusionPrior, "shapeworld": ShapeWorldPriorAdapter}
    assert TimestepRange(anneal="none").at(0.7, 1000) == TimestepRange(anneal="none").at(0.0, 1000)


def test_shapeworld_estimator_adapter_in_ssd_through_the_renderer(tmp_path):
    from steinsplat.geometry import ShapeWorldEstimatorAdapter
    from steinsplat.gaussians import Gaussians
    from steinsplat.render import render
    from steinsplat.shapeworld.estimator import EstimatorConfig, ShapeWorldEstimator
    from steinsplat.shapeworld.prior import PriorConfig, ShapeWorldPrior

    torch.manual_seed(0)
    ShapeWorldPrior.from_config(PriorConfig(resolution=16, text_dim=8), block_out_channels=(8, 16), layers_per_block=1,
                                text_hidden_dim=8, norm_num_groups=4).save_pretrained(tmp_path / "prior")
    ShapeWorldEstimator(EstimatorConfig(resolution=16, width=8, time_dim=16)).save_pretrained(tmp_path / "estimator")
    prior = PRIORS["shapeworld"].from_pretrained(tmp_path / "prior")
    est = ESTIMATORS["shapeworld"].from_pretrained(tmp_path / "estimator")
    assert isinstance(est, ShapeWorldEstimatorAdapter) and est.input_space == "model"
    x_t = torch.randn(2, 3, 16, 16, requires_grad=True)
    pred = est(x_t, torch.tensor([100, 800]))
    assert pred.depth.shape == (2, 1, 16, 16) and pred.normal.shape == (2, 3, 16, 16) and pred.depth_kind == "depth"
    pred.depth.sum().backward()
    assert float(x_t.grad.abs().sum()) > 0
    gs = Gaussians.random_ball(32, radius=0.4, opacity=0.5, generator=torch.Generator().manual_seed(0))
    cams = _cams(2)
    r = render(gs, cams, background=(1.0, 1.0, 1.0), backend="torch")
    x = prior.encode_images(r.rgb)
    out = SSD(prior, [DepthBaseline(est), NormalBaseline(est)]).step(x, prior.encode_prompt("a red cube"), cams, render=r)
    assert out.diagnostics.phi.shape == (2, 2) and torch.isfinite(out.grad).all()
    x.backward(out.grad)
    assert float(gs.splats["means"].grad.abs().sum()) > 0
    assert all(p.grad is None for p in list(prior.parameters()) + list(est.parameters()))
    with pytest.raises(EstimatorUnavailableError, match="shapeworld.train estimator"):
        ESTIMATORS["shapeworld"].from_pretrained(tmp_path / "nothing")


def test_perp_neg_combine_against_hand_computed_cases():
    from steinsplat.priors.base import cfg_combine, perp_neg_combine

    u = torch.zeros(2, 3)
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # a negative parallel to the prompt's direction is ignored; an orthogonal one is pushed away from fully
    negs = torch.stack([torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])])  # [K=1, B=2, 3]
    w = torch.tensor([[2.0, 2.0]])
    out = perp_neg_combine(u, c, negs, w, guidance_scale=5.0)
    assert torch.allclose(out[0], 5.0 * c[0])
    assert torch.allclose(out[1], 5.0 * (c[1] - 2.0 * torch.tensor([0.0, 0.0, 1.0])))
    # weight 0 is plain CFG
    u2, c2, n2 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    assert torch.allclose(perp_neg_combine(u2, c2, n2, torch.zeros(2, 3), 7.5), cfg_combine(u2, c2, 7.5), atol=1e-6)
    # in general: the correction to CFG is orthogonal to the prompt's direction, sample by sample
    corr = perp_neg_combine(u2, c2, n2, torch.rand(2, 3), 7.5) - cfg_combine(u2, c2, 7.5)
    assert torch.allclose((corr * (c2 - u2)).sum((1, 2, 3)), torch.zeros(3), atol=1e-4)


def test_stable_diffusion_perp_neg_uses_the_other_views(tiny_sd):
    """With the tiny SD: Perp-Neg equals the formula applied to the UNet's outputs for the views'
    prompts, is plain CFG at weight 0, and leaves overhead views (no negatives) unchanged."""
    from steinsplat.priors.base import perp_neg_combine

    plain = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", guidance_scale=7.5)
    pn = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", guidance_scale=7.5, perp_neg=2.0)
    cams = _cams()  # front, side, back, overhead
    emb = plain.encode_prompt("a red cube")
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 300, 300, 300])
    raw_plain = plain.denoise(x, t, emb, cams, 7.5, raw=True)
    raw_pn = pn.denoise(x, t, pn.encode_prompt("a red cube"), cams, 7.5, raw=True)
    assert torch.allclose(raw_pn[3], raw_plain[3], atol=1e-5)  # overhead: nothing to push away from
    assert not torch.allclose(raw_pn[0], raw_plain[0], atol=1e-4)
    with torch.no_grad():
        def unet_out(texts_emb):
            return plain.unet(x, t, encoder_hidden_states=texts_emb).sample
        u = unet_out(emb.uncond.expand(4, -1, -1))
        c = unet_out(torch.cat([emb.by_view[v] for v in ("front", "side", "back", "overhead")]))
        n1 = unet_out(torch.cat([emb.by_view[v] for v in ("side", "front", "front", "overhead")]))
        n2 = unet_out(torch.cat([emb.by_view[v] for v in ("back", "back", "side", "overhead")]))
        w = torch.tensor([[2.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 0.0]])
        want = perp_neg_combine(u, c, torch.stack([n1, n2]), w, 7.5)
    assert torch.allclose(raw_pn, want, atol=1e-4)
    zero = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", guidance_scale=7.5, perp_neg=0.0)
    assert torch.allclose(zero.denoise(x, t, zero.encode_prompt("a red cube"), cams, 7.5, raw=True), raw_plain, atol=1e-6)


# ---------------------------------------------------------------------------- memory / time options
def _predictions_and_input_gradient(prior: StableDiffusionPrior):
    """What a step asks of the prior, on fixed inputs: guided eps (CFG 7.5), latents, the gradient of a
    fixed weighting of the latents w.r.t. the render (through the VAE encoder) and a decode."""
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(4, 16, 16, 3, generator=gen).requires_grad_(True)
    x = prior.encode_images(rgb)
    w = torch.randn(x.shape, generator=gen)
    (x * w).sum().backward()
    x_t = torch.randn(x.shape, generator=gen)
    t = torch.tensor([10, 300, 600, 900])
    eps = prior.predict_noise(x_t, t, prior.encode_prompt("a red cube"), _cams(), guidance_scale=7.5)
    return {"eps": eps, "x": x.detach(), "rgb_grad": rgb.grad, "decoded": prior.decode(x_t)}


@pytest.fixture(scope="module")
def tiny_sd_reference(tiny_sd):
    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu")
    return prior, _predictions_and_input_gradient(prior)


@pytest.mark.parametrize("option", ["attention_slicing", "vae_slicing", "vae_checkpointing", "channels_last"])
def test_memory_options_take_effect_and_keep_the_numbers(tiny_sd, tiny_sd_reference, option):
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    base, want = tiny_sd_reference
    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", **{option: True})
    # the default attention is already torch's SDPA (diffusers' AttnProcessor2_0), so it needs no flag
    assert {type(p) for p in base.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert not base.vae.use_slicing and not base.vae.encoder.gradient_checkpointing
    assert not base.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    if option == "attention_slicing":
        assert {type(p) for p in prior.unet.attn_processors.values()} == {SlicedAttnProcessor}
    elif option == "vae_slicing":
        assert prior.vae.use_slicing
    elif option == "channels_last":
        convs = [m for m in prior.unet.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    calls = []
    # a pre-hook: checkpoint's recompute stops early, once it has what the backward needs, before any forward hook
    hook = prior.vae.encoder.down_blocks[0].register_forward_pre_hook(lambda _m, inp: calls.append(inp[0].shape[0]))
    got = _predictions_and_input_gradient(prior)
    hook.remove()
    if option == "vae_checkpointing":  # the encoder's blocks run again in the backward pass
        assert prior.vae.encoder.gradient_checkpointing and calls == [4, 4]
    elif option == "vae_slicing":  # the 4 views one at a time
        assert calls == [1, 1, 1, 1]
    else:
        assert calls == [4]
    for k, v in want.items():
        assert torch.allclose(got[k], v, rtol=1e-4, atol=1e-5), (option, k, float((got[k] - v).abs().max()))
    # the tolerance is tight enough to see a change of the model: another noise level's eps differs
    assert not torch.allclose(got["eps"], want["eps"].roll(1, 0), rtol=1e-4, atol=1e-5)


def test_compile_unet_matches_eager_and_falls_back_with_a_warning(tiny_sd, tiny_sd_reference):
    base, want = tiny_sd_reference
    # aot_eager: dynamo traces the UNet and AOT autograd builds its graph, without generating C++ (seconds, not minutes)
    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", compile_unet=True, compile_backend="aot_eager")
    got = _predictions_and_input_gradient(prior)
    assert prior.unet_compiled and torch.allclose(got["eps"], want["eps"], rtol=1e-4, atol=1e-5)
    assert set(prior.state_dict()) == set(base.state_dict())  # the compiled wrapper is no submodule
    vsd = VSD(prior, VSDConfig())  # VSD's LoRA copy deep-copies the eager UNet
    assert type(vsd.particle_score.unet).__name__ == "UNet2DConditionModel"

    def broken_backend(_graph, _inputs):
        raise RuntimeError("no C++ compiler here")

    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", compile_unet=True, compile_backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile of the UNet failed.*no C\\+\\+ compiler.*drop --compile-unet"):
        got = _predictions_and_input_gradient(prior)
    assert not prior.unet_compiled and torch.allclose(got["eps"], want["eps"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_unet_with_inductor_on_cpu(tiny_sd, tiny_sd_reference):
    """The real compile (C++ code generation for the CPU): about 150 s on 2 shared cores, so only with
    STEINSPLAT_TEST_INDUCTOR=1 (the test above traces the same calls with the aot_eager backend)."""
    import os
    import shutil
    import warnings

    if os.environ.get("STEINSPLAT_TEST_INDUCTOR") != "1":
        pytest.skip("the inductor compile takes minutes on a CPU: set STEINSPLAT_TEST_INDUCTOR=1 to run it")
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile (inductor) on the CPU needs a C++ compiler, and none is on PATH")
    _, want = tiny_sd_reference
    prior = StableDiffusionPrior.from_pretrained(tiny_sd, device="cpu", compile_unet=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        got = _predictions_and_input_gradient(prior)
    if not prior.unet_compiled:
        pytest.skip(f"torch.compile is unavailable here: {[str(w.message) for w in caught]}")
    assert torch.allclose(got["eps"], want["eps"], rtol=1e-4, atol=1e-5)


def test_memory_flags_reach_the_prior_from_the_command_line(tiny_sd):
    from steinsplat import config
    from steinsplat.pipeline import GenerateConfig, build_prior, prior_cache_key

    argv = ["a red cube", "--prior", "sd", "--model", str(tiny_sd), "--device", "cpu", "--vae-slicing",
            "--vae-checkpointing", "--channels-last", "--attention-slicing"]
    cfg = config.parse(GenerateConfig, argv, prog="steinsplat")
    assert (cfg.vae_slicing, cfg.vae_checkpointing, cfg.channels_last, cfg.attention_slicing, cfg.compile_unet) == \
        (True, True, True, True, False)
    prior = build_prior(cfg, "sd", torch.device("cpu"))
    assert prior.vae.use_slicing and prior.vae.encoder.gradient_checkpointing and not prior.unet_compiled
    assert prior.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert type(next(iter(prior.unet.attn_processors.values()))).__name__ == "SlicedAttnProcessor"
    plain = config.parse(GenerateConfig, argv[:7], prog="steinsplat")
    # a batch's model cache never hands a prior built with other options to the next prompt
    keys = {prior_cache_key(c, "sd", torch.device("cpu")) for c in
            (cfg, plain, dataclasses.replace(plain, compile_unet=True), dataclasses.replace(plain, dtype="bfloat16"),
             dataclasses.replace(plain, perp_neg=1.0))}
    assert len(keys) == 5


def _other_value(value, hint):
    """A value of `hint` other than `value` (the field's default)."""
    import typing

    if hint is bool:
        return not value
    if hint is float:
        return value + 1.0
    if typing.get_origin(hint) is typing.Literal:
        return next(a for a in typing.get_args(hint) if a != value)
    raise AssertionError(f"no other value for {hint}: extend _other_value")


def test_every_sd_prior_field_generate_config_has_is_forwarded(monkeypatch):
    # SD_PRIOR_OPTIONS is derived from StableDiffusionPriorConfig's fields, so the two cannot drift: every
    # field both configs have reaches the prior, and the batch's model cache key tells each value apart
    import typing

    from steinsplat import pipeline
    from steinsplat.priors import PRIORS
    from steinsplat.priors.stable_diffusion import StableDiffusionPriorConfig

    sd_fields = {f.name for f in dataclasses.fields(StableDiffusionPriorConfig)}
    shared = sd_fields & {f.name for f in dataclasses.fields(pipeline.GenerateConfig)}
    assert shared == set(pipeline.SD_PRIOR_OPTIONS) | set(pipeline.SD_PRIOR_OWN)
    assert set(pipeline.SD_PRIOR_OWN) <= sd_fields and not set(pipeline.SD_PRIOR_OPTIONS) & set(pipeline.SD_PRIOR_OWN)
    assert {"attention_slicing", "vae_slicing", "vae_checkpointing", "channels_last", "compile_unet", "dtype",
            "perp_neg"} <= set(pipeline.SD_PRIOR_OPTIONS)

    seen: list[dict] = []
    monkeypatch.setitem(PRIORS, "sd", type("Capture", (), {"from_pretrained": staticmethod(
        lambda model, **kw: seen.append({"model": model, **kw}) or object())}))
    hints = typing.get_type_hints(pipeline.GenerateConfig)
    base = pipeline.GenerateConfig(prompt="a corgi", prior="sd", model="some/model", guidance_scale=7.5,
                                   allow_download=True)
    keys = {pipeline.prior_cache_key(base, "sd", torch.device("cpu"))}
    for name in pipeline.SD_PRIOR_OPTIONS:
        cfg = dataclasses.replace(base, **{name: _other_value(getattr(base, name), hints[name])})
        pipeline.build_prior(cfg, "sd", torch.device("cpu"))
        kw = seen[-1]
        assert kw[name] == getattr(cfg, name) != getattr(base, name)
        assert {k: kw[k] for k in pipeline.SD_PRIOR_OPTIONS} == {k: getattr(cfg, k) for k in pipeline.SD_PRIOR_OPTIONS}
        assert (kw["model"], kw["allow_download"], kw["guidance_scale"], kw["device"]) == ("some/model", True, 7.5, "cpu")
        assert set(kw) <= sd_fields  # each keyword is a StableDiffusionPriorConfig field
        keys.add(pipeline.prior_cache_key(cfg, "sd", torch.device("cpu")))
    assert len(keys) == 1 + len(pipeline.SD_PRIOR_OPTIONS)
