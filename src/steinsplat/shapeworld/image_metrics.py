"""The image measures of ShapeWorld's metrics, per view and averaged over the views, and the headline
number of a result; shared by metrics.py (one prompt), shape_metrics.py and set_metrics.py (open prompts).

Each metric is computed per view and then averaged over the views. Masks are `alpha > 0.5`
for both the prediction and the ground truth. Edge cases:
- mask IoU: a view where both masks are empty (empty union) scores 1.0;
- PSNR: images in [0, 1]; a view with zero error scores PSNR_CAP (100 dB) instead of inf;
- colour error: mean |rgb_pred - rgb_gt| over the pixels and channels inside the ground-truth
  mask; views with an empty ground-truth mask are skipped; nan if every view is skipped;
- depth error: mean |depth_pred - depth_gt| (metres) inside the intersection of both masks;
  views with an empty intersection are skipped; nan if every view is skipped (nothing to compare).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from .vocab import OpenPrompt, Prompt, RoomPrompt

if TYPE_CHECKING:
    from .groundtruth import GTRender
    from .set_metrics import SetMetrics

MASK_THRESHOLD = 0.5
PSNR_CAP = 100.0  # dB, the score of a perfect view (mse clamped at 1e-10)


def _mask(alpha: Tensor) -> Tensor:
    """[B, H, W] bool from alpha [B, H, W, 1] or [B, H, W] (a bool mask passes through)."""
    if alpha.dtype == torch.bool:
        m = alpha
    else:
        m = alpha > MASK_THRESHOLD
    return m.squeeze(-1) if m.dim() == 4 else m


def _check(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}; pass [B, H, W, C] for both")


def _nanmean(x: Tensor) -> float:
    """Mean of the finite entries of a [B] tensor; nan if there is none."""
    ok = torch.isfinite(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


# ---------------------------------------------------------------------------- per view
def mask_iou_per_view(alpha_pred: Tensor, alpha_gt: Tensor) -> Tensor:
    """IoU of (alpha_pred > 0.5) and (alpha_gt > 0.5) per view: [B] (1.0 where the union is empty)."""
    _check(alpha_pred, alpha_gt, "mask_iou")
    p, g = _mask(alpha_pred.detach()), _mask(alpha_gt.detach())  # [B, H, W]
    inter = (p & g).flatten(1).sum(1).float()
    union = (p | g).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def psnr_per_view(rgb_pred: Tensor, rgb_gt: Tensor) -> Tensor:
    """PSNR in dB per view: [B], for images in [0, 1] (capped at PSNR_CAP)."""
    _check(rgb_pred, rgb_gt, "psnr")
    mse = (rgb_pred.detach().float() - rgb_gt.detach().float()).square().flatten(1).mean(1)
    return (-10.0 * torch.log10(mse.clamp_min(10.0 ** (-PSNR_CAP / 10.0)))).clamp_max(PSNR_CAP)


def colour_error_per_view(rgb_pred: Tensor, rgb_gt: Tensor, mask_gt: Tensor) -> Tensor:
    """Mean absolute RGB error inside the ground-truth mask per view: [B] (nan where it is empty).

    mask_gt: ground-truth alpha [B, H, W, 1] (thresholded at 0.5) or a bool mask.
    """
    _check(rgb_pred, rgb_gt, "colour_error")
    m = _mask(mask_gt.detach()).float()  # [B, H, W]
    err = (rgb_pred.detach().float() - rgb_gt.detach().float()).abs().mean(-1)  # [B, H, W]
    n = m.flatten(1).sum(1)
    s = (err * m).flatten(1).sum(1)
    return torch.where(n > 0, s / n.clamp_min(1.0), torch.full_like(n, math.nan))


def depth_error_per_view(depth_pred: Tensor, alpha_pred: Tensor, depth_gt: Tensor, alpha_gt: Tensor) -> Tensor:
    """Mean |depth_pred - depth_gt| inside both masks per view: [B] (nan where the intersection is empty)."""
    _check(depth_pred, depth_gt, "depth_error")
    _check(alpha_pred, alpha_gt, "depth_error")
    m = (_mask(alpha_pred.detach()) & _mask(alpha_gt.detach())).float()  # [B, H, W]
    err = (depth_pred.detach().float() - depth_gt.detach().float()).abs()
    err = err.squeeze(-1) if err.dim() == 4 else err  # [B, H, W]
    n = m.flatten(1).sum(1)
    s = (err * m).flatten(1).sum(1)
    return torch.where(n > 0, s / n.clamp_min(1.0), torch.full_like(n, math.nan))


# ---------------------------------------------------------------------------- averaged
def mask_iou(alpha_pred: Tensor, alpha_gt: Tensor) -> float:
    """Mask IoU averaged over the views (see `mask_iou_per_view`)."""
    return float(mask_iou_per_view(alpha_pred, alpha_gt).mean())


def psnr(rgb_pred: Tensor, rgb_gt: Tensor) -> float:
    """PSNR (dB) averaged over the views (see `psnr_per_view`)."""
    return float(psnr_per_view(rgb_pred, rgb_gt).mean())


def colour_error(rgb_pred: Tensor, rgb_gt: Tensor, mask_gt: Tensor) -> float:
    """Colour error averaged over the views with a non-empty ground-truth mask (nan if none)."""
    return _nanmean(colour_error_per_view(rgb_pred, rgb_gt, mask_gt))


def depth_error(depth_pred: Tensor, alpha_pred: Tensor, depth_gt: Tensor, alpha_gt: Tensor) -> float:
    """Depth error (metres) averaged over the views with a non-empty mask intersection (nan if none)."""
    return _nanmean(depth_error_per_view(depth_pred, alpha_pred, depth_gt, alpha_gt))


# ---------------------------------------------------------------------------- headline
HEADLINE = {"object": "mask_iou", "scene": "psnr"}  # the one number a run is summed up by
# A room has no background: its Gaussians start on the walls, so the mask IoU (~0.99) and the depth
# error of a room of coloured noise look as good as a fitted room's; only the colour against the
# ground truth (PSNR, colour error) tells them apart.


def headline(metrics: "ShapeWorldMetrics | SetMetrics", prompt: Prompt | OpenPrompt) -> dict:
    """{"name", "value"} of the metric that sums up a result: PSNR (dB) for a room, mask IoU for an object."""
    name = HEADLINE["scene" if isinstance(prompt, RoomPrompt) else "object"]
    return {"name": name, "value": getattr(metrics, name)}


# ---------------------------------------------------------------------------- the record of one result
@dataclass
class ShapeWorldMetrics:
    mask_iou: float  # mean IoU of the alpha > 0.5 masks, higher is better (1 = perfect)
    psnr: float  # dB, higher is better (capped at 100)
    colour_error: float  # mean |rgb error| inside the GT mask, lower is better
    depth_error: float  # metres, inside both masks, lower is better (nan: no overlap)
    r_precision: Optional[float] = None  # share of views the ShapeWorld classifier gets right (None: not run)
    # Shape-aware measures (objects only; None for rooms or when not run), see shape_metrics.py:
    top_iou: Optional[float] = None  # mask IoU from straight above (elevation 90), higher is better
    low_iou: Optional[float] = None  # mask IoU at elevation 0 over 8 azimuths, higher is better
    iou_3d: Optional[float] = None  # voxel IoU of the occupied volume against the true solid, higher is better
    chamfer_mm: Optional[float] = None  # surface-to-surface chamfer distance in mm, lower is better
    shape_votes: Optional[dict] = None  # {shape: share} of the classifier's calls on views where look-alikes differ
    headline: Optional[dict] = None  # {"name": metric, "value": v}: objects mask_iou, rooms psnr (see `headline`)

    def to_dict(self) -> dict[str, Optional[float]]:
        return asdict(self)


def compare(pred_rgb: Tensor, pred_alpha: Tensor, pred_depth: Tensor, gt: GTRender) -> ShapeWorldMetrics:
    """All metrics of rendered images (white background) against a ground-truth render."""
    return ShapeWorldMetrics(
        mask_iou=mask_iou(pred_alpha, gt.alpha),
        psnr=psnr(pred_rgb, gt.rgb),
        colour_error=colour_error(pred_rgb, gt.rgb, gt.alpha),
        depth_error=depth_error(pred_depth, pred_alpha, gt.depth, gt.alpha),
    )
