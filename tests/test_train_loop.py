"""The text-to-3D loop with a tiny random prior: gradients reach the Gaussians, non-finite steps are
skipped, and a run interrupted and resumed from a checkpoint ends exactly where an uninterrupted run does."""

from __future__ import annotations

import pytest
import torch

from steinsplat.densify import DensifyConfig
from steinsplat.gaussians import Gaussians
from steinsplat.pipeline import load_checkpoint, save_checkpoint
from steinsplat.guidance import GUIDANCE, NormalBaseline
from steinsplat.geometry.tiny import TinyConvEstimator
from steinsplat.priors.tiny import TinyPixelPrior
from steinsplat.trainer import OptimConfig, Trainer


def make_trainer(kind: str, steps: int = 12) -> Trainer:
    prior = TinyPixelPrior(resolution=16)
    if kind == "ssd":
        guidance = GUIDANCE["ssd"](prior, baselines=[NormalBaseline(TinyConvEstimator())])
    else:
        guidance = GUIDANCE[kind](prior)
    g = Gaussians.random_ball(150, radius=0.45, opacity=0.2, generator=torch.Generator().manual_seed(0))
    cfg = OptimConfig(steps=steps, views=2, resolution=16,
                      densify=DensifyConfig(start=2, stop=10, interval=3, cap=400, grow_grad2d=1e-7))
    return Trainer(g, prior, guidance, prior.encode_prompt("a red cube"), cfg, mode="object", seed=3)


@pytest.mark.parametrize("kind", ["sds", "ssd"])
def test_resume_matches_uninterrupted_run(tmp_path, kind):
    full = make_trainer(kind)
    full.run()
    part = make_trainer(kind)
    while part.state.step < 7:
        part.step()
    ckpt = save_checkpoint(part, tmp_path / "ckpt")
    resumed = make_trainer(kind)
    load_checkpoint(resumed, ckpt)
    assert resumed.state.step == 7
    resumed.run()
    assert len(resumed.g) == len(full.g) and len(full.g) > 150  # densification happened, identically
    for k in full.g.splats:
        torch.testing.assert_close(resumed.g.splats[k], full.g.splats[k], rtol=0, atol=0, msg=f"{k} differs")
    assert [h.step for h in resumed.state.history] == list(range(12))


def test_loop_updates_gaussians_and_skips_non_finite_steps():
    tr = make_trainer("sds", steps=4)
    before = tr.g.state_tensors()
    tr.step()
    after = tr.g.state_tensors()
    assert not torch.equal(before["means"], after["means"])  # the guidance gradient moved the Gaussians
    assert not torch.equal(before["sh0"], after["sh0"])
    # a NaN from the guidance is skipped and counted, the Gaussians stay untouched
    original = tr.guidance.step

    def nan_step(*a, **kw):
        out = original(*a, **kw)
        out.grad = torch.full_like(out.grad, float("nan"))
        return out

    tr.guidance.step = nan_step
    snap = tr.g.state_tensors()
    assert tr.step() is None
    assert tr.state.skipped == 1
    for k, v in tr.g.state_tensors().items():
        assert torch.equal(v, snap[k])
    assert all(bool(torch.isfinite(v).all()) for v in tr.g.state_tensors().values())


def test_scene_trains_on_a_random_background_per_view_and_resumes_exactly(tmp_path):
    """Rooms have no background: each view is rendered over a fresh random colour (from the trainer's
    generator, so a resumed run draws the same ones); objects stay on white."""
    prior = TinyPixelPrior(resolution=8)
    seen: list[torch.Tensor] = []

    def make(mode: str) -> Trainer:
        guidance = GUIDANCE["sds"](prior)
        original = guidance.step

        def spy(x, *a, **kw):
            seen.append(x.detach().clone())
            return original(x, *a, **kw)

        guidance.step = spy
        far = Gaussians.random_ball(20, radius=0.1, opacity=0.2, generator=torch.Generator().manual_seed(0))
        far.splats["means"].data += torch.tensor([0.0, 0.0, 50.0])  # above every camera: nothing drawn
        cfg = OptimConfig(steps=4, views=3, resolution=8)
        return Trainer(far, prior, guidance, prior.encode_prompt("a room"), cfg, mode=mode, seed=1)

    make("object").run()
    objects = torch.stack(seen)
    seen.clear()
    full = make("scene")
    full.run()
    scenes = torch.stack(seen)  # [steps, B, C, h, w]
    assert torch.equal(objects, torch.full_like(objects, objects.flatten()[0].item()))  # all white
    per_view = scenes.flatten(3)  # [steps, B, C, h*w]: one colour per view
    torch.testing.assert_close(per_view, per_view[..., :1].expand_as(per_view), rtol=0, atol=1e-5)
    colours = per_view[..., 0].flatten(0, 1)  # [steps * B, C]
    assert torch.unique(colours, dim=0).shape[0] == colours.shape[0]  # a fresh colour every view
    assert colours.std(0).min() > 0.1
    seen.clear()
    part = make("scene")
    part.step(), part.step()
    ckpt = save_checkpoint(part, tmp_path / "ckpt")
    resumed = make("scene")
    load_checkpoint(resumed, ckpt)
    seen.clear()
    resumed.run()
    torch.testing.assert_close(torch.stack(seen), scenes[2:], rtol=0, atol=0)


def test_runs_of_different_budgets_densify_at_the_same_fractions():
    """Budget-relative schedules: the 30-step run is the 60-step run compressed (the densification
    schedule, like the lr decay and the t annealing, is a fraction of the budget)."""
    refined = {}
    for steps in (30, 60):
        prior = TinyPixelPrior(resolution=8)
        g = Gaussians.random_ball(60, radius=0.45, opacity=0.2, generator=torch.Generator().manual_seed(0))
        cfg = OptimConfig(steps=steps, views=1, resolution=8)
        cfg.densify.grow_grad2d = 1e-12  # every visible Gaussian grows: each refinement shows in the history
        tr = Trainer(g, prior, GUIDANCE["sds"](prior), prior.encode_prompt("a red cube"), cfg, mode="object", seed=0)
        assert tr.lr_means(steps - 1) == pytest.approx(cfg.lr_means_final)  # the lr decay ends with the budget
        tr.run()
        refined[steps] = [h["step"] / steps for h in tr.densifier.history]
    assert len(refined[30]) == len(refined[60]) == 5
    assert refined[30] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert refined[60] == pytest.approx(refined[30])
