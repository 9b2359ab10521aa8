"""Where SDS's parameter-gradient variance comes from: cameras, timesteps or noise.

A nested design at one frozen scene (a snapshot of an optimisation): K camera batches (B views
each, drawn as a training step draws them), within each T timestep draws (one t per view, from the
range the run uses at the snapshot's step), within each E noise draws eps [B, C, h, w]. Every cell
gives the parameter gradient of one step, g_kje = (dx/dtheta)^T grad (what the optimiser receives).
With the model g_kje = m + a_k + b_kj + c_kje (camera, timestep, noise effects, each of zero mean
given the levels above) the law of total variance splits

    tr Cov(g) = sigma_cam^2 + sigma_t^2 + sigma_eps^2
    sigma_cam^2 = tr Cov_k(E[g | k]),  sigma_t^2 = E_k tr Cov_j(E[g | k, j]),  sigma_eps^2 = E_kj tr Cov_e(g | k, j)

estimated without bias from the balanced nested ANOVA (per parameter element, summed):
    W_e = mean_kj var_e(g_kje)           -> sigma_eps^2
    W_t = mean_k  var_j(mean_e g_kje)    -> sigma_t^2 + sigma_eps^2 / E
    W_c = var_k(mean_je g_kje)           -> sigma_cam^2 + sigma_t^2 / T + sigma_eps^2 / (T E)
so sigma_eps^2 = W_e, sigma_t^2 = W_t - W_e / E, sigma_cam^2 = W_c - W_t / T (an estimate may come
out slightly negative when a component is small; it is reported as measured).

The ceiling of a control variate in eps alone (anything of zero mean given the camera and t, as
every SSD term): it can remove at most sigma_eps^2, so with fresh cameras its variance stays at or
above (sigma_cam^2 + sigma_t^2) / tr Cov(g) = 1 - eps share of SDS's.
Across prompts: the mean share with a percentile bootstrap interval over prompts.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from ..cameras import InsideOutSampler, OrbitSampler
from ..gaussians import Gaussians
from ..guidance import SDS, sample_timesteps, stratified_timesteps
from ..render import render


@dataclass
class Components:
    """Variance components of a nested design (traces over parameter elements)."""

    camera: float  # sigma_cam^2
    timestep: float  # sigma_t^2
    noise: float  # sigma_eps^2
    K: int  # camera batches
    T: int  # timestep draws per camera batch
    E: int  # noise draws per (camera batch, timesteps)

    @property
    def total(self) -> float:
        return self.camera + self.timestep + self.noise

    def shares(self) -> dict[str, float]:
        tot = self.total
        return {k: (getattr(self, k) / tot if tot > 0 else math.nan) for k in ("camera", "timestep", "noise")}


def nested_components(cells: Iterable[Iterable[Tensor]]) -> Components:
    """The estimates above from a nested design given as, per camera batch, an iterable of per-t
    tensors [E, P] (E noise draws of a P-element gradient). Streams: holds one batch's T cell means."""
    w_e_sum = w_t_sum = 0.0
    cam_means: list[Tensor] = []
    n_cells = 0
    K = T = E = 0
    for k, per_t in enumerate(cells):
        cell_means: list[Tensor] = []
        for G in per_t:
            G = G.double()
            if G.dim() != 2 or G.shape[0] < 2:
                raise ValueError(f"each cell must be [E, P] with E >= 2 noise draws, got {tuple(G.shape)}")
            E = G.shape[0] if not E else E
            if G.shape[0] != E:
                raise ValueError("a balanced design needs the same number of noise draws in every cell")
            w_e_sum += float(G.var(0, unbiased=True).sum())
            cell_means.append(G.mean(0))
            n_cells += 1
        if len(cell_means) < 2:
            raise ValueError("need at least 2 timestep draws per camera batch")
        T = len(cell_means) if not T else T
        if len(cell_means) != T:
            raise ValueError("a balanced design needs the same number of timestep draws per camera batch")
        M = torch.stack(cell_means)  # [T, P]
        w_t_sum += float(M.var(0, unbiased=True).sum())
        cam_means.append(M.mean(0))
        K = k + 1
    if K < 2:
        raise ValueError("need at least 2 camera batches")
    w_e = w_e_sum / n_cells
    w_t = w_t_sum / K
    w_c = float(torch.stack(cam_means).var(0, unbiased=True).sum())
    return Components(camera=w_c - w_t / T, timestep=w_t - w_e / E, noise=w_e, K=K, T=T, E=E)


@dataclass
class DecompositionRow:
    prompt: str
    step: int  # optimisation step of the snapshot
    steps: int  # the run's budget (the t range is the one at step / steps)
    t_range: tuple[int, int]  # timesteps drawn from {lo, ..., hi}
    K: int
    T: int
    E: int
    views: int
    camera: float  # sigma_cam^2 (trace over the Gaussians' parameters)
    timestep: float  # sigma_t^2
    noise: float  # sigma_eps^2
    total: float  # the sum: tr Cov of one step's gradient with fresh cameras
    camera_share: float
    timestep_share: float
    noise_share: float
    eps_cv_ceiling: float  # (camera + timestep) / total: the lowest variance ratio vs SDS an eps-only control variate can reach with fresh cameras
    seconds: float  # wall time of the measurement


