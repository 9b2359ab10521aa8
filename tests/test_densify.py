"""Densification through gsplat's strategies on the CPU renderer: growth, pruning, cap, optimiser state."""

from __future__ import annotations

import pytest
import torch

from steinsplat.cameras import OrbitSampler
from steinsplat.densify import Densifier, DensifyConfig, per_param_optimizers, relocation_torch
from steinsplat.gaussians import Gaussians
from steinsplat.render import render

LRS = dict(means=2e-3, scales=5e-3, quats=1e-3, opacities=5e-2, sh0=5e-3, shN=2e-4)


def run(strategy: str, steps: int = 41, cap: int = 10_000, n0: int = 80, **kw) -> tuple[Gaussians, dict, Densifier]:
    torch.manual_seed(0)
    target = Gaussians.random_ball(300, radius=0.4, opacity=0.8, generator=torch.Generator().manual_seed(1))
    g = Gaussians.random_ball(n0, radius=0.3, opacity=0.3, sh_degree=1, generator=torch.Generator().manual_seed(2))
    opt = per_param_optimizers(g, LRS)
    cfg = DensifyConfig(strategy=strategy, start=5, stop=100, interval=10, cap=cap, grow_grad2d=1e-6, **kw)
    d = Densifier(cfg, g, opt)
    sampler = OrbitSampler(width=24, height=24)
    gen = torch.Generator().manual_seed(3)
    for step in range(steps):
        cams = sampler.sample(2, gen)
        with torch.no_grad():
            tgt = render(target, cams, background=(1.0, 1.0, 1.0)).rgb
        out = render(g, cams, background=(1.0, 1.0, 1.0))
        d.pre_backward(step, out.info)
        (out.rgb - tgt).abs().mean().backward()
        for o in opt.values():
            o.step()
            o.zero_grad(set_to_none=True)
        d.post_backward(step, out.info, lr=LRS["means"])
    return g, opt, d


def assert_optimizer_consistent(g: Gaussians, opt: dict) -> None:
    for k, o in opt.items():
        p = o.param_groups[0]["params"][0]
        assert p is g.splats[k], f"optimizer for {k} does not hold the current parameter"
        st = o.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in st:
                assert st[name].shape == p.shape, f"{k}.{name} has shape {tuple(st[name].shape)} vs {tuple(p.shape)}"
    n = len(g)
    assert all(v.shape[0] == n for v in g.splats.values())


def test_default_strategy_grows_and_prunes_with_consistent_state():
    g, opt, d = run("default")
    assert len(d.history) >= 3
    first = d.history[0]
    assert first["after"] > first["before"]  # grew (low threshold: every touched Gaussian clones/splits)
    assert len(g) > 80
    assert_optimizer_consistent(g, opt)
    # state stays finite and renderable
    out = render(g, OrbitSampler(width=16, height=16).sample(1))
    assert torch.isfinite(out.rgb).all()


