"""SSD's choices, written once: the noise terms (`ssd_noise`), the estimator baselines by name
(`baseline`) and the rule of `baseline: auto`. Generation (pipeline.build_guidance), the benchmark's
methods (bench/methods.py) and tests build their SSD through these, so a new SSD variant is one
entry here (plus its name in GenerateConfig's `Literal`, which tests/test_ssd_parts.py compares).

    from steinsplat.guidance.ssd_choices import build_ssd
    ssd = build_ssd(prior, estimator, ssd_noise="filter", baseline="auto", mode="scene")  # filter + depth
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .baselines import DepthBaseline, NormalBaseline
from .ssd import SSD
from .ssd_config import SSD_PRESETS, SSDConfig
from .stein_pixel import DepthPixelBaseline, FieldBaseline, NormalPixelBaseline

# ssd_noise -> the SSD preset of ssd_config.py of the same name: the learned noise filter, or the paper's
# constant term (one name per variant; kept as a table for the callers that read it).
SSD_NOISE_PRESETS = {name: name for name in SSD_PRESETS}

# SSD's estimator baselines by name (CLI `--baseline`, bench methods): "depth" and "normal" are the
# paper's scalar form (baselines.py, one phi per view; with the `constant` noise, the paper's SSD),
# "depth-pixel" and "normal-pixel" the per-pixel Stein fields of stein_pixel.py. Each takes the
# geometry estimator as first argument. A new baseline: one module plus one entry here (baselines.py).
BASELINES = {
    "depth": DepthBaseline,
    "normal": NormalBaseline,
    "depth-pixel": DepthPixelBaseline,
    "normal-pixel": NormalPixelBaseline,
}


def ssd_config_for(ssd_noise: str, **overrides) -> SSDConfig:
    """A fresh SSDConfig of the noise choice ("filter" or "constant", SSD_PRESETS), with `overrides`
    (SSDConfig fields, e.g. sham=True) set on it."""
    if ssd_noise not in SSD_PRESETS:
        raise ValueError(f"unknown ssd_noise {ssd_noise!r}: choose from {', '.join(SSD_PRESETS)}")
    return dataclasses.replace(SSD_PRESETS[ssd_noise](), **overrides)


def baseline_kind(baseline: str, mode: str) -> str:
    """The estimator baseline a `baseline` choice means in `mode`: "auto" is the depth baseline for
    scenes and none for objects (measured for objects: no gain over ssd_noise "filter", +35 % time);
    any other choice is itself ("none" included)."""
    if baseline != "auto":
        return baseline
    if mode not in ("object", "scene"):
        raise ValueError(f"baseline 'auto' depends on the mode, which is {mode!r}: settle it first (object or scene)")
    return "depth" if mode == "scene" else "none"


def make_baselines(kind: str, estimator, seed: Optional[int] = None) -> list:
    """[] for kind "none", else [BASELINES[kind](estimator)]; a per-pixel field's probes are seeded
    with `seed` when given (generation passes GenerateConfig.seed; its default is 0)."""
    if kind == "none":
        return []
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}: choose from none, {', '.join(BASELINES)}")
    cls = BASELINES[kind]
    return [cls(estimator, seed=seed)] if seed is not None and issubclass(cls, FieldBaseline) else [cls(estimator)]


def build_ssd(prior, estimator, ssd_noise: str = "filter", baseline: str = "auto", mode: str = "object",
              seed: Optional[int] = None, **overrides) -> SSD:
    """SSD with the noise terms of `ssd_noise` and the estimator baseline of `baseline` in `mode`
    (`baseline_kind`, given `estimator`). overrides: SSDConfig fields."""
    return SSD(prior, make_baselines(baseline_kind(baseline, mode), estimator, seed), ssd_config_for(ssd_noise, **overrides))
