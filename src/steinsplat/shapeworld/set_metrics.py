"""Scores for a set-valued truth: an open prompt ("a cube", "a red shape", "an object") is answered
by any of its modes (`OpenPrompt.modes`), so a scene is scored against the mode it is nearest to,
checked for being one mode rather than a blend of several, and a set of seeds for how many modes
they reach (docs/shapeworld.md, section Scoring open prompts).

**Nearest-mode scores.** For every valid mode m the ordinary metrics s_k(m) are computed
(metrics.py, shape_metrics.py), and
- `best[k] = max_m s_k(m)` (min for the lower-is-better ones), with the mode that achieved it;
- the *chosen* mode m* is one rule, and every top-level metric is that mode's:
  with the shape measures, m* = argmax 3D IoU (ties: lower chamfer, then mode order), then among
  that shape's colours argmin colour error; without them, argmax mask IoU, then argmin colour error.
  For an open prompt whose modes share one shape ("a cube"), 3D IoU ties and colour error decides.

Work is shared: the prediction is rendered once per rig and carved once; the ground truth is cast
once per distinct shape (`groundtruth.gt_sums`) and given each mode's albedo by `compose_gt` (a
mode's colour changes only rgb), so a mode's numbers are bit-identical to its own ObjectPrompt's.

**Mode purity** (a blend of two colours or a half-cube half-sphere must score badly), per scene,
each in [0, 1] (1: one mode); the headline `purity` is the least of the three that ran (a scene is
as pure as its weakest test: each catches another way of being two modes at once):
- `call_purity`: the shipped classifier calls (colour, shape) on each of the B evaluation views;
  #{views whose call = the majority call} / B (majority ties go to the call seen first). None
  without the classifier. Two halves of different colours or shapes split the views' calls;
- `view_purity`: the same with the ground truth as the judge: each view's call is the valid mode
  whose ground-truth image is nearest (highest PSNR of that view); needs no classifier;
- `pixel_purity`: the share of pixels inside m*'s ground-truth mask whose colour is unambiguously
  m*'s: mean_c |rgb - gt_m*| < 1/2 min_{c != colour(m*)} mean_c |gt_c - gt_m*|, where gt_c is the
  ground truth at that pixel with the albedo of colour c (all 8 colours, shaded alike). A uniform
  blend that no single colour explains (each Gaussian half red, half blue: every view looks alike,
  the classifier calls it purple throughout) fails it almost everywhere;
- the nearest-mode colour error itself (top-level `colour_error`).
A uniform blend that lands near a *valid* colour (the mean of all 8 albedos is close to gray) is
that colour as far as any image can tell; the purities cannot flag it, the colour error can.

**Diversity across seeds** (`mode_diversity`): of N results (their chosen modes), the number of
distinct modes reached, the plug-in entropy H = -sum_m f_m log2 f_m of their frequencies f_m, its
evenness H / log2 min(N, M) and fraction distinct / min(N, M) (1 when every seed that could reach a new
mode did), and the coverage distinct / M of the prompt's M modes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..cameras import object_eval_cameras
from ..gaussians import Gaussians
from .groundtruth import GTRender, _TorchThreads, compose_gt, gt_sums, part_albedos, render_gt
from .classifier import shipped_classifier
from .image_metrics import (
    _mask, _nanmean, colour_error_per_view, depth_error_per_view, headline, mask_iou, mask_iou_per_view,
    psnr_per_view,
)
from . import shape_metrics
from .shape_metrics import (
    SURFACE_SAMPLES, VOXEL, _distance_to_mesh, iou_3d, sample_surface, surface_of, true_mesh, true_occupancy,
)
from .vocab import (
    COLOUR_NAMES, COLOURS, ObjectPrompt, OpenPrompt, as_prompt, canonical_text, prompt_modes,
)

HIGHER_IS_BETTER = {"mask_iou": True, "psnr": True, "colour_error": False, "depth_error": False,
                    "top_iou": True, "low_iou": True, "iou_3d": True, "chamfer_mm": False}
IMAGE_KEYS = ("mask_iou", "psnr", "colour_error", "depth_error")  # per mode, from the evaluation views
SHAPE_KEYS = ("top_iou", "low_iou", "iou_3d", "chamfer_mm")  # per shape, from shape_metrics
MODE_RULE_SHAPE = "argmax iou_3d (ties: min chamfer_mm), then argmin colour_error among that shape's colours"
MODE_RULE_IMAGE = "argmax mask_iou, then argmin colour_error"
GT_SUPERSAMPLE = 4  # the ground truth's S x S rays per pixel (render_gt's default, the spec's)


# ---------------------------------------------------------------------------- records
@dataclass
class SetShapeScores:
    """`shape_metrics.shape_scores` of an open prompt: the nearest shape's scores at the top level."""

    top_iou: float  # the nearest shape's top-view IoU, higher is better
    low_iou: float  # the nearest shape's low-view IoU, higher is better
    iou_3d: float  # the nearest shape's 3D IoU (the highest over the prompt's shapes)
    chamfer_mm: float  # the nearest shape's chamfer distance (mm)
    shape_votes: dict  # {shape: share} of the classifier's shape calls on the confusion views (as for one prompt)
    shape: str  # the nearest shape: argmax iou_3d (ties: min chamfer_mm, then shape order)
    per_shape: dict = field(default_factory=dict)  # {shape: {top_iou, low_iou, iou_3d, chamfer_mm}} for every valid shape
    best: dict = field(default_factory=dict)  # {metric: {"value": v, "shape": s}} the best over the valid shapes


