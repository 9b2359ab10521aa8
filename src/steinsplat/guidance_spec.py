"""The guidance of a run as one config class per method, `GuidanceSpec` = SSDSpec | SDSSpec | VSDSpec,
with each method's own options inside its class (SSD's noise terms, baseline and geometry estimator), and
the one table that maps the command line's flat flags onto them.

    from steinsplat import GenerateConfig
    from steinsplat.guidance_spec import SDSSpec, SSDSpec
    GenerateConfig("a red cube", guidance=SSDSpec(noise="constant", baseline="depth"))
    GenerateConfig("a red cube", guidance=SDSSpec())

A preset says it as a mapping tagged with the method's name (config.from_dict):

    guidance:
      name: ssd
      baseline: depth

A new method is one dataclass here (with its `name`), one entry of GUIDANCE_SPECS, its flags in
GUIDANCE_FLAGS, and its builder in pipeline.build_guidance. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Optional, Union


SSDNoise = Literal["filter", "constant"]
SSDBaseline = Literal["auto", "depth", "normal", "depth-pixel", "normal-pixel", "none"]
SSDEstimator = Literal["auto", "shapeworld", "transformers", "none"]


@dataclass
class SDSSpec:
    """Score Distillation Sampling (guidance/sds.py)."""

    name: ClassVar[str] = "sds"


@dataclass
class VSDSpec:
    """Variational Score Distillation: a camera-conditioned LoRA particle score trained alongside (guidance/vsd.py)."""

    name: ClassVar[str] = "vsd"


@dataclass
class SSDSpec:
    """Stein Score Distillation (guidance/ssd.py): SDS with control variates of the noise and, optionally,
    of a geometry estimator's depth or normals."""

    name: ClassVar[str] = "ssd"
    noise: SSDNoise = "filter"  # SSD's noise terms: a learned 3x3 content-dependent filter of eps (guidance/noise_cv.py) or the paper's constant term
    baseline: SSDBaseline = "auto"  # SSD's estimator baseline: depth/normal = the paper's scalar phi, *-pixel = per-pixel Stein fields (guidance/stein_pixel.py); auto: none for objects (no measured gain over noise "filter", +35 % time), depth for scenes
    estimator: SSDEstimator = "auto"  # SSD's geometry estimator (steinsplat/geometry/); auto: the ShapeWorld one with the ShapeWorld prior, else transformers'
    estimator_model: Optional[str] = None  # transformers depth model id or folder (Depth Anything, DPT); default depth-anything/Depth-Anything-V2-Small-hf


GuidanceSpec = Union[SSDSpec, SDSSpec, VSDSpec]
GUIDANCE_SPECS: dict[str, type] = {cls.name: cls for cls in (SSDSpec, SDSSpec, VSDSpec)}  # --guidance NAME -> its class

# The command line's flat flags of a method's options -> (the method, its field): the one place where
# `--ssd-noise filter` becomes SSDSpec(noise="filter"). A flag given with another --guidance is an error.
GUIDANCE_FLAGS: dict[str, tuple[str, str]] = {
    "ssd_noise": ("ssd", "noise"),
    "baseline": ("ssd", "baseline"),
    "estimator": ("ssd", "estimator"),
    "estimator_model": ("ssd", "estimator_model"),
}


class GuidanceFlagError(ValueError):
    """A method's flag given with another method (`--ssd-noise` with `--guidance sds`); the message names both."""


def flag_name(flag: str) -> str:
    return "--" + flag.replace("_", "-")


def spec_from_flags(guidance: str, flags: dict[str, Any], inherited: Optional[dict[str, Any]] = None) -> GuidanceSpec:
    """The spec of `--guidance NAME` with its flags' values (None: not given). `inherited`: the values the
    flags had before the command line (a preset's); those of another method than NAME are dropped, as the
    preset's choice of method was replaced, while a flag the command line gave for another method is refused."""
    if guidance not in GUIDANCE_SPECS:
        raise GuidanceFlagError(f"--guidance {guidance}: choose from {', '.join(GUIDANCE_SPECS)}")
    inherited = inherited or {}
    kw: dict[str, Any] = {}
    for flag, value in flags.items():
        member, field_name = GUIDANCE_FLAGS[flag]
        if value is None or (member != guidance and flag in inherited and inherited[flag] == value):
            continue
        if member != guidance:
            raise GuidanceFlagError(f"{flag_name(flag)} is an option of --guidance {member}, not of --guidance {guidance}: "
                                    f"drop it, or choose --guidance {member}")
        kw[field_name] = value
    return GUIDANCE_SPECS[guidance](**kw)


def flags_of(spec: GuidanceSpec) -> dict[str, Any]:
    """The flat flags that say `spec`: {"guidance": its name, each flag of its own: the value; the others: None}."""
    out: dict[str, Any] = {"guidance": spec.name}
    for flag, (member, field_name) in GUIDANCE_FLAGS.items():
        out[flag] = getattr(spec, field_name) if member == spec.name else None
    return out


def flat_options(spec: GuidanceSpec) -> dict[str, Any]:
    """`flags_of` with every flag filled (another method's: SSDSpec's default), the form checkpoints and
    run.json have always recorded ({"guidance": "sds", "ssd_noise": "filter", ...})."""
    out = flags_of(spec)
    for flag, (member, field_name) in GUIDANCE_FLAGS.items():
        if out[flag] is None and member != spec.name:
            out[flag] = getattr(GUIDANCE_SPECS[member](), field_name)
    return out


def check_spec(spec: Any, where: str = "GenerateConfig.guidance") -> None:
    """Refuse what is not one of GuidanceSpec's classes (a name as a str: say the new spelling)."""
    if isinstance(spec, tuple(GUIDANCE_SPECS.values())):
        return
    if isinstance(spec, str) and spec in GUIDANCE_SPECS:
        cls = GUIDANCE_SPECS[spec].__name__
        raise TypeError(f"{where}={spec!r}: the guidance is a config class now, {where}={cls}() "
                        f"(from steinsplat.guidance_spec import {cls})")
    raise TypeError(f"{where}: expected one of {', '.join(c.__name__ for c in GUIDANCE_SPECS.values())}, got {spec!r}")


def spec_fields(spec: GuidanceSpec) -> dict[str, Any]:
    """{"name": the method, field: value ...}: the tagged mapping a preset and run.json write."""
    return {"name": spec.name, **{f.name: getattr(spec, f.name) for f in fields(spec)}}