def measure_decomposition(scene: Gaussians, prompt: str, step: int, steps: int, prior, embeds, mode: str,
                          K: int, T: int, E: int, views: int, resolution: int, seed: int,
                          stratified: bool = False) -> DecompositionRow:
    """SDS's components at `scene` (frozen) with the nested design above (K * T * E guidance calls,
    K renders). stratified: cameras and timesteps drawn as `OptimConfig.stratify` draws them."""
    t0 = time.perf_counter()
    background = (1.0, 1.0, 1.0) if mode == "object" else (0.0, 0.0, 0.0)
    sampler = (OrbitSampler if mode == "object" else InsideOutSampler)(width=resolution, height=resolution)
    t_range = prior.timestep_range(step / max(1, steps))
    draw_t = stratified_timesteps if stratified else sample_timesteps
    sds = SDS(prior)
    params = list(scene.splats.values())
    gen = torch.Generator().manual_seed(seed)
    C, h = prior.model_channels, prior.model_resolution

    def camera_batch():
        cams = sampler.sample(views, gen, stratified=stratified)
        r = render(scene, cams, background=background)
        x = prior.encode_images(r.rgb)  # [B, C, h, w], graph to the parameters
        for _ in range(T):
            t = draw_t(views, t_range, gen)  # [B]
            G = []
            for _ in range(E):
                eps = torch.randn(views, C, h, h, generator=gen)  # [B, C, h, w]
                out = sds.step(x, embeds, cams, render=r, t=t, eps=eps, update_state=False)
                grads = torch.autograd.grad(x, params, grad_outputs=out.grad, retain_graph=True, allow_unused=True)
                G.append(torch.cat([(torch.zeros_like(p) if q is None else q.detach()).flatten()
                                    for p, q in zip(params, grads)]))
            yield torch.stack(G)  # [E, P]

    comp = nested_components(camera_batch() for _ in range(K))
    sh = comp.shares()
    return DecompositionRow(prompt, step, steps, tuple(t_range), K, T, E, views, comp.camera, comp.timestep, comp.noise,
                            comp.total, sh["camera"], sh["timestep"], sh["noise"], 1.0 - sh["noise"],
                            time.perf_counter() - t0)


def bootstrap_mean(values: list[float], reps: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `values` and a percentile bootstrap interval (resampling the values, e.g. prompts)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(vals, k=len(vals))) / len(vals) for _ in range(reps))
    a = (1 - level) / 2
    return {"mean": sum(vals) / len(vals), "lo": means[int(a * (reps - 1))], "hi": means[int((1 - a) * (reps - 1))],
            "n": len(vals)}


def summarise_decomposition(rows: list[dict], reps: int = 2000, seed: int = 0) -> dict:
    """Mean shares and the eps-only ceiling over the rows (one per prompt), with bootstrap intervals."""
    out = {k: bootstrap_mean([r[k] for r in rows], reps, seed)
           for k in ("camera_share", "timestep_share", "noise_share", "eps_cv_ceiling")}
    out["prompts"] = [r["prompt"] for r in rows]
    return out


def decomposition_markdown(section: dict) -> list[str]:
    """Lines of report.md for the section {"rows": [...], "summary": {...}}."""
    L = ["## Variance decomposition (SDS, parameter space, fresh cameras)", "",
         "Shares of tr Cov of one step's gradient from the camera batch, the timesteps and the noise (nested design "
         "K x T x E, law of total variance, `bench/decomposition.py`); ceiling: the lowest variance ratio vs SDS a "
         "control variate in eps alone can reach, 1 - noise share.", "",
         "| prompt | step | t range | K x T x E | tr Cov | camera | timestep | noise | eps-only ceiling |",
         "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        L.append(f"| {r['prompt']} | {r['step']} | {r['t_range'][0]}-{r['t_range'][1]} | {r['K']}x{r['T']}x{r['E']} | "
                 f"{r['total']:.4g} | {r['camera_share']:.3f} | {r['timestep_share']:.3f} | {r['noise_share']:.3f} | "
                 f"{r['eps_cv_ceiling']:.3f} |")
    s = section.get("summary")
    if s and s["noise_share"]["n"]:
        def f(k: str) -> str:
            v = s[k]
            return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"

        L += ["", f"Mean over {s['noise_share']['n']} prompts [95 % bootstrap interval over prompts]: camera "
              f"{f('camera_share')}, timestep {f('timestep_share')}, noise {f('noise_share')}; eps-only ceiling "
              f"{f('eps_cv_ceiling')}x SDS."]
    return L + [""]


def synthetic_cells(K: int, T: int, E: int, P: int, sd: tuple[float, float, float], gen: torch.Generator,
                    transform: Optional[Callable[[Tensor], Tensor]] = None):
    """A nested design with known components: g = a_k + b_kj + c_kje, a, b, c ~ N(0, sd^2 I_P) each
    (tr Cov contributions P sd_cam^2, P sd_t^2, P sd_eps^2); `transform` maps the noise draws (e.g. to
    a heavier-tailed distribution of the same variance). For the tests."""
    for _ in range(K):
        a = sd[0] * torch.randn(P, generator=gen, dtype=torch.float64)
        per_t = []
        for _ in range(T):
            b = sd[1] * torch.randn(P, generator=gen, dtype=torch.float64)
            c = torch.randn(E, P, generator=gen, dtype=torch.float64)
            c = sd[2] * (transform(c) if transform is not None else c)
            per_t.append(a + b + c)
        yield per_t