@dataclass
class SetMetrics:
    """`metrics.evaluate` of an open prompt. The keys of ShapeWorldMetrics keep their meaning, for the
    chosen mode `mode` (so the benches read them unchanged); the rest is set-valued."""

    mask_iou: float  # the chosen mode's mean mask IoU over the evaluation views
    psnr: float  # the chosen mode's PSNR (dB)
    colour_error: float  # the chosen mode's colour error: the nearest single mode's, lower is better
    depth_error: float  # the chosen mode's depth error (metres)
    r_precision: Optional[float] = None  # share of views the classifier calls as *some* valid mode (None: not run)
    top_iou: Optional[float] = None  # the chosen mode's shape measures (None when not run)
    low_iou: Optional[float] = None
    iou_3d: Optional[float] = None
    chamfer_mm: Optional[float] = None
    shape_votes: Optional[dict] = None  # {shape: share} of the classifier's calls on the confusion views
    prompt: str = ""  # the open prompt, canonical text
    num_modes: int = 0  # how many modes it allows (8, 7 or 56)
    mode: str = ""  # the chosen (nearest) mode, canonical text, e.g. "a red cube"
    mode_rule: str = ""  # how `mode` was chosen
    best: dict = field(default_factory=dict)  # {metric: {"value": v, "mode": text}}: the per-metric best over the modes
    purity: Optional[float] = None  # headline mode purity: min(call_purity, view_purity, pixel_purity) of those run
    call_purity: Optional[float] = None  # share of views whose classifier call is the majority call
    majority_call: Optional[str] = None  # the classifier's majority call, e.g. "a red cube" (may be invalid)
    view_purity: float = math.nan  # share of views whose nearest mode (by PSNR) is the majority one
    view_modes: list = field(default_factory=list)  # each view's nearest mode (text), evaluation-view order
    pixel_purity: float = math.nan  # share of the chosen mode's mask pixels unambiguously of its colour
    per_mode: Optional[list] = None  # [{"mode": text, metric: value, ...}] for every mode (when asked)
    headline: Optional[dict] = None  # {"name": "mask_iou", "value": the chosen mode's} (metrics.headline)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- helpers
def open_prompt(prompt: "str | OpenPrompt | ObjectPrompt") -> OpenPrompt | ObjectPrompt:
    """The parsed prompt, checked to be an object or open prompt (rooms have no set-valued form)."""
    p = as_prompt(prompt)
    prompt_modes(p)  # raises PromptError for a room, saying what is accepted
    return p  # type: ignore[return-value]


def distinct_shapes(modes: Sequence[ObjectPrompt]) -> list[str]:
    """The shapes of `modes`, first-seen order."""
    return list(dict.fromkeys(m.shape for m in modes))


