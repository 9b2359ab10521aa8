"""The variance decomposition of `steinsplat bench` (bench/decomposition.py) recovers known components."""

from __future__ import annotations

import math

import pytest
import torch

from steinsplat.bench.decomposition import (bootstrap_mean, decomposition_markdown, measure_decomposition,
                                            nested_components, summarise_decomposition, synthetic_cells)


@pytest.mark.parametrize("sd", [(1.0, 0.7, 2.0), (0.3, 1.5, 0.5), (0.0, 0.0, 1.0)])
def test_nested_design_recovers_known_components(sd):
    """g = a_k + b_kj + c_kje with known variances: each component within MC tolerance, over repeats
    the estimates average to the truth (unbiased)."""
    K, T, E, P = 12, 8, 5, 40
    gen = torch.Generator().manual_seed(0)
    truth = [P * s * s for s in sd]
    est = [nested_components(synthetic_cells(K, T, E, P, sd, gen)) for _ in range(30)]
    for name, true in zip(("camera", "timestep", "noise"), truth):
        vals = torch.tensor([getattr(c, name) for c in est])
        # the spread of one estimate: var of a chi^2-like sum over P elements with K-1 dof at worst
        se_one = math.sqrt(2 / (K - 1)) * sum(truth) / math.sqrt(P)
        assert abs(float(vals[0]) - true) < 4 * se_one, (name, float(vals[0]), true)
        assert abs(float(vals.mean()) - true) < 4 * se_one / math.sqrt(len(est)) + 1e-9, (name, float(vals.mean()), true)
    shares = est[0].shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert est[0].total == pytest.approx(est[0].camera + est[0].timestep + est[0].noise)


def test_the_decomposition_separates_levels_a_naive_split_would_confuse():
    """With the noise alone the camera and timestep components stay near 0 (the naive variance of the
    camera means, E-times-T averaged noise, is not mistaken for a camera effect), heavy tails included."""
    gen = torch.Generator().manual_seed(1)
    laplace = lambda c: torch.sign(c) * torch.log1p(-torch.rand(c.shape, generator=gen, dtype=c.dtype)).neg() / math.sqrt(2)  # noqa: E731
    c = nested_components(synthetic_cells(20, 6, 4, 200, (0.0, 0.0, 1.0), gen, transform=laplace))
    assert c.noise == pytest.approx(200.0, rel=0.1)
    assert abs(c.camera) < 0.05 * c.noise and abs(c.timestep) < 0.05 * c.noise
    naive_camera = float(torch.stack([torch.stack(t).mean((0, 1)) for t in synthetic_cells(
        20, 6, 4, 200, (0.0, 0.0, 1.0), gen)]).var(0).sum())
    assert naive_camera > 0.03 * 200  # what subtracting W_t / T removes


def test_unbalanced_or_too_small_designs_are_refused():
    g = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="at least 2 camera batches"):
        nested_components([[g, g]])
    with pytest.raises(ValueError, match="at least 2 timestep"):
        nested_components([[g], [g]])
    with pytest.raises(ValueError, match="E >= 2"):
        nested_components([[g[:1], g[:1]], [g[:1], g[:1]]])
    with pytest.raises(ValueError, match="same number of noise draws"):
        nested_components([[g, g], [g, torch.zeros(4, 5)]])


def test_bootstrap_over_prompts_and_summary():
    b = bootstrap_mean([0.8, 0.82, 0.9, 0.85])
    assert b["lo"] <= b["mean"] <= b["hi"] and b["n"] == 4 and 0.8 <= b["lo"] and b["hi"] <= 0.9
    assert bootstrap_mean([0.5, 0.5])["lo"] == 0.5 == bootstrap_mean([0.5, 0.5])["hi"]
    rows = [dict(prompt=p, camera_share=c, timestep_share=t, noise_share=1 - c - t, eps_cv_ceiling=c + t)
            for p, c, t in (("a", 0.1, 0.1), ("b", 0.05, 0.1), ("c", 0.2, 0.05))]
    s = summarise_decomposition(rows)
    assert s["noise_share"]["mean"] == pytest.approx(1 - s["eps_cv_ceiling"]["mean"])
    assert s["prompts"] == ["a", "b", "c"]


def test_measured_on_a_scene_the_components_add_up_and_the_section_renders():
    from steinsplat.gaussians import Gaussians
    from steinsplat.priors.tiny import TinyPixelPrior

    prior = TinyPixelPrior(resolution=8)
    g = Gaussians.random_ball(40, radius=0.45, opacity=0.5, generator=torch.Generator().manual_seed(0))
    row = measure_decomposition(g, "a red cube", 10, 20, prior, prior.encode_prompt("a red cube"), "object",
                                K=3, T=2, E=2, views=2, resolution=8, seed=0)
    assert row.total == pytest.approx(row.camera + row.timestep + row.noise) and row.total > 0
    assert row.camera_share + row.timestep_share + row.noise_share == pytest.approx(1.0)
    assert row.eps_cv_ceiling == pytest.approx(1 - row.noise_share)
    assert tuple(row.t_range) == tuple(prior.timestep_range(0.5))
    again = measure_decomposition(g, "a red cube", 10, 20, prior, prior.encode_prompt("a red cube"), "object",
                                  K=3, T=2, E=2, views=2, resolution=8, seed=0)
    assert again.total == row.total  # same seed, same numbers
    import dataclasses

    md = "\n".join(decomposition_markdown({"rows": [dataclasses.asdict(row)],
                                           "summary": summarise_decomposition([dataclasses.asdict(row)])}))
    assert "## Variance decomposition" in md and "eps-only ceiling" in md and "a red cube" in md