def test_default_strategy_prunes_transparent_gaussians():
    g = Gaussians.random_ball(50, radius=0.3, opacity=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g.splats["opacities"][:20] = -10.0  # opacity 4.5e-5 < prune_opa
    opt = per_param_optimizers(g, LRS)
    d = Densifier(DensifyConfig(strategy="default", start=0, stop=100, interval=1, grow_grad2d=1e9), g, opt)
    cams = OrbitSampler(width=16, height=16).sample(1)
    out = render(g, cams)
    d.pre_backward(1, out.info)
    out.rgb.sum().backward()
    d.post_backward(1, out.info)
    assert len(g) == 30
    assert bool((g.opacities > 0.1).all())
    assert_optimizer_consistent(g, opt)


def test_default_strategy_respects_cap():
    g, opt, d = run("default", cap=130)
    assert max(h["after"] for h in d.history) <= 130
    assert len(g) <= 130
    assert any(h["after"] == 130 for h in d.history)  # it did grow up to the cap
    assert_optimizer_consistent(g, opt)


def test_mcmc_strategy_runs_on_cpu_and_respects_cap():
    g, opt, d = run("mcmc", steps=61, cap=100, n0=80)
    assert len(g) == 100  # grows 5% per refinement up to the cap
    assert_optimizer_consistent(g, opt)


def test_relocation_formula_preserves_single_copy_and_opacity_identity():
    """n = 1 is the identity; for n copies, 1 - (1 - o')^n = o (the copies' combined opacity)."""
    from math import comb

    n_max = 51
    binoms = torch.tensor([[comb(n, k) for k in range(n_max)] for n in range(n_max)], dtype=torch.float32)
    o = torch.tensor([0.3, 0.7, 0.95])
    s = torch.rand(3, 3) + 0.1
    new_o, new_s = relocation_torch(o, s, torch.tensor([1, 1, 1]), binoms)
    torch.testing.assert_close(new_o, o)
    torch.testing.assert_close(new_s, s)
    n = torch.tensor([2, 3, 5])
    new_o, new_s = relocation_torch(o, s, n, binoms)
    torch.testing.assert_close(1 - (1 - new_o) ** n.float(), o)
    assert bool((new_s <= s * 1.0001).all())  # copies are never larger than the original


def test_none_strategy_and_bad_config():
    g = Gaussians.random_ball(10)
    d = Densifier(DensifyConfig(strategy="none"), g, per_param_optimizers(g, LRS))
    assert not d.enabled
    with pytest.raises(ValueError, match="unknown densification strategy"):
        DensifyConfig(strategy="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learning rates missing"):
        per_param_optimizers(g, {"means": 1e-3})


def test_clone_small_and_split_large_gaussians():
    """With every Gaussian over the gradient threshold, small ones are cloned (same scale) and large
    ones split into two smaller ones (scale / 1.6), the original removed."""
    g = Gaussians.from_points(torch.randn(6, 3) * 0.1, scale=0.001, opacity=0.5)
    with torch.no_grad():
        g.splats["scales"][3:] = torch.log(torch.tensor(0.05))  # large: 0.05 > grow_scale3d * scene_scale
    opt = per_param_optimizers(g, LRS)
    d = Densifier(DensifyConfig(strategy="default", start=0, stop=100, interval=1, grow_grad2d=1e-9,
                                grow_scale3d=0.01, prune_opa=1e-6), g, opt)
    cams = OrbitSampler(width=32, height=32).sample(2, torch.Generator().manual_seed(0))
    out = render(g, cams)
    d.pre_backward(1, out.info)
    out.rgb.sum().backward()
    d.post_backward(1, out.info)
    scales = g.scales.detach().max(-1).values
    assert len(g) == 3 * 2 + 3 * 2  # 3 clones (original kept) + 3 splits (original replaced by two)
    assert int((scales < 0.002).sum()) == 6  # originals + clones keep scale 0.001
    torch.testing.assert_close(scales[scales > 0.002], torch.full((6,), 0.05 / 1.6), rtol=1e-5, atol=0)
    assert_optimizer_consistent(g, opt)


# ---------------------------------------------------------------------------- budget-relative schedules
def test_schedule_fractions_map_to_the_old_absolute_steps_at_500():
    from steinsplat.densify import resolve_schedule
    from steinsplat.trainer import OptimConfig

    cfg = OptimConfig().densify
    s = resolve_schedule(cfg, 500)
    assert (s.start, s.stop, s.interval, s.reset_every) == (100, 400, 50, 3000)  # the absolute schedule it replaced
    assert s.refine_steps(500) == [150, 200, 250, 300, 350]


@pytest.mark.parametrize("steps", [30, 100, 123, 150, 200, 333, 400, 1000, 1201])
def test_schedule_refines_at_the_same_fractions_at_every_budget(steps):
    from steinsplat.densify import resolve_schedule

    s = resolve_schedule(DensifyConfig(start=0.2, stop=0.8, interval=0.1), steps)
    at = s.refine_steps(steps)
    assert len(at) == 5  # k * 0.1 for k = 3..7
    for k, step in zip(range(3, 8), at):
        assert abs(step - k * 0.1 * steps) <= k * 0.5 + 1e-9, (steps, at)  # k intervals, each rounded to a step


def test_integer_schedule_points_are_steps_and_bad_values_say_what_to_write():
    from steinsplat.densify import resolve_schedule

    s = resolve_schedule(DensifyConfig(start=100, stop=900, interval=100), 1200)  # integers: steps, any budget
    assert (s.start, s.stop, s.interval) == (100, 900, 100)
    assert s.refine_steps(1200) == [200, 300, 400, 500, 600, 700, 800]
    mixed = resolve_schedule(DensifyConfig(start=10, stop=0.5, interval=0.25), 40)
    assert (mixed.start, mixed.stop, mixed.interval) == (10, 20, 10)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*write an integer \(100\)"):
        DensifyConfig(start=100.0)
    with pytest.raises(ValueError, match=r"interval = 0.0.*\(0, 1\]"):
        DensifyConfig(interval=0.0)
    with pytest.raises(ValueError, match="positive"):
        DensifyConfig(interval=0)
    with pytest.raises(ValueError, match="must be a number"):
        DensifyConfig(start=True)  # type: ignore[arg-type]
    g = Gaussians.random_ball(10)
    with pytest.raises(ValueError, match="pass the step budget"):
        Densifier(DensifyConfig(strategy="default"), g, per_param_optimizers(g, LRS))


def test_yaml_and_command_line_keep_integers_as_steps_and_decimals_as_fractions(tmp_path):
    from steinsplat import config
    from steinsplat.pipeline import GenerateConfig

    cli = config.parse(GenerateConfig, ["a red cube", "--optim.densify.start", "100", "--optim.densify.stop", "0.9"],
                       prog="t")
    assert cli.optim.densify.start == 100 and isinstance(cli.optim.densify.start, int)
    assert cli.optim.densify.stop == 0.9 and isinstance(cli.optim.densify.stop, float)
    preset = tmp_path / "p.yaml"
    preset.write_text("prompt: a red cube\noptim:\n  densify:\n    start: 100\n    stop: 1.0\n")
    got = config.parse(GenerateConfig, ["--config", str(preset)], prog="t").optim.densify
    assert isinstance(got.start, int) and got.stop == 1.0 and isinstance(got.stop, float)
    preset.write_text("prompt: a red cube\noptim:\n  densify:\n    start: 100.0\n")
    with pytest.raises(config.ConfigError, match="write an integer"):
        config.parse(GenerateConfig, ["--config", str(preset)], prog="t")