def _lower_first(key: str, v: float) -> float:
    """A sort key where lower is better and nan is worst."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return math.inf
    return -v if HIGHER_IS_BETTER[key] else v


def best_of(values: dict[str, float], key: str, label: str = "mode", prefer: Optional[str] = None) -> dict:
    """{"value": v, label: name}: the best of {name: value} for metric `key` (nan worst). On ties `prefer`
    wins if it is among the best (the chosen mode: a shape measure ties over a shape's colours), else the first."""
    name = min(values, key=lambda n: _lower_first(key, values[n]))  # min is stable: the first best wins
    if prefer in values and _lower_first(key, values[prefer]) == _lower_first(key, values[name]):
        name = prefer
    return {"value": values[name], label: name}


def majority(calls: Sequence[str]) -> tuple[str, float]:
    """The most frequent call (ties: the one seen first) and the share of calls equal to it."""
    counts = Counter(calls)
    top = max(counts.values())
    winner = next(c for c in calls if counts[c] == top)
    return winner, top / len(calls)


@lru_cache(maxsize=256)
def eval_gt_sums(shape: str, width: int, height: int, phase: Optional[float] = None) -> Tensor:
    """`gt_sums` [B, H, W, 8] of a shape from the object evaluation rig (cached: colour-free); with
    `phase` (metres), of the striped shape at that stripe phase (phase_metrics.py)."""
    cams = object_eval_cameras(width, height)
    with _TorchThreads(1):  # as render_gt: the same summation order, the same bits
        return gt_sums([shape] * len(cams), cams, GT_SUPERSAMPLE, phases=None if phase is None else [phase] * len(cams))


def gt_of(mode: ObjectPrompt, width: int, height: int, phase: Optional[float] = None) -> GTRender:
    """The ground truth of one mode on the evaluation rig, from its shape's cached sums; a striped mode
    needs the stripe `phase` (its ground truth is a set over phases: phase_metrics.nearest_phase)."""
    if (mode.texture is None) != (phase is None):
        raise ValueError(f"{mode.text!r} is striped: its ground truth is a set over phases; "
                         "use phase_metrics.striped_gt(prompt, phase) or phase_metrics.nearest_phase"
                         if phase is None else f"{mode.text!r} is plain: it has no stripe phase")
    sums = eval_gt_sums(mode.shape, width, height, None if phase is None else float(phase))
    albedos = part_albedos(mode)[None].expand(len(sums), 3, 3)  # [B, 3, 3]
    with torch.no_grad():
        return compose_gt(sums, albedos.contiguous(), GT_SUPERSAMPLE)


@lru_cache(maxsize=16)
def _true_surface_samples(shape: str, num: int) -> np.ndarray:
    """[num, 3] area samples of a shape's true surface (cached; the same as chamfer_mm draws)."""
    return sample_surface(*true_mesh(shape), num)


# ---------------------------------------------------------------------------- shape measures
@torch.no_grad()
def set_shape_scores(gaussians: Gaussians, prompt: "str | OpenPrompt | ObjectPrompt", backend: str = "torch",
                     classifier=None, voxel: Optional[float] = None, views: Optional[dict] = None) -> SetShapeScores:
    """`shape_scores` against every shape the prompt allows, sharing the work: the prediction is carved
    once and rendered once per rig, and compared with each shape's true occupancy, surface and
    silhouettes. The nearest shape (argmax 3D IoU; ties: min chamfer, then shape order) gives the
    top-level numbers; `per_shape` has them all and `best` the best of each metric. views: the caller's
    `shape_metrics.render_views` of `shape_metrics.shape_rigs()` (rendered here if None)."""
    voxel = VOXEL if voxel is None else voxel
    shapes = distinct_shapes(prompt_modes(open_prompt(prompt)))
    g = gaussians
    occ = shape_metrics.carved_occupancy(g, backend, voxel)  # once, whatever the number of shapes
    pred_mesh = surface_of(occ, voxel)
    pred_samples = sample_surface(*pred_mesh, SURFACE_SAMPLES) if len(pred_mesh[1]) else None
    views = views if views is not None else shape_metrics.render_views(g, shape_metrics.shape_rigs(), backend)
    per_shape: dict[str, dict] = {}
    for s in shapes:
        if pred_samples is None:
            cham = float("inf")
        else:  # as chamfer_mm(pred_mesh, true_mesh(s)), the prediction's samples drawn once
            d_ab = _distance_to_mesh(pred_samples, *true_mesh(s))
            d_ba = _distance_to_mesh(_true_surface_samples(s, SURFACE_SAMPLES), *pred_mesh)
            cham = float(500.0 * (d_ab.mean() + d_ba.mean()))
        per_shape[s] = {
            "top_iou": mask_iou(views["top"][1], shape_metrics.rig_gt_alpha(s, "top")),
            "low_iou": mask_iou(views["low"][1], shape_metrics.rig_gt_alpha(s, "low")),
            "iou_3d": iou_3d(occ, true_occupancy(s, voxel)),
            "chamfer_mm": cham,
        }
    nearest = min(shapes, key=lambda s: (-per_shape[s]["iou_3d"], per_shape[s]["chamfer_mm"]))
    votes = shape_metrics.shape_votes(g, classifier, backend, rgb=views["confusion"][0])
    best = {k: best_of({s: per_shape[s][k] for s in shapes}, k, "shape", nearest) for k in SHAPE_KEYS}
    return SetShapeScores(shape_votes=votes, shape=nearest, per_shape=per_shape, best=best, **per_shape[nearest])


# ---------------------------------------------------------------------------- image measures and purity
def _per_view_scores(rgb: Tensor, alpha: Tensor, depth: Tensor, modes: Sequence[ObjectPrompt], width: int,
                     height: int) -> dict[str, dict[str, Tensor]]:
    """{mode text: {metric: [B] per view}} for the image metrics; mask and depth once per shape."""
    out: dict[str, dict[str, Tensor]] = {}
    by_shape: dict[str, dict[str, Tensor]] = {}
    for m in modes:
        gt = gt_of(m, width, height)
        if m.shape not in by_shape:  # alpha and depth do not depend on the colour
            by_shape[m.shape] = {"mask_iou": mask_iou_per_view(alpha, gt.alpha),
                                 "depth_error": depth_error_per_view(depth, alpha, gt.depth, gt.alpha)}
        out[m.text] = {"mask_iou": by_shape[m.shape]["mask_iou"], "psnr": psnr_per_view(rgb, gt.rgb),
                       "colour_error": colour_error_per_view(rgb, gt.rgb, gt.alpha),
                       "depth_error": by_shape[m.shape]["depth_error"]}
    return out


def pixel_purity(rgb: Tensor, mode: ObjectPrompt, width: int, height: int) -> float:
    """Share of the pixels inside `mode`'s ground-truth mask (alpha > 0.5) whose colour is
    unambiguously the mode's: mean_c |rgb - gt_mode| < 1/2 min_{c != colour} mean_c |gt_c - gt_mode|,
    gt_c the mode's ground truth with the albedo of colour c (same shading). nan if the mask is empty.

    rgb: [B, H, W, 3] the prediction's evaluation views (white background)."""
    sums = eval_gt_sums(mode.shape, width, height)
    B = len(sums)
    palette = torch.stack([compose_gt(sums, torch.tensor([COLOURS[c]] * 3).expand(B, 3, 3).contiguous(),
                                      GT_SUPERSAMPLE).rgb
                           for c in COLOUR_NAMES])  # [8, B, H, W, 3]
    own = palette[mode.colour_id]  # [B, H, W, 3]
    sep = (palette - own).abs().mean(-1)  # [8, B, H, W]
    sep[mode.colour_id] = math.inf
    radius = 0.5 * sep.min(0).values  # [B, H, W]
    err = (rgb.float() - own).abs().mean(-1)  # [B, H, W]
    m = _mask(sums[..., 7:8] / GT_SUPERSAMPLE ** 2)  # [B, H, W] the ground-truth mask (alpha = hits / S^2)
    n = int(m.sum())
    return float(((err < radius) & m).sum()) / n if n else math.nan


@torch.no_grad()
def evaluate_set(gaussians: Gaussians, prompt: "str | OpenPrompt | ObjectPrompt", backend: str = "torch",
                 width: int = 64, height: int = 64, r_precision: bool = True, shape: bool = True,
                 per_mode: bool = False, classifier: Any = "shipped", voxel: Optional[float] = None) -> SetMetrics:
    """Score `gaussians` against every mode of an open prompt (an ObjectPrompt is a set of one):
    nearest-mode metrics, the chosen mode, the per-metric best and the mode purities (module
    docstring). `r_precision` runs the classifier (call purity, set R-precision, shape votes);
    `shape` adds the shape measures (the carving: a few seconds, once whatever the modes);
    `per_mode` lists every mode's numbers; `classifier` None skips it, "shipped" loads the shipped one;
    `voxel` is the carving grid's step (default shape_metrics.VOXEL)."""
    p = open_prompt(prompt)
    modes = prompt_modes(p)
    rigs = {"eval": object_eval_cameras(width, height), **(shape_metrics.shape_rigs() if shape else {})}
    rendered = shape_metrics.render_views(gaussians, rigs, backend)  # every rig in one batch of calls
    rgb, alpha, depth = rendered["eval"]  # [B, H, W, 3], [B, H, W, 1], [B, H, W, 1]
    views = _per_view_scores(rgb, alpha, depth, modes, width, height)
    texts = [m.text for m in modes]
    scores = {t: {"mask_iou": float(v["mask_iou"].mean()), "psnr": float(v["psnr"].mean()),
                  "colour_error": _nanmean(v["colour_error"]), "depth_error": _nanmean(v["depth_error"])}
              for t, v in views.items()}
    clf = None
    if r_precision:
        clf = shipped_classifier() if classifier == "shipped" else classifier
    sc = set_shape_scores(gaussians, p, backend, classifier=clf, voxel=voxel, views=rendered) if shape else None
    if sc is not None:
        for m in modes:
            scores[m.text].update(sc.per_shape[m.shape])
        pool = [m.text for m in modes if m.shape == sc.shape]
        chosen = min(pool, key=lambda t: _lower_first("colour_error", scores[t]["colour_error"]))
        rule = MODE_RULE_SHAPE
    else:
        chosen = min(texts, key=lambda t: (-scores[t]["mask_iou"], _lower_first("colour_error", scores[t]["colour_error"])))
        rule = MODE_RULE_IMAGE
    keys = IMAGE_KEYS + (SHAPE_KEYS if sc is not None else ())
    best = {k: best_of({t: scores[t][k] for t in texts}, k, prefer=chosen) for k in keys}
    # the ground truth as the judge of each view: the mode whose image is nearest (highest PSNR)
    psnr_bv = torch.stack([views[t]["psnr"] for t in texts], 1)  # [B, M]
    view_modes = [texts[i] for i in psnr_bv.argmax(1).tolist()]  # argmax: the first mode on ties
    _, view_pur = majority(view_modes)
    res = SetMetrics(
        **{k: scores[chosen][k] for k in IMAGE_KEYS},
        prompt=canonical_text(p), num_modes=len(modes), mode=chosen, mode_rule=rule, best=best,
        view_purity=view_pur, view_modes=view_modes,
        pixel_purity=pixel_purity(rgb, as_prompt(chosen), width, height),  # type: ignore[arg-type]
    )
    if sc is not None:
        res.top_iou, res.low_iou, res.iou_3d, res.chamfer_mm = (scores[chosen][k] for k in SHAPE_KEYS)
        res.shape_votes = sc.shape_votes or None
    if clf is not None:
        calls = [canonical_text(ObjectPrompt(c, s)) for c, s in clf.classify(rgb.clamp(0, 1)).names()]
        res.majority_call, res.call_purity = majority(calls)
        res.r_precision = sum(c in set(texts) for c in calls) / len(calls)
    ran = [v for v in (res.call_purity, res.view_purity, res.pixel_purity) if v is not None and not math.isnan(v)]
    res.purity = min(ran) if ran else None
    if per_mode:
        res.per_mode = [{"mode": t, **scores[t]} for t in texts]
    res.headline = headline(res, p)
    return res


# ---------------------------------------------------------------------------- diversity across seeds
@dataclass
class ModeDiversity:
    seeds: int  # results counted (impure and invalid ones left out, see below)
    distinct: int  # distinct modes they reached
    counts: dict  # {mode text: seeds that reached it}, most frequent first
    entropy_bits: float  # H = -sum_m f_m log2 f_m over the reached modes' frequencies (0 for one mode)
    evenness: float  # H / log2 min(seeds, num_modes) (1: as spread as N seeds can be; nan for N < 2 or M < 2)
    fraction: float  # distinct / min(seeds, num_modes): 1 when every seed that could reach a new mode did
    num_modes: Optional[int] = None  # M, the prompt's modes (None: prompt not given)
    coverage: Optional[float] = None  # distinct / M (None: prompt not given)
    invalid: int = 0  # results left out because their mode is not one of the prompt's
    impure: int = 0  # results left out for purity below `min_purity`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mode_and_purity(r: Any) -> tuple[str, Optional[float]]:
    """(mode text, purity or None) of one result: a mode (text or ObjectPrompt), a SetMetrics, or a dict
    (SetMetrics.to_dict(), a run.json record, or its "metrics")."""
    if isinstance(r, SetMetrics):
        return r.mode, r.purity
    if isinstance(r, ObjectPrompt):
        return r.text, None
    if isinstance(r, str):
        p = as_prompt(r)
        if not isinstance(p, ObjectPrompt):
            raise ValueError(f"a seed's mode is one object prompt such as 'a red cube', got {r!r}")
        return p.text, None
    if isinstance(r, dict):
        d = r.get("metrics", r) if "mode" not in r else r
        if not isinstance(d, dict) or not d.get("mode"):
            raise ValueError("a result dict needs a 'mode' (SetMetrics.to_dict() or a run.json of an open prompt); "
                             "an ordinary prompt's run.json has none: pass its prompt text instead")
        return _mode_and_purity(d["mode"])[0], d.get("purity")
    raise TypeError(f"a seed's result is a mode text, ObjectPrompt, SetMetrics or dict, got {type(r).__name__}")


def mode_diversity(results: Iterable[Any], prompt: "str | OpenPrompt | ObjectPrompt | None" = None,
                   min_purity: Optional[float] = None) -> ModeDiversity:
    """How many distinct modes N seeds reached (VSD's claim: mode-seeking with diversity).

    results: one per seed, its chosen mode (text, ObjectPrompt) or its SetMetrics / dict.
    prompt: the open prompt, for M (coverage); results outside its modes are left out (`invalid`).
    min_purity: leave out results whose purity is known and below this (a blend reaches no mode).
    """
    modes_allowed = [m.text for m in prompt_modes(open_prompt(prompt))] if prompt is not None else None
    reached: list[str] = []
    impure = invalid = 0
    for r in results:
        mode, pur = _mode_and_purity(r)
        if min_purity is not None and pur is not None and pur < min_purity:
            impure += 1
        elif modes_allowed is not None and mode not in modes_allowed:
            invalid += 1
        else:
            reached.append(mode)
    n = len(reached)
    counts = Counter(reached)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], reached.index(kv[0]))))
    h = -sum((c / n) * math.log2(c / n) for c in counts.values()) if n else 0.0
    h = abs(h)  # -0.0 -> 0.0
    M = len(modes_allowed) if modes_allowed is not None else None
    cap = min(n, M) if M is not None else n
    return ModeDiversity(
        seeds=n, distinct=len(counts), counts=ordered, entropy_bits=h,
        evenness=h / math.log2(cap) if cap >= 2 else math.nan,
        fraction=len(counts) / cap if cap else math.nan,
        num_modes=M, coverage=len(counts) / M if M else None,
        invalid=invalid, impure=impure,
    )


def scene_diversity(scenes: Iterable[Gaussians], prompt: "str | OpenPrompt", min_purity: Optional[float] = None,
                    **evaluate_kwargs) -> tuple[ModeDiversity, list[SetMetrics]]:
    """`mode_diversity` of scenes (one per seed), each scored by `evaluate_set` first."""
    results = [evaluate_set(g, prompt, **evaluate_kwargs) for g in scenes]
    return mode_diversity(results, prompt, min_purity), results
