"""Stratified views (OptimConfig.stratify): each view's azimuth and timestep stays uniform on its own,
the B views of a step cover the strata once each, and a stratified run resumes exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steinsplat.cameras import InsideOutSampler, OrbitSampler, stratified_circle
from steinsplat.gaussians import Gaussians
from steinsplat.pipeline import load_checkpoint, save_checkpoint
from steinsplat.guidance import GUIDANCE, sample_timesteps, stratified_timesteps
from steinsplat.priors.tiny import TinyPixelPrior
from steinsplat.trainer import OptimConfig, Trainer


def chi2_uniform(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("B", [1, 3, 4])
def test_stratified_azimuths_are_uniform_per_view_and_cover_every_stratum(B):
    gen = torch.Generator().manual_seed(0)
    n = 2000
    az = torch.stack([OrbitSampler().sample(B, gen, stratified=True).azimuth for _ in range(n)])  # [n, B] degrees
    assert bool((az >= 0).all() and (az < 360).all())
    for i in range(B):  # each view alone: uniform on [0, 360) (chi^2 over 12 bins, 11 dof: 99.9 % quantile 31.3)
        counts = torch.histc(az[:, i], bins=12, min=0.0, max=360.0)
        assert chi2_uniform(counts) < 31.3, (i, counts)
    strata = torch.sort(torch.floor(az / (360.0 / B)), dim=1).values  # [n, B]: one view per stratum
    assert torch.equal(strata, torch.arange(B, dtype=strata.dtype).expand(n, B))
    if B > 1:  # evenly spaced: consecutive gaps of exactly 360 / B
        gaps = torch.remainder(torch.diff(az, dim=1), 360.0)
        torch.testing.assert_close(gaps, torch.full_like(gaps, 360.0 / B), atol=1e-3, rtol=0)
    # the negative control: independent draws do bunch up (two views in one stratum often)
    ind = torch.stack([OrbitSampler().sample(4, gen).azimuth for _ in range(200)])
    ind_strata = torch.sort(torch.floor(ind / 90.0), dim=1).values
    assert not torch.equal(ind_strata, torch.arange(4, dtype=ind_strata.dtype).expand(200, 4))
    yaw = InsideOutSampler().sample(B, gen, stratified=True).azimuth  # scenes: the yaw likewise
    assert torch.equal(torch.sort(torch.floor(yaw / (360.0 / B))).values, torch.arange(B, dtype=yaw.dtype))


def test_stratified_timesteps_are_uniform_per_view_and_one_per_stratum():
    gen = torch.Generator().manual_seed(1)
    t_range, B, n = (20, 979), 4, 6000
    T = torch.stack([stratified_timesteps(B, t_range, gen) for _ in range(n)])  # [n, B]
    assert T.dtype == torch.long and int(T.min()) >= 20 and int(T.max()) <= 979
    width = (979 - 20 + 1) / B
    strata = torch.sort(torch.floor((T - 20).double() / width), dim=1).values
    assert torch.equal(strata, torch.arange(B, dtype=strata.dtype).expand(n, B))  # every stratum once per step
    for i in range(B):  # view i alone: uniform over the whole range, not over one stratum
        counts = torch.histc(T[:, i].double(), bins=16, min=20, max=980)
        assert chi2_uniform(counts) < 37.7, (i, counts)  # 15 dof, 99.9 %
        assert abs(float(T[:, i].double().mean()) - 499.5) < 4 * 277 / n ** 0.5
    # integers: a range of 6 values with B = 4 still gives every value with probability 1/6
    small = torch.stack([stratified_timesteps(4, (3, 8), gen) for _ in range(6000)]).flatten()
    counts = torch.bincount(small - 3, minlength=6).double()
    assert counts.numel() == 6 and chi2_uniform(counts) < 20.5  # 5 dof
    # the spread of the mean t over a step shrinks against independent draws (what stratification buys)
    ind = torch.stack([sample_timesteps(B, t_range, gen) for _ in range(n)]).double().mean(1)
    assert float(T.double().mean(1).var()) < 0.2 * float(ind.var())


def test_stratified_circle_with_a_single_view_is_one_uniform_draw():
    gen = torch.Generator().manual_seed(2)
    u = torch.cat([stratified_circle(1, gen) for _ in range(3000)])
    assert chi2_uniform(torch.histc(u, bins=10, min=0.0, max=1.0)) < 27.9  # 9 dof


def make(steps: int = 8, stratify: bool = True) -> Trainer:
    prior = TinyPixelPrior(resolution=8)
    g = Gaussians.random_ball(80, radius=0.45, opacity=0.2, generator=torch.Generator().manual_seed(0))
    cfg = OptimConfig(steps=steps, views=3, resolution=8, stratify=stratify)
    return Trainer(g, prior, GUIDANCE["sds"](prior), prior.encode_prompt("a red cube"), cfg, mode="object", seed=5)


def test_a_stratified_run_draws_stratified_views_and_resumes_exactly(tmp_path):
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(tr: Trainer) -> Trainer:
        original = tr.guidance.step

        def step(x, embeds, cams, *a, **kw):
            out = original(x, embeds, cams, *a, **kw)
            seen.append((cams.azimuth.clone(), out.diagnostics.t.clone()))
            return out

        tr.guidance.step = step
        return tr

    full = spy(make())
    full.run()
    ref = list(seen)
    for az, t in ref:
        assert torch.equal(torch.sort(torch.floor(az / 120.0)).values, torch.arange(3.0))
        lo, hi = full.prior.timestep_range(0.0)  # the widest range (annealing only shrinks it)
        assert len(set(t.tolist())) == 3 and lo <= int(t.min()) and int(t.max()) <= hi  # one t per stratum
    seen.clear()
    part = spy(make())
    for _ in range(3):
        part.step()
    ckpt = save_checkpoint(part, tmp_path / "ckpt")
    seen.clear()
    resumed = spy(make())
    load_checkpoint(resumed, ckpt)
    resumed.run()
    assert len(seen) == 5
    for (a, t), (ra, rt) in zip(ref[3:], seen):
        assert torch.equal(a, ra) and torch.equal(t, rt)
    for k in full.g.splats:
        torch.testing.assert_close(resumed.g.splats[k], full.g.splats[k], rtol=0, atol=0)
    plain = make(stratify=False)  # off (the default): other draws, the run is not the stratified one
    plain.run()
    assert not torch.equal(plain.g.splats["means"], full.g.splats["means"])
    assert dataclasses.fields(OptimConfig) and OptimConfig().stratify is False


def test_the_bench_variance_machinery_measures_stratified_draws():
    from steinsplat.bench.variance import measure_variance

    prior = TinyPixelPrior(resolution=8)
    g = Gaussians.random_ball(40, radius=0.45, opacity=0.5, generator=torch.Generator().manual_seed(0))
    rows = measure_variance(g, "middle", 5, prior, None, prior.encode_prompt("a red cube"), "object", ["sds"],
                            {"run": (20, 979)}, ["fresh", "stratified"], 0, 6, 2, 8, seed=0)
    assert [r.cameras for r in rows] == ["fresh", "stratified"]
    for r in rows:
        assert r.variance > 0 and 0 < r.variance_se < float("inf") and r.ratio_vs_sds == pytest.approx(1.0)
    assert rows[0].variance != rows[1].variance  # other draws
    with pytest.raises(ValueError, match="unknown camera mode"):
        measure_variance(g, "middle", 5, prior, None, prior.encode_prompt("a red cube"), "object", ["sds"],
                         {"run": (20, 979)}, ["sideways"], 0, 2, 2, 8, seed=0)
