"""The striped texture (shapeworld/texture.py): its albedo, the ray caster's textured path, the
phase-set metric, the vocabulary, the dataset and the shipped textured prior."""

import math

import numpy as np
import pytest
import torch

from steinsplat.cameras import object_eval_cameras
from steinsplat.shapeworld.groundtruth import gt_sums, render_gt
from steinsplat.shapeworld.metrics import evaluate
from steinsplat.shapeworld.phase_metrics import nearest_phase, striped_gt
from steinsplat.shapeworld.prior import ShapeWorldPrior, default_assets_dir, textured_prior_dir, vocabulary
from steinsplat.shapeworld.texture import STRIPE_PERIOD, STRIPE_WIDTH, phase_grid, stripe_albedo, stripe_band
from steinsplat.shapeworld.vocab import COLOURS, ObjectPrompt, PromptError, canonical_text, parse_prompt

RED = COLOURS["red"]


def test_stripe_albedo_hand_computed():
    # band = floor((z + phase) / 0.125) mod 2: 0 the colour, 1 white
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.13], [0.0, 0.0, -0.01], [0.1, 0.1, 0.2]])
    assert stripe_band(pts[:, 2], 0.0).tolist() == [0, 1, 1, 1]  # 0, 1.04, -0.08, 1.6 -> bands 0, 1, -1, 1
    # 0.2 + 0.06 = 0.26 -> 2.08 -> band 2 -> colour; 0 + 0.06 -> 0.48 -> colour; 0.13 + 0.06 -> 1.52 -> white
    alb = stripe_albedo(pts, RED, 0.06)
    expect = [RED, (1.0, 1.0, 1.0), RED, RED]  # -0.01 + 0.06 = 0.05 -> 0.4 -> colour
    assert torch.allclose(alb, torch.tensor(expect))
    assert STRIPE_WIDTH * 2 == STRIPE_PERIOD
    assert torch.equal(stripe_band(pts[:, 2], STRIPE_PERIOD), stripe_band(pts[:, 2], 0.0))  # one period: the same
    assert len(phase_grid()) == 16 and phase_grid(4) == [0.0, STRIPE_PERIOD / 4, STRIPE_PERIOD / 2, 3 * STRIPE_PERIOD / 4]


def test_plain_renders_unchanged_by_the_textured_path():
    cams = object_eval_cameras(24, 24)
    old = gt_sums(["cube"] * len(cams), cams, 2)  # the plain path (no phases)
    assert torch.equal(old, gt_sums(["cube"] * len(cams), cams, 2, phases=[None] * len(cams)))
    a, b = render_gt("a red cube", cams, supersample=2), render_gt("a red cube", cams, supersample=2, phase=0.1)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.normal, b.normal)  # a phase does nothing to a plain prompt
    # striped: the two bands split the plain shading sum; geometry columns are the same bits
    striped = gt_sums(["cube"] * len(cams), cams, 2, phases=[0.05] * len(cams))
    assert torch.equal(striped[..., 3:], old[..., 3:])
    assert torch.allclose(striped[..., 0] + striped[..., 1], old[..., 0], atol=1e-5)
    assert striped[..., 1].sum() > 0.2 * old[..., 0].sum() and striped[..., 0].sum() > 0.2 * old[..., 0].sum()
    # mixed batches: each camera as if rendered alone
    mix = render_gt(["a red striped cube", "a red cube"], cams[torch.tensor([0, 1])], supersample=2, phase=[0.05, None])
    alone = render_gt("a red striped cube", cams[torch.tensor([0])], supersample=2, phase=0.05)
    assert torch.equal(mix.rgb[0], alone.rgb[0]) and torch.equal(mix.rgb[1], a.rgb[1])
    with pytest.raises(ValueError, match="phase"):
        render_gt("a red striped cube", cams)


