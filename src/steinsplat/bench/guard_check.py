"""The guard's refusal rate on synthetic paired gradients (benchmarks/guard_calibration.py and the tests).

Paired draws per view: grad_sds = s + e1 and grad_fit = s + scale (rho e1 + sqrt(1 - rho^2) z), with
s a fixed signal [1, 3, h, h] and e1, z ~ N(0, I) independent, so both have the same mean and
Var(grad_fit) / Var(grad_sds) = scale^2 (scale = 1: a neutral fit, neither better nor worse).
Every timestep bin counts as fitted (100 updates); the rate is the share of views served SDS's
gradient after a 50-step burn-in.
"""

from __future__ import annotations

import math

import torch


def synthetic_refusal_rate(guard_cls, cfg, steps: int = 1500, seed: int = 0, rho: float = 0.5, scale: float = 1.0,
                           B: int = 4, h: int = 8) -> float:
    """Share of views on which `guard_cls(cfg)` serves SDS's gradient (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    guard = guard_cls(cfg)
    guard.init_state("cpu")
    fitted = torch.full((cfg.timestep_bins,), 100)
    s = torch.randn(1, 3, h, h, generator=g)
    refused = total = 0
    for i in range(steps):
        bins = torch.randint(0, cfg.timestep_bins, (B,), generator=g)
        e1, z = torch.randn(B, 3, h, h, generator=g), torch.randn(B, 3, h, h, generator=g)
        gs, gf = s + e1, s + scale * (rho * e1 + math.sqrt(1 - rho**2) * z)
        out = guard.apply(gf, gs, bins, fitted, update_state=True)
        if i >= 50:
            refused += int((out == gs).flatten(1).all(1).sum())
            total += B
    return refused / total
