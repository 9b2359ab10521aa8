"""SSD's guard, calibrated (guidance/guard.py): its refusal rate for a neutral fit, and a fit 1.13x SDS in
parameter space that the old 8x8-pooled proxy let through.

    OMP_NUM_THREADS=1 python benchmarks/guard_calibration.py [--out docs/bench/guard_calibration.json]

  1. neutral, synthetic: paired draws grad_sds = s + e1, grad_fit = s + e2 with e1, e2 of equal
     variance (correlation rho), every bin fitted, `--steps` steps of 4 views in 10 bins: the share of
     views refused, for the old rule (m > 1 SE) and the new t-test at guard_alpha;
  2. the 1.13x fit on a real snapshot (ShapeWorld, "a red cube", SDS step 50 of 100, 4 fixed cameras,
     t = 700 for every view): SDS's noise n = grad_sds - E[grad_sds] (E from `--calib` draws) split
     into its 8x8-block-constant part L and the rest H = n - L; the fit serves
     grad_fit = E + (1 - beta) L + (1 + gamma) H, with gamma solved so that the parameter-space
     variance (trace of the covariance of d x/d theta^T grad over all Gaussian parameters) is 1.13x
     SDS's. The fit trades low-frequency noise for high-frequency noise: better in the pooled image,
     worse for the Gaussians. Checked on fresh draws, then both guards judge it over `--steps` steps;
     the same for a neutral fit (SDS's gradient at an independent eps);
  3. cost: seconds per training step of SDS and of "ssd" with the pooled and the render proxy, stepped
     in turn (`--cost-steps` each, the median after 10).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from steinsplat.bench.convergence import bench_trainer
from steinsplat.bench.guard_check import synthetic_refusal_rate
from steinsplat.guidance import SSDConfig
from steinsplat.guidance.base import weighting
from steinsplat.guidance.guard import Guard, render_pullback
from steinsplat.trainer import render


class OldGuard(Guard):
    """The guard before this calibration: refuse where m > 1 SE (SE from the EMA without the n / (n - 1))."""

    def refused(self):
        m, m2, n = self.state.stats
        cap = (1 + self.config.guard_decay) / (1 - self.config.guard_decay)
        se = ((m2 - m * m).clamp_min(0.0) / n.clamp(1.0, cap)).sqrt()
        return (n >= 2) & (m > 1.0 * se)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--calib", type=int, default=48)
    ap.add_argument("--synthetic-steps", type=int, default=3000)
    ap.add_argument("--t", type=int, default=700)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--target", type=float, default=1.13)
    ap.add_argument("--cost-steps", type=int, default=60)
    ap.add_argument("--out", default="docs/bench/guard_calibration.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rep: dict = {"command": "OMP_NUM_THREADS=1 python benchmarks/guard_calibration.py", "settings": vars(a)}

    # ---- 1. neutral, synthetic
    cfg = SSDConfig()
    syn = {}
    for rho in (0.0, 0.5, 0.9):
        syn[f"rho={rho}"] = {
            "old_z1": [synthetic_refusal_rate(OldGuard, cfg, a.synthetic_steps, k, rho, h=16) for k in range(3)],
            "new": [synthetic_refusal_rate(Guard, cfg, a.synthetic_steps, k, rho, h=16) for k in range(3)]}
    rep["neutral_synthetic"] = {"guard_alpha": cfg.guard_alpha, "views_per_seed": 4 * (a.synthetic_steps - 50),
                                "refused_share": syn}
    print(json.dumps(rep["neutral_synthetic"], indent=1))

    # ---- 2. the real snapshot
    from steinsplat.geometry import ShapeWorldEstimatorAdapter
    from steinsplat.priors import ShapeWorldPriorAdapter

    prior, est = ShapeWorldPriorAdapter.from_pretrained(None), ShapeWorldEstimatorAdapter.from_pretrained(None)
    tr = bench_trainer("sds", "a red cube", 0, 100, prior, est, 4, 64)
    while tr.state.step < 50:
        tr.step()
    gs_, emb = tr.g, tr.embeds
    cams = tr.sampler.sample(4, torch.Generator().manual_seed(0))
    out = render(gs_, cams, background=torch.ones(3))
    x = prior.encode_images(out.rgb)  # [B, C, h, w] with its graph
    xd = x.detach()
    params = list(gs_.splats.values())
    t = torch.full((len(cams),), a.t)
    w = weighting(prior.schedule, t)
    gen = torch.Generator().manual_seed(1)

    def sds_grad():
        eps = torch.randn(xd.shape, generator=gen)
        with torch.no_grad():
            e_hat = prior.predict_noise(prior.schedule.add_noise(xd, eps, t), t, emb, cams, None).float()
        return w * (e_hat - eps)  # [B, C, h, w]

    def jt(g):  # the full parameter-space gradient, flattened
        gr = torch.autograd.grad(x, params, grad_outputs=g, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if q is None else q).flatten() for p, q in zip(params, gr)])

    def split(n):  # 8x8-block-constant part and the rest
        L = F.interpolate(F.avg_pool2d(n, 8), scale_factor=8, mode="nearest")
        return L, n - L

    draws = [sds_grad() for _ in range(a.calib)]
    mean = torch.stack(draws).mean(0)  # [B, C, h, w] E[grad_sds] (estimated)
    JL, JH = [], []
    for d in draws:
        L, H = split(d - mean)
        JL.append(jt(L))
        JH.append(jt(H))
    JL, JH = torch.stack(JL), torch.stack(JH)
    JL, JH = JL - JL.mean(0), JH - JH.mean(0)
    A, Bq, Cc = float((JL * JL).sum(1).mean()), float((JH * JH).sum(1).mean()), float((JL * JH).sum(1).mean())
    v_sds = A + 2 * Cc + Bq
    lo = 1 - a.beta  # solve A lo^2 + 2 lo k C + k^2 B = target v_sds for k = 1 + gamma
    qa, qb, qc = Bq, 2 * lo * Cc, A * lo**2 - a.target * v_sds
    k = (-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    gamma = k - 1

    def fit_of(g):
        L, H = split(g - mean)
        return mean + lo * L + k * H

    # check on fresh draws: parameter-space, pooled-image and means2d second moments
    pull = render_pullback(x, out.info["means2d"])
    fresh = [sds_grad() for _ in range(a.calib)]
    Js, Jf = torch.stack([jt(g) for g in fresh]), torch.stack([jt(fit_of(g)) for g in fresh])
    var = lambda J: float(((J - J.mean(0)) ** 2).sum(1).mean())  # noqa: E731
    pooled = lambda g: float(F.avg_pool2d(g, 8).pow(2).mean())  # noqa: E731
    check = {"param_variance_ratio": var(Jf) / var(Js),
             "pooled_second_moment_ratio": sum(pooled(fit_of(g)) for g in fresh) / sum(pooled(g) for g in fresh),
             "means2d_second_moment_ratio": float(sum(pull(fit_of(g)).sum() for g in fresh) / sum(pull(g).sum() for g in fresh)),
             "param_second_moment_ratio": float((Jf**2).sum(1).mean() / (Js**2).sum(1).mean())}
    m2d = out.info["means2d"]
    vm = lambda g: torch.autograd.grad(x, m2d, grad_outputs=g, retain_graph=True)[0].flatten()  # noqa: E731
    Ms, Mf = torch.stack([vm(g) for g in fresh]), torch.stack([vm(fit_of(g)) for g in fresh])
    Ps, Pf = torch.stack([F.avg_pool2d(g, 8).flatten() for g in fresh]), torch.stack([F.avg_pool2d(fit_of(g), 8).flatten() for g in fresh])
    check.update(means2d_variance_ratio=var(Mf) / var(Ms), pooled_variance_ratio=var(Pf) / var(Ps))
    rep["snapshot"] = {"prompt": "a red cube", "step": 50, "of": 100, "gaussians": len(gs_), "t": a.t, "views": 4,
                       "beta": a.beta, "gamma": gamma, "calibration_draws": a.calib, "check_draws": a.calib, **check}
    print(json.dumps(rep["snapshot"], indent=1))

    # the guards over steps: the 1.13x fit, and a neutral fit (SDS at an independent eps)
    def judge(proxy: str, cls, kind: str) -> dict:
        cfg = SSDConfig(guard_proxy=proxy)
        guard = cls(cfg)
        guard.init_state("cpu")
        fitted = torch.full((cfg.timestep_bins,), 100)
        bins = (t * cfg.timestep_bins // prior.schedule.num_train_timesteps).clamp(0, cfg.timestep_bins - 1)
        ref = 0
        for i in range(a.steps):
            gs = sds_grad()
            gf = fit_of(gs) if kind == "worse" else sds_grad()
            o = guard.apply(gf, gs, bins, fitted, update_state=True, pullback=pull if proxy == "render" else None)
            if i >= 3:
                ref += int(torch.equal(o, gs))
        return {"refused_share_of_steps": ref / (a.steps - 3), "steps": a.steps - 3, "final_m": float(guard.state.stats[0].max())}

    guards = {}
    for kind in ("worse", "neutral"):
        for name, proxy, cls in (("old: pooled, m > 1 SE", "pooled", OldGuard), ("pooled, t-test", "pooled", Guard),
                                 ("new: render, t-test", "render", Guard)):
            guards[f"{kind} | {name}"] = judge(proxy, cls, kind)
            print(kind, name, guards[f"{kind} | {name}"])
    rep["guards_on_the_snapshot"] = guards

    # ---- 3. cost per training step: SDS, SSD with the pooled proxy, SSD with the render proxy, stepped in
    # turn (interleaved: a machine whose load changes slows all three alike), the median after 10 steps
    from steinsplat.guidance import SSD, SSD_PRESETS

    trainers = {}
    for name in ("sds", "pooled", "render"):
        tr = bench_trainer("sds", "a red cube", 0, 200, prior, est, 4, 64)
        if name != "sds":
            c = SSD_PRESETS["steinsplat"]()
            c.guard_proxy = name
            tr.guidance = SSD(prior, [], c)
        trainers[name] = tr
    times: dict = {k: [] for k in trainers}
    for _ in range(a.cost_steps):
        for k, tr in trainers.items():
            t0 = time.perf_counter()
            tr.step()
            times[k].append(time.perf_counter() - t0)
    cost = {k: sorted(v[10:])[len(v[10:]) // 2] for k, v in times.items()}
    cost["render_over_pooled"] = cost["render"] / cost["pooled"]
    cost["pooled_over_sds"] = cost["pooled"] / cost["sds"]
    cost["steps"] = a.cost_steps
    rep["cost_seconds_per_step_median"] = cost
    print(cost)
    rep["seconds"] = time.perf_counter() - t_start
    with open(a.out, "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