def test_phase_set_metric_analytic():
    p = parse_prompt("a red striped cube")
    W = 32
    cams = object_eval_cameras(W, W)
    sharp = render_gt(p, cams, phase=0.03)  # off the grid (nearest grid phase 0.03125)
    m = nearest_phase(sharp.rgb, sharp.alpha, sharp.depth, p, W, W)
    assert abs(m.phase - 0.03125) < 1e-9 and m.colour_error < 0.02 and m.mask_iou > 0.999
    at = nearest_phase(*(striped_gt(p, 0.125, W, W).__dict__[k] for k in ("rgb", "alpha", "depth")), p, W, W)
    assert at.colour_error == 0.0 and at.phase == 0.125  # on the grid: exact
    blurred = torch.stack([striped_gt(p, ph, W, W).rgb for ph in phase_grid()]).mean(0)  # the phase-averaged look
    b = nearest_phase(blurred, sharp.alpha, sharp.depth, p, W, W)
    assert b.colour_error > 0.1 and b.colour_error > 5 * m.colour_error
    # a view-inconsistent result (each view at another phase) matches no single phase
    mixed = torch.stack([striped_gt(p, phase_grid()[2 * i % 16], W, W).rgb[i] for i in range(len(cams))])
    assert nearest_phase(mixed, sharp.alpha, sharp.depth, p, W, W).colour_error > 3 * m.colour_error


def test_phase_set_metric_on_gaussians():
    """Gaussians painted with the stripes at a phase score ~perfectly; painted with the phase average, badly."""
    import open3d as o3d

    from steinsplat.gaussians import rgb_to_sh0
    from steinsplat.shapeworld.groundtruth import _scene
    from steinsplat.shapeworld.shape_metrics import gaussians_from_solid
    from steinsplat.shapeworld.world import shade, world_mesh

    g = gaussians_from_solid("cube", spacing=0.03)  # ~7k Gaussians: coarse, but the gap is ~0.1
    pts = g.means.detach().float()
    near = _scene("cube").compute_closest_points(o3d.core.Tensor(pts.numpy()))
    normals = world_mesh("cube").normals_at(torch.from_numpy(near["points"].numpy()),
                                            torch.from_numpy(near["primitive_ids"].numpy().astype("int64")))
    factor = shade(torch.ones(3), normals.float())[:, :1]  # [N, 1]
    surf = torch.from_numpy(near["points"].numpy()).float()

    def score(albedo):
        with torch.no_grad():
            g.splats["sh0"].copy_(rgb_to_sh0((albedo * factor).clamp(0, 1))[:, None])
        return evaluate(g, "a red striped cube", width=32, height=32, shape=False, r_precision=False)

    sharp = score(stripe_albedo(surf, RED, 0.09375))
    blurred = score(0.5 * (torch.tensor(RED) + 1.0).expand(len(surf), 3))
    assert abs(sharp.phase - 0.09375) < 1e-9
    assert blurred.colour_error > sharp.colour_error + 0.08, (sharp.colour_error, blurred.colour_error)


