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
from .sds import SDS, SDSConfig
from .ssd import SSD, DepthBaseline, FunctionBaseline, NormalBaseline, SSDConfig, stein_control_variate
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
    "SSD", "SSDConfig", "DepthBaseline", "NormalBaseline", "FunctionBaseline", "stein_control_variate",
]
