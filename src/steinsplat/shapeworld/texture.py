"""ShapeWorld's one texture, "striped": bands along the object's z axis with a random phase.

"a red striped cube" is the cube painted in alternating horizontal bands of its colour and white:
    band(z) = floor((z + phase) / STRIPE_WIDTH) mod 2      (0: the colour, 1: white)
z the object-space height of the surface point (metres; objects sit at the origin unrotated, so
object space is world space), phase uniform in [0, STRIPE_PERIOD) per rendered sample. The text
leaves the phase open: the ground truth of a striped prompt is the set over phases (a nuisance the
prior sees in training, so its posterior p(x_0 | x_t, text) stays broad at high noise even at the
ground truth itself: docs/shapeworld.md, "Textures").

The period is chosen to be resolvable at the prior's 32x32: an object spans ~13 px at d = 1.8 and
fovy 40 (~24 px a metre), so a 0.25 m period is ~6 px (3 px a band), about 2.2 periods over a cube.

In the ray caster a striped object is two parts, labelled by the band of each hit point (part 0 the
colour, part 1 white), so the per-part shading sums of `groundtruth` compose it unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

TEXTURE_NAMES: tuple[str, ...] = ("striped",)  # index = texture id (0 in data shards means plain)
STRIPE_PERIOD = 0.25  # metres: one colour band + one white band
STRIPE_WIDTH = STRIPE_PERIOD / 2  # metres per band
STRIPE_WHITE: tuple[float, float, float] = (1.0, 1.0, 1.0)  # albedo of the second band
PHASE_GRID = 16  # phases the set-valued metrics try (spacing STRIPE_PERIOD / 16 = 1.6 cm, ~0.4 px at 32x32)


def stripe_band(z: Tensor, phase: Tensor | float) -> Tensor:
    """Band index (int64, 0 the colour, 1 white) of object-space heights z [...] at phase [...] (broadcast)."""
    return torch.remainder(torch.floor((z + phase) / STRIPE_WIDTH), 2).to(torch.int64)


def stripe_albedo(points: Tensor, colour: Sequence[float], phase: float) -> Tensor:
    """Albedo [..., 3] of a striped object of `colour` at object-space points [..., 3] and one phase."""
    band = stripe_band(points[..., 2], phase)[..., None]  # [..., 1]
    c = torch.tensor(colour, dtype=points.dtype)
    w = torch.tensor(STRIPE_WHITE, dtype=points.dtype)
    return torch.where(band == 0, c, w)


def phase_grid(n: int = PHASE_GRID) -> list[float]:
    """n phases evenly over one period, [0, P/n, ..., (n-1) P/n] (the set-valued truth's grid)."""
    if n < 1:
        raise ValueError(f"need at least one phase, got {n}")
    return [STRIPE_PERIOD * k / n for k in range(n)]


def check_phase(phase: float) -> float:
    """A phase as float, refusing NaN/inf with a message that says what is expected."""
    p = float(phase)
    if not math.isfinite(p):
        raise ValueError(f"a stripe phase is a finite number of metres in [0, {STRIPE_PERIOD}), got {phase!r}")
    return p