def test_vocabulary_and_tokenizer():
    p = parse_prompt("A red striped cube.")
    assert p == ObjectPrompt("red", "cube", "striped") and canonical_text(p) == "a red striped cube"
    assert parse_prompt("an orange striped cone").held_out  # held-out pairs stay held out in every texture
    assert parse_prompt("a red cube") == ObjectPrompt("red", "cube") and parse_prompt("a red cube").texture is None
    with pytest.raises(PromptError, match="'spotted'"):
        parse_prompt("a red spotted cube")
    with pytest.raises(PromptError, match="grammar"):
        parse_prompt("a striped red cube")
    shipped = ShapeWorldPrior.from_pretrained(default_assets_dir() / "prior")
    old = [w for w, _ in sorted(shipped.tokenizer.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    assert vocabulary()[: len(old)] == old and vocabulary()[len(old):] == ["striped"]  # new words come last
    with pytest.raises(PromptError, match="textured prior"):
        shipped.tokenizer(["a red striped cube"])


def test_textured_dataset_roundtrip(tmp_path):
    from steinsplat.shapeworld.data import ShapeWorldDataset, generate, make_plans

    plain = make_plans(40, 0, 3)[0]
    assert all(q.texture is None for q in plain.prompts) and plain.phases is None
    n = 104  # balanced over the 50 plain and then the 50 striped trained pairs: > 100 reach both
    generate(tmp_path / "d", n, 0, 3, resolution=16, textured=True)
    ds = ShapeWorldDataset(tmp_path / "d")
    tex = ds.arrays["texture"]
    assert 50 <= int((tex == 1).sum()) <= 54
    i = int(np.nonzero(tex == 1)[0][0])
    q, ph = ds.prompt(i), float(ds.arrays["phase"][i])
    assert q.texture == "striped" and 0.0 <= ph < STRIPE_PERIOD and ds[i].text == q.text
    j = int(np.nonzero(tex == 0)[0][0])
    assert math.isnan(float(ds.arrays["phase"][j])) and ds.prompt(j).texture is None
    again = make_plans(n, 0, 3, resolution=16, textured=True)[0]
    cam = again.cameras[torch.tensor([i])]
    rgb = render_gt(q, cam, phase=ph).rgb
    stored = torch.from_numpy(ds.arrays["rgb"][i].astype(np.float32) / 255.0)
    assert (rgb[0] - stored).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.skipif(not (textured_prior_dir() / "prior_config.json").exists(), reason="textured prior not shipped")
def test_textured_prior_loads():
    prior = ShapeWorldPrior.from_pretrained(textured_prior_dir())
    ids, mask = prior.tokenizer(["a red striped cube", "a red cube"])
    assert mask[0].sum() == 4 and mask[1].sum() == 3
    cams = object_eval_cameras(32, 32)[torch.tensor([0, 1])]
    cond = prior.encode_prompt(["a red striped cube", "a red cube"])
    eps = prior.predict_noise(torch.randn(2, 3, 32, 32), torch.tensor([500, 500]), cond, cams)
    assert eps.shape == (2, 3, 32, 32) and torch.isfinite(eps).all()


def test_textured_regimes_name_the_textured_prior():
    from steinsplat.bench.regimes import REGIMES, TEXTURED_PROMPTS, regime_prior_dir, regime_prompt

    assert regime_prior_dir("single") is None and regime_prior_dir("blind") is None
    assert regime_prior_dir("textured") == textured_prior_dir() == regime_prior_dir("textured-blind")
    assert REGIMES["textured-blind"].camera_blind and not REGIMES["textured"].camera_blind
    prompts = TEXTURED_PROMPTS.split(";")
    assert all(regime_prompt("textured", p) == p for p in prompts)
    assert not any(parse_prompt(p).held_out for p in prompts)  # the control tunes on trained pairs


def test_init_from_grows_the_vocabulary_and_keeps_the_weights():
    from steinsplat.shapeworld.finetune import prior_from_folder

    folder = default_assets_dir() / "prior"
    old = ShapeWorldPrior.from_pretrained(folder)
    new = prior_from_folder(folder)
    w_old, w_new = old.text_encoder.tok.weight, new.text_encoder.tok.weight  # [24, h], [25, h]
    assert w_new.shape[0] == w_old.shape[0] + 1 == len(vocabulary())
    assert torch.equal(w_new[: w_old.shape[0]], w_old) and torch.allclose(w_new[-1], w_old[2:].mean(0))
    cams = object_eval_cameras(32, 32)[torch.tensor([0])]
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([400])
    with torch.no_grad():  # a plain prompt: the same prediction before fine-tuning (float32 round-off apart)
        a = old.predict_noise(x, t, old.encode_prompt("a red cube"), cams)
        b = new.eval().predict_noise(x, t, new.encode_prompt("a red cube"), cams)
    assert torch.allclose(a, b, atol=1e-4)
    assert new.tokenizer(["a red striped cube"])[1].sum() == 4


def test_generation_refuses_a_texture_with_a_clear_error():
    from steinsplat import pipeline

    with pytest.raises(pipeline.GenerationError, match="'a red cube'"):
        pipeline.check_prompt("shapeworld", "a red striped cube")
    pipeline.check_prompt("shapeworld", "a red cube")  # plain prompts pass as before
