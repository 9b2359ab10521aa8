"""ShapeWorld's ground-truth metrics (docs/shapeworld.md, section Ground-truth metrics): the front door,
`evaluate` and `shape_scores` of any prompt (an open one goes to set_metrics.py). The image measures
are image_metrics.py's, the shape-aware ones shape_metrics.py's.

Each metric is computed per view and then averaged over the views; the masks and the edge cases
(empty masks, a perfect view's PSNR) are stated once, in image_metrics.py's docstring.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from ..cameras import Cameras, object_eval_cameras, scene_eval_cameras
from ..gaussians import Gaussians
from .groundtruth import GTRender, render_gt
from .classifier import shipped_classifier  # also imported from here
from .image_metrics import (  # the image measures, the metrics record and the headline, also imported from here
    HEADLINE, MASK_THRESHOLD, PSNR_CAP, ShapeWorldMetrics, _check, _mask, _nanmean, colour_error, colour_error_per_view,
    compare, depth_error, depth_error_per_view, headline, mask_iou, mask_iou_per_view, psnr, psnr_per_view,
)
from .vocab import ObjectPrompt, OpenPrompt, Prompt, as_prompt

if TYPE_CHECKING:
    from .set_metrics import SetMetrics, SetShapeScores
    from .shape_metrics import ShapeScores


# ---------------------------------------------------------------------------- evaluation
def eval_cameras(prompt: Prompt, width: int = 64, height: int = 64) -> Cameras:
    """The spec's fixed evaluation rig for a prompt: orbit for objects, inside-out for rooms."""
    return object_eval_cameras(width, height) if isinstance(prompt, ObjectPrompt) else scene_eval_cameras(width, height)


def eval_gt(prompt: Prompt, width: int = 64, height: int = 64) -> GTRender:
    """The ground truth of a prompt on its evaluation rig, cached per process: an object's from its shape's
    colour-free sums (`set_metrics.gt_of`, bit-identical to `render_gt`), a room's per prompt. Read-only."""
    if isinstance(prompt, ObjectPrompt):
        from .set_metrics import gt_of

        return gt_of(prompt, width, height)
    return _room_gt(prompt, width, height)


@functools.lru_cache(maxsize=16)
def _room_gt(prompt: Prompt, width: int, height: int) -> GTRender:
    return render_gt(prompt, eval_cameras(prompt, width, height))


def shape_scores(gaussians: Gaussians, prompt: str | Prompt | OpenPrompt, backend: str = "torch", classifier=None,
                 voxel: Optional[float] = None, views: Optional[dict] = None) -> "ShapeScores | SetShapeScores":
    """The shape-aware metrics of `gaussians` against the ground truth of an object prompt
    (`shape_metrics.shape_scores`); an open prompt ("a red shape") is scored against each shape it
    allows (`set_metrics.set_shape_scores`: the nearest shape's numbers at the top level, every shape's
    in `per_shape`). voxel: the carving grid's step (default shape_metrics.VOXEL)."""
    from . import shape_metrics

    voxel = shape_metrics.VOXEL if voxel is None else voxel
    if isinstance(as_prompt(prompt), OpenPrompt):
        from .set_metrics import set_shape_scores

        return set_shape_scores(gaussians, as_prompt(prompt), backend, classifier, voxel, views=views)
    return shape_metrics.shape_scores(gaussians, prompt, backend, classifier, voxel, views=views)


@torch.no_grad()
def evaluate(
    gaussians: Gaussians, prompt: str | Prompt | OpenPrompt, backend: str = "torch", width: int = 64, height: int = 64,
    r_precision: bool = True, shape: bool = True,
) -> "ShapeWorldMetrics | SetMetrics":
    """Render `gaussians` from the evaluation cameras (white background) and score them against
    the ground truth of `prompt`. R-precision (objects only) uses the shipped classifier; it is
    None for rooms, when `r_precision` is False, or when the classifier's weights are absent.
    `shape` adds the shape-aware measures for objects (top/low-view IoU, 3D IoU, chamfer, the
    classifier's shape votes on the confusion views; a few seconds).

    An open prompt ("a cube", OpenPrompt) is scored against each of its modes: the result is a
    `set_metrics.SetMetrics` whose ShapeWorldMetrics keys are the nearest mode's, with the chosen
    mode, the per-metric best and the mode purities beside them (docs: Scoring open prompts).
    A striped prompt ("a red striped cube") is scored at its nearest stripe phase (phase_metrics.py):
    a `TexturedMetrics`, the phase it chose beside the usual keys."""
    from .shape_metrics import render_views, shape_rigs

    p = as_prompt(prompt)
    if isinstance(p, OpenPrompt):
        from .set_metrics import evaluate_set

        return evaluate_set(gaussians, p, backend, width, height, r_precision=r_precision, shape=shape)
    is_object = isinstance(p, ObjectPrompt)
    rigs = {"eval": eval_cameras(p, width, height), **(shape_rigs() if shape and is_object else {})}
    views = render_views(gaussians, rigs, backend)  # every rig in one batch of calls
    rgb, alpha, depth = views["eval"]  # [B, H, W, 3], [B, H, W, 1], [B, H, W, 1]
    if is_object and p.texture is not None:  # striped: the ground truth is a set over phases
        from .phase_metrics import nearest_phase

        m = nearest_phase(rgb, alpha, depth, p, width, height)
    else:
        m = compare(rgb, alpha, depth, eval_gt(p, width, height))
    clf = shipped_classifier() if (r_precision and is_object) else None
    if clf is not None:
        m.r_precision = clf.r_precision(rgb.clamp(0, 1), p)
    if shape and is_object:
        from .shape_metrics import shape_scores

        sc = shape_scores(gaussians, p, backend=backend, classifier=clf, views=views)
        m.top_iou, m.low_iou, m.iou_3d, m.chamfer_mm = sc.top_iou, sc.low_iou, sc.iou_3d, sc.chamfer_mm
        m.shape_votes = sc.shape_votes or None
    m.headline = headline(m, p)
    return m
