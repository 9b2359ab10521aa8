"""The shape-aware ShapeWorld metrics and the prior's view test, on analytic and ground-truth cases."""

import numpy as np
import pytest
import torch

from steinsplat.shapeworld.evaluate import VIEW_AZIMUTHS, assign_views, sample_mask, view_cameras
from steinsplat.shapeworld.groundtruth import render_gt
from steinsplat.shapeworld.shape_metrics import (
    chamfer_mm, gaussians_from_solid, iou_3d, shape_scores, true_mesh, true_occupancy,
)


def _cube_mesh(half: float) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned cube of half-side `half` as 12 triangles."""
    v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    t = np.array([tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))], np.int64)
    return v, t


def test_iou_3d_of_boxes():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[0:6] = True
    b[3:9] = True  # overlap 3 slabs of 6 each: 3 / 9
    assert iou_3d(a, b) == pytest.approx(3 / 9)
    assert iou_3d(a, a) == 1.0
    assert iou_3d(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="grids differ"):
        iou_3d(a, np.zeros((5, 5, 5), bool))


def test_chamfer_of_nested_cubes_matches_a_numerical_integral():
    inner, outer = 0.275, 0.33
    assert chamfer_mm(_cube_mesh(inner), _cube_mesh(inner)) == pytest.approx(0.0, abs=1e-3)
    # inner -> outer: every point of the inner surface is exactly outer - inner from the outer surface.
    # outer -> inner: a point (outer, y, z) of an outer face is sqrt(d^2 + relu(|y| - inner)^2 + relu(|z| - inner)^2) away.
    u = np.linspace(-outer, outer, 801)
    Y, Z = np.meshgrid(u, u)
    d = np.sqrt((outer - inner) ** 2 + np.maximum(np.abs(Y) - inner, 0) ** 2 + np.maximum(np.abs(Z) - inner, 0) ** 2)
    expected = 500.0 * ((outer - inner) + d.mean())
    assert chamfer_mm(_cube_mesh(inner), _cube_mesh(outer)) == pytest.approx(expected, rel=0.02)
    assert chamfer_mm(_cube_mesh(inner), (np.zeros((0, 3)), np.zeros((0, 3), np.int64))) == float("inf")


def test_true_occupancy_volume():
    occ = true_occupancy("cube")  # side 0.55 at 15 mm spacing: (0.55 / 0.015)^3 samples, +- one layer
    n_side = 0.55 / 0.015
    assert (n_side - 1) ** 3 <= occ.sum() <= (n_side + 1) ** 3
    v, t = true_mesh("cube")
    assert v.min() == pytest.approx(-0.275) and v.max() == pytest.approx(0.275) and len(t) >= 12


def test_a_cloud_of_the_true_cube_scores_well_and_the_cylinder_does_not():
    cube = shape_scores(gaussians_from_solid("cube", spacing=0.02), "a red cube")
    assert cube.top_iou > 0.88 and cube.low_iou > 0.88
    assert cube.iou_3d > 0.85 and cube.chamfer_mm < 20.0  # the cloud renders about a pixel fat
    drum = shape_scores(gaussians_from_solid("cylinder", spacing=0.02), "a red cube")  # a cube's solid of revolution
    assert drum.top_iou < cube.top_iou - 0.15
    assert drum.iou_3d < 0.7 and drum.chamfer_mm > 30.0


def test_carving_the_ground_truth_recovers_the_solid(monkeypatch):
    """The visual hull of the ground truth's own masks is the true solid (the cube exactly, on the
    grid); perspective views would have left its faces bulging."""
    import steinsplat.render as render_module
    from steinsplat.shapeworld.shape_metrics import carved_occupancy, surface_of

    for shape, min_iou in (("cube", 0.99), ("torus", 0.97)):
        def fake_render(g, cams, background=None, backend=None, shape=shape):
            return render_gt(f"a red {shape}", cams)  # has .alpha [B, H, W, 1]

        monkeypatch.setattr(render_module, "render", fake_render)
        occ = carved_occupancy(gaussians_from_solid("cube", spacing=0.2))  # the Gaussians are not looked at
        assert iou_3d(occ, true_occupancy(shape)) > min_iou
        assert chamfer_mm(surface_of(occ), true_mesh(shape)) < 5.0


def test_shape_scores_refuse_rooms():
    with pytest.raises(ValueError, match="objects"):
        shape_scores(gaussians_from_solid("cube", spacing=0.1), "a room with blue walls and a gray floor")


def test_view_assignment_of_ground_truth_is_perfect():
    """Ground-truth images at az 0 and 45 (at the prior's 32x32, through the sample-mask rule) are
    assigned to the view they were rendered from, for every shape the view test uses."""
    for shape in ("cube", "pyramid"):
        gt64 = render_gt(f"a gray {shape}", view_cameras(VIEW_AZIMUTHS)).alpha > 0.5  # [2, 64, 64, 1]
        imgs = render_gt(f"a red {shape}", view_cameras(VIEW_AZIMUTHS, 32)).rgb  # [2, 32, 32, 3]
        got = assign_views(sample_mask(imgs), gt64[None].expand(2, *gt64.shape))
        assert got.tolist() == [0, 1]
        # and a view-blind "prior" (the az 0 image twice) gets one of the two wrong
        blind = assign_views(sample_mask(imgs[[0, 0]]), gt64[None].expand(2, *gt64.shape))
        assert blind.tolist() == [0, 0]


def test_evaluate_reports_shape_measures_for_objects_only():
    from steinsplat.gaussians import Gaussians
    from steinsplat.shapeworld.metrics import evaluate

    g = gaussians_from_solid("pyramid", spacing=0.04)
    m = evaluate(g, "a green pyramid", r_precision=False)
    assert 0.0 <= m.top_iou <= 1.0 and 0.0 <= m.iou_3d <= 1.0 and m.chamfer_mm > 0
    room = Gaussians.random_box_shell(200, (-2.0, -2.0, 0.0), (2.0, 2.0, 2.5), generator=torch.Generator().manual_seed(0))
    r = evaluate(room, "a room with blue walls and a gray floor", r_precision=False)
    assert r.top_iou is None and r.iou_3d is None and r.chamfer_mm is None


def test_shipped_classifier_tells_look_alikes_apart_on_the_confusion_views():
    """Ground truth of the look-alike pairs, seen from the confusion views, is classified right:
    the votes measure the generated object, not the classifier."""
    from steinsplat.shapeworld.metrics import shipped_classifier
    from steinsplat.shapeworld.shape_metrics import confusion_cameras
    from steinsplat.shapeworld.vocab import SHAPE_NAMES

    clf = shipped_classifier()
    if clf is None:
        pytest.skip("no shipped classifier in steinsplat/assets/shapeworld")
    cams = confusion_cameras()
    for shape in ("cube", "cylinder", "pyramid", "cone"):
        ids = clf.classify(render_gt(f"a blue {shape}", cams).rgb).shape_ids
        assert (ids == SHAPE_NAMES.index(shape)).all(), shape
