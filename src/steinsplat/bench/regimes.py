"""The regimes of the SSD regime search: which prompts, which prior, which guidance scale.

Each regime is a way of making ShapeWorld's posterior p(x_0 | x_t, text) broad, so that the eps-draw
of score distillation (what a Stein control variate can cancel) carries more of the gradient's
variance (benchmarks/ssd_regime_gates.py, benchmarks/ssd_positive_control.py):

    single          ordinary prompts ("a red cube"), the camera-aware prior, s = 1: the regime of the
                    earlier study, its posterior almost a point (the control)
    mixture         open prompts ("a cube": any of 8 colours) as the mixture of their answers, s = 1
    mixture-guided  the same mixture guided against the unconditional branch, s = GUIDED_SCALE
    blind           ordinary prompts, the prior's camera-dropped branch (view-blind, as Stable
                    Diffusion is): the posterior mixes the object's azimuths
    blind-mixture   open prompts and the view-blind branch: colour (or shape) and azimuth open
    textured        striped prompts ("a red striped cube") and the textured prior (fine-tuned on plain
                    and striped objects, the stripe phase random per sample and left open by the text:
                    its posterior is broad over phases at the ground truth itself), camera-aware, s = 1
    textured-blind  the same with the textured prior's camera-dropped branch (phase and azimuth open)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GUIDED_SCALE = 3.0  # the guidance scale of "mixture-guided"


@dataclass(frozen=True)
class Regime:
    open_prompts: bool  # run the open prompt itself (True) or its first answer ("a cube" -> "a red cube")
    camera_blind: bool  # the prior's camera-dropped branch
    guidance_scale: float  # classifier-free guidance scale of the prior
    prior: Optional[str] = None  # which shipped prior: None the default one, "textured" the textured one


REGIMES: dict[str, Regime] = {
    "single": Regime(open_prompts=False, camera_blind=False, guidance_scale=1.0),
    "mixture": Regime(open_prompts=True, camera_blind=False, guidance_scale=1.0),
    "mixture-guided": Regime(open_prompts=True, camera_blind=False, guidance_scale=GUIDED_SCALE),
    "blind": Regime(open_prompts=False, camera_blind=True, guidance_scale=1.0),
    "blind-mixture": Regime(open_prompts=True, camera_blind=True, guidance_scale=1.0),
    "textured": Regime(open_prompts=False, camera_blind=False, guidance_scale=1.0, prior="textured"),
    "textured-blind": Regime(open_prompts=False, camera_blind=True, guidance_scale=1.0, prior="textured"),
}
TEXTURED_PROMPTS = "a red striped cube;a blue striped cylinder;a green striped sphere;a yellow striped cone"  # trained pairs


def regime(name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}: choose from {', '.join(REGIMES)}")
    return REGIMES[name]


def regime_prompt(name: str, prompt: str) -> str:
    """The prompt a regime runs for an open prompt: itself, or its first answer."""
    from ..shapeworld.vocab import prompt_modes

    return prompt if regime(name).open_prompts else prompt_modes(prompt)[0].text


def apply_regime(prior, name: str) -> None:
    """Set a ShapeWorldPriorAdapter's guidance scale and camera branch for the regime."""
    r = regime(name)
    prior.guidance_scale = r.guidance_scale
    prior.camera_blind = r.camera_blind


def regime_prior_dir(name: str):  # -> Optional[Path]
    """The prior folder a regime loads (None: the default shipped prior)."""
    r = regime(name)
    if r.prior is None:
        return None
    if r.prior == "textured":
        from ..shapeworld.prior import textured_prior_dir

        return textured_prior_dir()
    raise ValueError(f"regime {name!r} names an unknown prior {r.prior!r}")


def regime_priors(name: str):  # -> (ShapeWorldPriorAdapter, ShapeWorldEstimatorAdapter) set for the regime
    """The prior (with the regime applied) and the shipped estimator a regime runs with."""
    from ..geometry import ShapeWorldEstimatorAdapter
    from ..priors import ShapeWorldPriorAdapter

    prior = ShapeWorldPriorAdapter.from_pretrained(regime_prior_dir(name))
    apply_regime(prior, name)
    return prior, ShapeWorldEstimatorAdapter.from_pretrained(None)
