"""Score-distillation guidance: one file per estimator, one shared interface (`base.Guidance`).

    from steinsplat.guidance import GUIDANCE
    guidance = GUIDANCE["ssd"](prior, baselines=[DepthBaseline(estimator)])
    out = guidance.step(x, embeds, cameras, render=render_output, progress=step / steps)
    x.backward(out.grad)          # or out.surrogate(x).backward()
"""

from .base import (
    Guidance, GuidanceConfig, GuidanceDiagnostics, GuidanceOutput, ParameterVariance, parameter_gradient_variance,
    sample_timesteps, stratified_timesteps, surrogate_loss, weighting,
)
from .baselines import DepthBaseline, FunctionBaseline, NormalBaseline, stein_control_variate
from .sds import SDS, SDSConfig
from .ssd import SSD
from .ssd_choices import BASELINES, SSD_NOISE_PRESETS, baseline_kind, build_ssd, make_baselines, ssd_config_for
from .ssd_config import SSD_PRESETS, SSDConfig
from .stein_pixel import (
    DepthPixelBaseline, FieldBaseline, FunctionFieldBaseline, NormalPixelBaseline, stein_field_control_variate,
)
from .vsd import VSD, LoRAParticleScore, VSDConfig

GUIDANCE = {
    "sds": SDS,
    "vsd": VSD,
    "ssd": SSD,
}

__all__ = [
    "GUIDANCE", "Guidance", "GuidanceConfig", "GuidanceDiagnostics", "GuidanceOutput", "ParameterVariance",
    "parameter_gradient_variance", "sample_timesteps", "stratified_timesteps", "surrogate_loss", "weighting",
    "SDS", "SDSConfig", "VSD", "VSDConfig", "LoRAParticleScore",
    "SSD", "SSDConfig", "SSD_PRESETS", "DepthBaseline", "NormalBaseline", "FunctionBaseline", "stein_control_variate",
    "BASELINES", "FieldBaseline", "FunctionFieldBaseline", "DepthPixelBaseline", "NormalPixelBaseline",
    "stein_field_control_variate", "SSD_NOISE_PRESETS", "ssd_config_for", "baseline_kind", "make_baselines", "build_ssd",
]
