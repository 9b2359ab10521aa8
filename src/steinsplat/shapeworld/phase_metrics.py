"""Scores for a striped prompt, whose ground truth is a set over stripe phases (texture.py).

"a red striped cube" is right at any phase, so its image metrics are taken at the nearest phase:
for each phase of a grid (`texture.phase_grid()`, 16 phases 1/16 period apart) the ground truth of
the evaluation rig is rendered, the colour error (mean |rgb error| inside the GT mask, over all
views at once) computed, and the phase with the least error chosen; PSNR and mask IoU are that
phase's (mask, depth and the shape measures do not depend on the phase at all).

Purity comes with it: one phase serves every view, so stripes that drift from view to view cannot
match any phase; and a phase-blurred result (the stripes averaged to a pink band-less object, what
a posterior mean over phases would paint) is ~|colour - white| / 2 off at every pixel, whatever the
phase, while a sharp result at any phase scores about 0 at its grid neighbour (tests/test_textures.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from torch import Tensor

from .groundtruth import GTRender
from .image_metrics import ShapeWorldMetrics, compare
from .set_metrics import gt_of
from .texture import phase_grid
from .vocab import ObjectPrompt


@dataclass
class TexturedMetrics(ShapeWorldMetrics):
    """`metrics.evaluate` of a striped prompt: the ShapeWorldMetrics keys at the nearest phase."""

    phase: Optional[float] = None  # the nearest stripe phase (metres), the one the image metrics are taken at
    phase_colour_errors: list = field(default_factory=list)  # colour error at each grid phase, grid order


def striped_gt(prompt: ObjectPrompt, phase: float, width: int = 64, height: int = 64) -> GTRender:
    """The ground truth of a striped prompt at one phase on the evaluation rig (read-only, cached sums)."""
    if prompt.texture is None:
        raise ValueError(f"{prompt.text!r} is plain: use metrics.eval_gt for it")
    return gt_of(prompt, width, height, phase)


def nearest_phase(rgb: Tensor, alpha: Tensor, depth: Tensor, prompt: ObjectPrompt, width: int = 64, height: int = 64,
                  phases: Optional[Sequence[float]] = None) -> TexturedMetrics:
    """The image metrics of renders rgb [B, H, W, 3], alpha/depth [B, H, W, 1] (evaluation rig) at the phase
    of `phases` (default the grid) with the least colour error over all views."""
    grid = list(phase_grid() if phases is None else phases)
    per = [compare(rgb, alpha, depth, striped_gt(prompt, ph, width, height)) for ph in grid]
    errs = [m.colour_error for m in per]
    k = min(range(len(grid)), key=lambda i: errs[i])  # the first best on ties
    best = per[k]
    return TexturedMetrics(mask_iou=best.mask_iou, psnr=best.psnr, colour_error=best.colour_error,
                           depth_error=best.depth_error, phase=grid[k], phase_colour_errors=errs)
