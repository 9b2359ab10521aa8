"""Metrics for a set-valued truth (open prompts), on analytic scenes: shaded solids of Gaussians."""

import dataclasses
import json
import math

import pytest
import torch

from steinsplat.gaussians import Gaussians, rgb_to_sh0
from steinsplat.shapeworld.groundtruth import _scene, render_gt
from steinsplat.shapeworld.metrics import compare, eval_cameras, evaluate, shipped_classifier
from steinsplat.shapeworld.set_metrics import (
    ModeDiversity, SetMetrics, SetShapeScores, best_of, evaluate_set, gt_of, majority, mode_diversity, scene_diversity,
)
from steinsplat.shapeworld import shape_metrics
from steinsplat.shapeworld.metrics import shape_scores  # any prompt: an open one through set_metrics
from steinsplat.shapeworld.shape_metrics import gaussians_from_solid
from steinsplat.shapeworld.vocab import COLOUR_NAMES, COLOURS, ObjectPrompt, OpenPrompt, PromptError
from steinsplat.shapeworld.world import shade, world_mesh

SPACING = 0.02  # ~20k Gaussians for the cube: colour error ~0.015 against its own ground truth, < 1 s a call
VOXEL = 0.03  # a coarse carving grid where the shape measures run (same code, 8x fewer samples)


def _shaded(shape: str, spacing: float = SPACING) -> tuple[Gaussians, torch.Tensor]:
    """The reference cloud of `shape` and the shading factor [N, 1] of each Gaussian (the world's
    Lambertian light at the nearest surface point): colour = albedo * factor bakes the light in."""
    import open3d as o3d

    g = gaussians_from_solid(shape, spacing=spacing)
    pts = g.means.detach().float()
    near = _scene(shape).compute_closest_points(o3d.core.Tensor(pts.numpy()))
    normals = world_mesh(shape).normals_at(torch.from_numpy(near["points"].numpy()),
                                           torch.from_numpy(near["primitive_ids"].numpy().astype("int64")))
    return g, shade(torch.ones(3), normals.float())[:, :1]  # [N, 1]


def _paint(g: Gaussians, rgb: torch.Tensor) -> Gaussians:
    """`g` with colours rgb [N, 3] (in place)."""
    with torch.no_grad():
        g.splats["sh0"].copy_(rgb_to_sh0(rgb.clamp(0, 1))[:, None])
    return g


def _albedo(name: str) -> torch.Tensor:
    return torch.tensor(COLOURS[name])


@pytest.fixture(scope="module")
def cube() -> tuple[Gaussians, torch.Tensor]:
    return _shaded("cube")


def _solid(cube, colour: str) -> Gaussians:
    g, f = cube
    return _paint(Gaussians.from_state_tensors(g.state_tensors()), f * _albedo(colour))


def _cheap(g: Gaussians, prompt, **kw) -> SetMetrics:
    return evaluate_set(g, prompt, shape=False, **kw)


def test_a_mode_ground_truth_is_its_object_prompts_bit_for_bit():
    for mode in (ObjectPrompt("red", "cube"), ObjectPrompt("cyan", "torus")):
        gt, ref = gt_of(mode, 64, 64), render_gt(mode, eval_cameras(mode))
        for a, b in zip((gt.rgb, gt.alpha, gt.depth, gt.normal), (ref.rgb, ref.alpha, ref.depth, ref.normal)):
            assert torch.equal(a, b)


def test_a_red_cube_scores_for_a_cube_as_for_itself(cube):
    g = _solid(cube, "red")
    m = _cheap(g, "a cube")
    own = evaluate(g, "a red cube", shape=False)
    assert isinstance(m, SetMetrics) and m.prompt == "a cube" and m.num_modes == 8
    assert m.mode == "a red cube"
    for k in ("mask_iou", "psnr", "colour_error", "depth_error"):
        assert getattr(m, k) == getattr(own, k)  # the nearest mode's numbers are the object prompt's
        assert m.best[k]["mode"] == "a red cube"
    assert m.colour_error < 0.03 and m.mask_iou > 0.9
    assert m.view_purity == 1.0 and m.view_modes == ["a red cube"] * 8
    assert m.pixel_purity > 0.8
    assert m.purity == min(v for v in (m.call_purity, m.view_purity, m.pixel_purity) if v is not None) > 0.8
    if shipped_classifier() is not None:
        assert m.call_purity == 1.0 and m.majority_call == "a red cube"
        assert m.r_precision == own.r_precision == 1.0


