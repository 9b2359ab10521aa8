"""The default object schedule (short, at a higher rate) and the knobs it is made of."""

import dataclasses

import pytest
import torch

from steinsplat import config
from steinsplat.pipeline import GenerateConfig, init_gaussians
from steinsplat.priors.tiny import TinyPixelPrior
from steinsplat.guidance import SDS, SDSConfig
from steinsplat.trainer import OptimConfig, Trainer


def trainer(optim: OptimConfig) -> Trainer:
    prior = TinyPixelPrior()
    g = init_gaussians(GenerateConfig(prompt="x", init_gaussians=50, mode="object"), torch.device("cpu"))
    return Trainer(g, prior, SDS(prior, SDSConfig()), prior.encode_prompt("x"), optim, seed=0)


def rates(t: Trainer) -> dict[str, float]:
    return {k: o.param_groups[0]["lr"] for k, o in t.optimizers.items()}


def test_lr_mult_scales_every_rate_and_lr_final_decays_the_others():
    base = OptimConfig(steps=5, views=1, resolution=8)
    t1 = trainer(base)
    t4 = trainer(dataclasses.replace(base, lr_mult=4.0, lr_final=0.25))
    r1, r4 = rates(t1), rates(t4)
    assert set(r1) == set(r4)
    for k in r1:
        assert r4[k] == pytest.approx(4 * r1[k])
    for _ in range(5):
        t1.step()
        t4.step()
    # last step (4 of 0..4): the means at lr_means_final x4, the others at 1/4 of their x4 start
    assert rates(t4)["means"] == pytest.approx(4 * base.lr_means_final)
    for k in r1:
        if k != "means":
            assert rates(t4)[k] == pytest.approx(4 * r1[k] * 0.25)
            assert rates(t1)[k] == r1[k]  # lr_final 1: constant


def test_default_schedule_and_presets():
    d = GenerateConfig(prompt="a red cube")
    assert (d.steps, d.optim.lr_mult, d.optim.lr_final, d.optim.colour_average, d.init_color) == (100, 4.0, 1.0, 0.2, "grey")
    obj = config.parse(GenerateConfig, ["--config", "object", "a red cube"], prog="t")
    # the preset states the default schedule (it pins the prior, baseline and init size that "auto" resolves to)
    assert dataclasses.replace(obj, prior="auto", guidance=dataclasses.replace(obj.guidance, baseline="auto"),
                               init_gaussians=None, mode="auto") == d
    old = config.parse(GenerateConfig, ["--config", "object-500", "a red cube"], prog="t")
    assert (old.steps, old.optim.lr_mult, old.optim.colour_average, old.init_color) == (500, 1.0, 0.0, "random")
    assert old.optim.lr_means == d.optim.lr_means  # the same base rates, unscaled
    for name in ("sd-object", "sd-scene"):  # a preset's optim: mapping starts from OptimConfig's x1
        assert config.parse(GenerateConfig, ["--config", name, "a corgi"], prog="t").optim.lr_mult == 1.0
    cli = config.parse(GenerateConfig, ["a red cube", "--optim.lr-mult", "2", "--optim.lr-final", "0.5"], prog="t")
    assert (cli.optim.lr_mult, cli.optim.lr_final) == (2.0, 0.5)


def test_colour_average_ends_on_the_mean_of_the_windows_iterates():
    from steinsplat.densify import DensifyConfig

    optim = OptimConfig(steps=8, views=1, resolution=8, colour_average=0.5, densify=DensifyConfig(strategy="none"))
    t = trainer(optim)
    assert t.colour_window_start() == 4
    seen = []
    for s in range(8):
        before = t.g.splats["sh0"].detach().clone()
        t.step()
        if s < 7:
            seen.append(t.g.splats["sh0"].detach().clone())
        else:  # the last step's own iterate is in the mean too: rebuild it from the sums' definition
            last = t.colour_sum["sh0"] - sum(seen[4:])
            seen.append(last)
        assert not torch.equal(before, seen[-1])  # colours move every step
    want = torch.stack(seen[4:]).mean(0)
    assert torch.allclose(t.g.splats["sh0"], want, atol=1e-7)
    assert not torch.allclose(t.g.splats["sh0"], seen[-1])  # the average, not the last iterate
    # off: the run ends on its last iterate, bit for bit what an averaging run saw before its window
    off = trainer(dataclasses.replace(optim, colour_average=0.0))
    for _ in range(4):
        off.step()
    assert torch.equal(off.g.splats["sh0"], seen[3])


def test_colour_average_survives_a_checkpoint_inside_its_window():
    from steinsplat.densify import DensifyConfig

    optim = OptimConfig(steps=8, views=1, resolution=8, colour_average=0.5, densify=DensifyConfig(strategy="none"))
    whole = trainer(optim)
    for _ in range(8):
        whole.step()
    part = trainer(optim)
    for _ in range(6):
        part.step()
    tensors, meta = part.state_tensors()
    resumed = trainer(optim)
    resumed.load_state_tensors(tensors, meta)
    resumed.state.step = meta["step"]
    for _ in range(2):
        resumed.step()
    assert torch.equal(resumed.g.splats["sh0"], whole.g.splats["sh0"])
