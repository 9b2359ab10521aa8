"""SSD's configuration and its two noise variants, defined here once, each with one name everywhere
(`--ssd-noise`, SSD_PRESETS, the bench methods "ssd-filter" and "ssd-<baseline>"):

    constant  steps 3a + 3c of ssd.py: the paper's constant term CV_0 = eps, plus the estimator baselines
              passed to SSD (the paper's scalar depth / normal phi): SSDConfig() as it is.
    filter    steps 3a + 3b: the learned 3x3 content-dependent noise filter (noise_cv.py), what
              `steinsplat` generates with (`--ssd-noise filter`, bench method "ssd-filter").

Their names before: "paper" (constant) and "steinsplat" (filter); those still work, with a warning.

    from steinsplat.guidance import SSD, SSD_PRESETS
    ssd = SSD(prior, baselines, SSD_PRESETS["filter"]())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence

from ..renamed import RenamedKeys
from .base import GuidanceConfig
from .noise_cv import NoiseMaps


@dataclass
class SSDConfig(GuidanceConfig):
    mu_mode: Literal["least_squares", "optimizer", "fixed"] = "least_squares"  # how mu is chosen (mu_fit.py)
    mu_granularity: Literal["scalar", "channel", "pixel"] = "channel"  # what mu is shared over
    mu_fixed: Optional[Sequence[float]] = None  # "fixed" mode: one mu per CV (constant first); default (1, 0, ..., 0) = SDS
    timestep_bins: int = 10  # separate mu per bin of t (the optimum changes a lot with t)
    ema_decay: float = 0.95  # least squares: EMA decay of the moments (per bin)
    ridge: float = 1e-3  # least squares: ridge (relative to the trace) pulling mu towards SDS's (1, 0, ..., 0)
    opt_lr: float = 0.05  # optimizer: Adam learning rate on mu
    opt_steps: int = 3  # optimizer: Adam steps per iteration
    noise_kernel: int = 1  # step 3b: k x k window of shifted noises (1 with noise_maps "none" = the paper's constant term only)
    noise_mix_channels: bool = False  # step 3b also with the other channels' noise (a C -> C filter)
    noise_maps: NoiseMaps = "none"  # step 3b: modulate the shifted noises by maps of the detached render (none | alpha | poly2)
    solve_every: int = 4  # least squares with K > 4 CVs: re-solve a bin's mu after this many updates of its moments (after each of the first ones)
    pool_updates: int = 32  # least squares: a bin is solved with its nearest bins' moments until their (EMA-capped) updates add up to this (0: its own only)
    constant_term: bool = True  # CV_0 = eps in the family (False, an ablation: SDS is then not inside the family)
    guard: bool = True  # step 5: per timestep bin, SDS's mu wherever the fitted mu has shown a larger second moment out of sample
    guard_min_updates: int = 2  # step 5: updates a bin needs before its fitted mu is used (and measured); SDS before
    guard_decay: float = 0.9  # step 5: EMA decay of the paired differences of second moments (it judges the current fit)
    guard_alpha: float = 0.04  # step 5: the level of the one-sided t-test "the fit's second moment exceeds SDS's" (measured: a neutral fit refused on 3-4 % of its views)
    guard_proxy: Literal["render", "pooled"] = "render"  # step 5: the parameters' gradient proxy: pulled back onto the 2D means (2 vector-Jacobian products per step), or the pooled image (the fallback without a render graph)
    guard_every: int = 2  # step 5, "render" proxy: measure every n-th step (its 2 vector-Jacobian products cost ~15 % of an SSD step at n = 2 on the CPU)
    guard_pool: int = 8  # step 5, "pooled" proxy: the gradient average-pooled over f x f blocks (1: per element)
    sham: bool = False  # the negative control ("ssd-sham"): every step of SSD runs (baselines, fit, guard), then SDS's gradient is served (step 6 of ssd.py)


def filter_preset() -> SSDConfig:
    """steinsplat's SSD: the learned 3x3 noise filter, mixing channels, modulated by 1, x_c and x_c x_c'."""
    return SSDConfig(noise_kernel=3, noise_mix_channels=True, noise_maps="poly2")


steinsplat_preset = filter_preset  # its name before the variants were called filter / constant

SSD_PRESETS: dict[str, Callable[[], SSDConfig]] = RenamedKeys({  # name -> a fresh SSDConfig
    "filter": filter_preset,  # the learned noise filter (module docstring)
    "constant": SSDConfig,  # the constant term (and the baselines SSD is given): the paper's family
}, renamed={"steinsplat": "filter", "paper": "constant"}, what="SSD preset")