def test_the_shape_measures_pick_the_nearest_shape_and_match_its_own_prompt(monkeypatch):
    g, f = _shaded("cube", spacing=0.03)  # coarser: 4.9k Gaussians, rendered from 9 more views
    _paint(g, f * _albedo("red"))
    calls = []

    def carve(gaussians, backend="torch", voxel=shape_metrics.VOXEL, chunk=8):
        """A perfect carving (the true cube), counted: the real one renders 38 views (seconds) and has
        its own tests; here the set logic is under test."""
        calls.append(voxel)
        return shape_metrics.true_occupancy("cube", voxel)

    monkeypatch.setattr(shape_metrics, "carved_occupancy", carve)
    own = shape_scores(g, "a red cube", classifier=None, voxel=VOXEL)
    s = shape_scores(g, "a red shape", classifier=None, voxel=VOXEL)  # the hook: every shape, one carving
    assert isinstance(s, SetShapeScores) and s.shape == "cube" and len(s.per_shape) == 7
    for k in ("top_iou", "low_iou", "iou_3d", "chamfer_mm"):
        assert getattr(s, k) == getattr(own, k) == s.per_shape["cube"][k]
        assert s.best[k]["shape"] == "cube"
    assert own.iou_3d == 1.0 and max(v["iou_3d"] for k, v in s.per_shape.items() if k != "cube") < own.iou_3d - 0.1
    m = evaluate_set(g, "an object", classifier=None, voxel=VOXEL, per_mode=True)
    assert m.mode == "a red cube" and m.mode_rule.startswith("argmax iou_3d")
    assert (m.top_iou, m.low_iou, m.iou_3d, m.chamfer_mm) == (own.top_iou, own.low_iou, own.iou_3d, own.chamfer_mm)
    assert {r["mode"]: r["iou_3d"] for r in m.per_mode}["a blue sphere"] == s.per_shape["sphere"]["iou_3d"]
    assert len(calls) == 3  # once per call, whatever the number of shapes


def test_a_blend_of_red_and_blue_scores_worse_than_either_pure_cube(cube):
    g0, f = cube
    red, blue = f * _albedo("red"), f * _albedo("blue")  # [N, 3]
    pure = [_cheap(_solid(cube, c), "a cube") for c in ("red", "blue")]
    assert [p.mode for p in pure] == ["a red cube", "a blue cube"]
    # each Gaussian half red, half blue: purple-ish everywhere, no single colour explains it
    mixed = _cheap(_paint(Gaussians.from_state_tensors(g0.state_tensors()), 0.5 * (red + blue)), "a cube")
    # half the Gaussians red (x < 0), half blue: the views disagree
    left = (g0.means[:, 0] < 0)[:, None]
    halves = _cheap(_paint(Gaussians.from_state_tensors(g0.state_tensors()), torch.where(left, red, blue)), "a cube")
    for blend in (mixed, halves):
        assert blend.colour_error > max(p.colour_error for p in pure) + 0.03
        assert blend.pixel_purity < min(p.pixel_purity for p in pure) - 0.3
        assert blend.purity < min(p.purity for p in pure) - 0.3
    assert mixed.pixel_purity < 0.2  # no pixel is plainly one colour
    assert halves.view_purity <= 0.75 < min(p.view_purity for p in pure)  # the views disagree
    if shipped_classifier() is not None:
        assert halves.call_purity < min(p.call_purity for p in pure)


def test_half_a_cube_half_a_sphere_scores_worse_on_purity(cube):
    g0, f0 = cube
    g1, f1 = _shaded("sphere")
    keep0, keep1 = g0.means[:, 0] < 0, g1.means[:, 0] >= 0
    state = {k: torch.cat([v[keep0], g1.state_tensors()[k][keep1]]) for k, v in g0.state_tensors().items()}
    half = _paint(Gaussians.from_state_tensors(state), torch.cat([f0[keep0], f1[keep1]]) * _albedo("red"))
    pure = [_cheap(_paint(g, f * _albedo("red")), "a red shape") for g, f in ((g0, f0), (g1, f1))]
    assert [p.mode for p in pure] == ["a red cube", "a red sphere"]
    m = _cheap(half, "a red shape")
    assert m.view_purity < min(p.view_purity for p in pure)
    assert m.purity < min(p.purity for p in pure)
    if shipped_classifier() is not None:
        assert m.call_purity < min(p.call_purity for p in pure)


