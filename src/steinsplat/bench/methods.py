"""The estimators the benchmark compares: one explicit mapping from names to builders. SSD's are
(ssd_noise, baseline, SSDConfig fields) of guidance/ssd_choices.build_ssd, the choices generation makes;
a name says them as `--ssd-noise` does: "ssd-filter[-BASELINE]" has the learned noise filter,
"ssd-BASELINE" the paper's constant term.

Main methods (issue "Evidence"):
    sds          Score Distillation Sampling
    vsd          Variational Score Distillation (LoRA particle score)
    ssd-filter   steinsplat's default SSD: the constant term plus the learned noise filter
                 (guidance/noise_cv.py), no estimator baseline for objects, depth for scenes
                 (called "ssd" before: that name still works, with a warning)
    ssd-depth    the paper's SSD: constant term + depth baseline (1 - Pearson)
    ssd-normal   the paper's SSD: constant term + normal baseline (1 - cosine)
    ssd-depth-pixel         constant term + the per-pixel depth Stein field (guidance/stein_pixel.py)
    ssd-normal-pixel        constant term + the per-pixel normal Stein field
    ssd-filter-depth-pixel  steinsplat's noise filter + the per-pixel depth field
    sds-antithetic          SDS with eps paired with -eps (two prior calls per view)
    sds-eps4                the eps-oracle: SDS averaged over 4 independent eps per view (4 prior calls per
                            view; the ceiling of any eps control variate: the positive control)
    ssd-sham                the negative control: "ssd-filter" with its full cost (same baselines, mu fit, prior
                            calls and guard bookkeeping) serving SDS's gradient (SSDConfig(sham=True))
Ablations (variance only), all on the paper's family unless named otherwise:
    mu-scalar / mu-channel / mu-pixel       mu shared over everything / per channel / per element (depth)
    mu-optimizer                            Adam on ||grad||^2 instead of running least squares (depth)
    no-constant                             the depth baseline without CV_0 = eps (SDS not in the family)
    half-res-estimator                      the depth estimator on x_t shrunk 2x
    filter+depth                            the noise filter and the depth baseline together
"""

from __future__ import annotations

from typing import Callable

from ..guidance import SDS, SSD, VSD, DepthBaseline, SDSConfig, VSDConfig, build_ssd
from ..renamed import RenamedKeys


def _ssd(ssd_noise: str, baseline: str, **overrides) -> Callable:
    """The builder of an SSD method: guidance/ssd_choices.build_ssd with these choices (the ones
    `steinsplat --ssd-noise ... --baseline ...` makes; "auto": depth for scenes, none for objects)."""
    return lambda prior, est, mode: build_ssd(prior, est, ssd_noise, baseline, mode, **overrides)


METHODS: dict[str, Callable] = RenamedKeys({  # name -> builder(prior, estimator, mode) -> Guidance
    "sds": lambda prior, est, mode: SDS(prior),
    "vsd": lambda prior, est, mode: VSD(prior, VSDConfig()),
    "ssd-filter": _ssd("filter", "auto"),  # generation's default SSD
    "ssd-depth": _ssd("constant", "depth"),
    "ssd-normal": _ssd("constant", "normal"),
    "ssd-depth-pixel": _ssd("constant", "depth-pixel"),
    "ssd-normal-pixel": _ssd("constant", "normal-pixel"),
    "ssd-filter-depth-pixel": _ssd("filter", "depth-pixel"),
    "sds-antithetic": lambda prior, est, mode: SDS(prior, SDSConfig(antithetic=True)),
    "sds-eps4": lambda prior, est, mode: SDS(prior, SDSConfig(eps_draws=4)),
    "ssd-sham": _ssd("filter", "auto", sham=True),
}, renamed={"ssd": "ssd-filter"}, what="bench method")

ABLATIONS: dict[str, Callable] = {
    "mu-scalar": _ssd("constant", "depth", mu_granularity="scalar"),
    "mu-channel": _ssd("constant", "depth", mu_granularity="channel"),
    "mu-pixel": _ssd("constant", "depth", mu_granularity="pixel"),
    "mu-optimizer": _ssd("constant", "depth", mu_mode="optimizer"),
    "no-constant": _ssd("constant", "depth", constant_term=False),
    "half-res-estimator": lambda prior, est, mode: SSD(prior, [DepthBaseline(est, input_scale=0.5)]),
    "filter+depth": _ssd("filter", "depth"),
}

# What `steinsplat bench` compares unless --methods says otherwise: the estimators of the published
# report (the per-pixel baselines and antithetic SDS are measured by benchmarks/ssd_pixel_variance.py).
DEFAULT_METHODS = ("sds", "vsd", "ssd-filter", "ssd-depth", "ssd-normal")

SAME_MEAN_AS_SDS = ("ssd-filter", "ssd", "ssd-depth", "ssd-normal", "ssd-depth-pixel", "ssd-normal-pixel", "ssd-filter-depth-pixel",
                    "sds-antithetic", "sds-eps4", "ssd-sham", *ABLATIONS)  # Stein: E[SSD] = E[SDS] for any mu, phi; antithetic: -eps ~ eps
# (VSD is left out: its mean differs from SDS's by the particle-score term, by design.)


def build(name: str, prior, est, mode: str):
    table = METHODS if name in METHODS else ABLATIONS
    if name not in table:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join([*METHODS, *ABLATIONS])}")
    return table[name](prior, est, mode)