def test_diversity_across_seeds():
    same = mode_diversity(["a red cube"] * 8, "a cube")
    assert isinstance(same, ModeDiversity)
    assert (same.seeds, same.distinct, same.entropy_bits, same.evenness, same.fraction) == (8, 1, 0.0, 0.0, 1 / 8)
    assert same.coverage == 1 / 8 and same.counts == {"a red cube": 8}
    every = mode_diversity([ObjectPrompt(c, "cube") for c in COLOUR_NAMES], "a cube")
    assert (every.distinct, every.entropy_bits, every.evenness, every.fraction, every.coverage) == (8, 3.0, 1.0, 1.0, 1.0)
    # 4 seeds on one mode, 4 on another: one bit
    two = mode_diversity(["a red cube"] * 4 + ["a blue cube"] * 4)
    assert two.distinct == 2 and two.entropy_bits == pytest.approx(1.0) and two.coverage is None
    # results as records: impure ones left out when asked, and modes outside the prompt's set
    recs = [{"mode": "a red cube", "purity": 1.0}, {"metrics": {"mode": "a blue cube", "purity": 0.4}}, "a red sphere"]
    d = mode_diversity(recs, "a cube", min_purity=0.75)
    assert (d.seeds, d.distinct, d.impure, d.invalid) == (1, 1, 1, 1)
    assert math.isnan(mode_diversity(["a red cube"]).evenness)
    with pytest.raises(ValueError, match="mode"):
        mode_diversity([{"mask_iou": 0.9}])
    with pytest.raises(ValueError, match="one object prompt"):
        mode_diversity(["a cube"])


def test_diversity_of_scenes_counts_the_modes_they_reach():
    g, f = _shaded("cube", spacing=0.03)  # 8 cheap scenes
    paint = lambda c: _paint(Gaussians.from_state_tensors(g.state_tensors()), f * _albedo(c))  # noqa: E731
    same, results = scene_diversity([paint("red") for _ in range(8)], "a cube", shape=False, classifier=None)
    assert same.distinct == 1 and [r.mode for r in results] == ["a red cube"] * 8
    every, _ = scene_diversity([paint(c) for c in COLOUR_NAMES], "a cube", shape=False, classifier=None)
    assert every.distinct == 8 and every.entropy_bits == pytest.approx(3.0)


def test_majority_ties_go_to_the_first_seen():
    assert majority(["b", "a", "a", "b", "c"]) == ("b", 0.4)


def test_the_best_of_tied_values_is_the_preferred_name_when_it_is_among_them():
    v = {"a red cube": 0.9, "a blue cube": 0.9, "a red sphere": 0.5}
    assert best_of(v, "iou_3d") == {"value": 0.9, "mode": "a red cube"}
    assert best_of(v, "iou_3d", prefer="a blue cube") == {"value": 0.9, "mode": "a blue cube"}
    assert best_of(v, "iou_3d", prefer="a red sphere")["mode"] == "a red cube"
    assert best_of({"x": math.nan, "y": 3.0}, "chamfer_mm", "shape") == {"value": 3.0, "shape": "y"}


def test_object_prompts_keep_their_numbers_and_rooms_are_refused(cube):
    g = _solid(cube, "red")
    p = ObjectPrompt("red", "cube")
    m = evaluate(g, p, shape=False)
    from steinsplat.render import render

    cams = eval_cameras(p)
    out = render(g, cams, background=(1.0, 1.0, 1.0))
    ref = compare(out.rgb.float(), out.alpha.float(), out.depth.float(), render_gt(p, cams))  # the code before the hooks
    clf = shipped_classifier()
    ref.r_precision = clf.r_precision(out.rgb.float().clamp(0, 1), p) if clf is not None else None
    ref.headline = {"name": "mask_iou", "value": ref.mask_iou}  # an object's headline (metrics.headline)
    # the same numbers to float rounding (evaluate renders its views in calls of 4, the reference in one)
    got, want = dataclasses.asdict(m), dataclasses.asdict(ref)
    assert got.keys() == want.keys()
    for k in want:
        if isinstance(want[k], float):
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-5), k
        elif isinstance(want[k], dict):
            assert got[k]["name"] == want[k]["name"] and got[k]["value"] == pytest.approx(want[k]["value"], rel=1e-4)
        else:
            assert got[k] == want[k], k
    assert type(m).__name__ == "ShapeWorldMetrics"
    with pytest.raises(PromptError, match="room"):
        evaluate_set(g, "a room with blue walls and a gray floor", shape=False)


def test_an_open_prompts_record_fits_run_json(cube):
    g = _solid(cube, "green")
    m = evaluate(g, OpenPrompt(shape="cube"), shape=False)  # the hook, as pipeline.py calls it
    d = json.loads(json.dumps(dataclasses.asdict(m)))
    assert d["mode"] == "a green cube" and d["prompt"] == "a cube" and d["per_mode"] is None
    assert set(d["best"]) == {"mask_iou", "psnr", "colour_error", "depth_error"}
    full = _cheap(g, "a cube", per_mode=True)
    assert [r["mode"] for r in full.per_mode] == [ObjectPrompt(c, "cube").text for c in COLOUR_NAMES]
    assert min(r["colour_error"] for r in full.per_mode) == full.colour_error
