"""The batched, vectorised evaluation (metrics.evaluate, shape_metrics, set_metrics) gives the numbers
the one-call-per-rig code gave: fixed splat sets scored against values recorded from that code
(commit ee846df, before the evaluation views were batched)."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from steinsplat.gaussians import Gaussians, rgb_to_sh0
from steinsplat.shapeworld.metrics import eval_cameras, evaluate
from steinsplat.shapeworld.shape_metrics import carved_occupancy, gaussians_from_solid
from steinsplat.shapeworld.vocab import as_prompt


def blob(n: int = 3000, seed: int = 0, half: float = 0.27, rgb=(0.8, 0.15, 0.1)) -> Gaussians:
    """n anisotropic Gaussians of random size, orientation and opacity filling a box of half-side `half`
    (a fixed generator: the same splats on every machine), coloured `rgb` with noise."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * half  # [n, 3]
    scales = math.log(0.025) + 0.4 * torch.randn(n, 3, generator=gen)  # [n, 3] log std
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)  # [n, 4]
    opac = torch.randn(n, generator=gen) - 1.0  # [n] logits
    rgb_t = (torch.tensor(rgb) + 0.1 * torch.randn(n, 3, generator=gen)).clamp(0.02, 0.98)  # [n, 3]
    return Gaussians(means, scales, quats, opac, rgb_to_sh0(rgb_t)[:, None, :])


def room_blob(n: int = 6000, seed: int = 1, noise: float = 0.1) -> Gaussians:
    """Gaussians on the walls, floor and ceiling of a 4 x 4 x 2.5 m room: blue walls, gray floor, plus
    `noise` std of colour noise."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=gen) * 2 - 1  # [n, 3]
    face = torch.randint(0, 6, (n,), generator=gen)
    pts = torch.stack([u[:, 0] * 2.0, u[:, 1] * 2.0, 1.25 + u[:, 2] * 1.25], -1)  # [n, 3]
    pts[face == 0, 0], pts[face == 1, 0], pts[face == 2, 1], pts[face == 3, 1] = 2.0, -2.0, 2.0, -2.0
    pts[face == 4, 2], pts[face == 5, 2] = 0.0, 2.5
    rgb = torch.where((face < 4)[:, None], torch.tensor([0.15, 0.3, 0.85]), torch.tensor([0.5, 0.5, 0.5]))
    rgb = (rgb + noise * torch.randn(n, 3, generator=gen)).clamp(0.0, 1.0)
    scales = torch.full((n, 3), math.log(0.08))
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return Gaussians(pts, scales, quats, torch.full((n,), 2.0), rgb_to_sh0(rgb)[:, None, :])


REFERENCE = Path(__file__).parent / "metrics_ee846df.json"
CASES = {  # name -> (splats, prompt); the names key the recorded numbers
    "blob/a red cube": (lambda: blob(), "a red cube"),
    "cylinder/a blue cube": (lambda: gaussians_from_solid("cylinder", spacing=0.03, colour=(0.1, 0.2, 0.9)), "a blue cube"),
    "blob/a red shape": (lambda: blob(seed=2), "a red shape"),
    "room": (lambda: room_blob(), "a room with blue walls and a gray floor"),
}


def assert_same(got, want, where: str = "") -> None:
    """Recorded JSON `want` against today's `got`: floats within 1e-5 (nan matches nan), the rest equal;
    keys added since the recording (e.g. `headline`) are not compared."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        for k, v in want.items():
            assert k in got, f"{where}.{k} missing"
            assert_same(got[k], v, f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        if math.isnan(want):
            assert got is not None and math.isnan(got), where
        else:
            assert got == pytest.approx(want, abs=1e-5, rel=0), where
    else:
        assert got == want, where


@pytest.mark.parametrize("name", list(CASES))
def test_evaluate_gives_the_recorded_numbers(name):
    make, prompt = CASES[name]
    want = json.loads(REFERENCE.read_text())[name]
    with torch.no_grad():
        got = json.loads(json.dumps(evaluate(make(), prompt).to_dict(), default=str))
    assert_same(got, want, name)


def test_carving_gives_the_recorded_grid():
    ref = json.loads(REFERENCE.read_text())
    occ = carved_occupancy(blob())
    assert int(occ.sum()) == ref["carved_blob_sum"]
    assert hashlib.sha256(occ.tobytes()).hexdigest() == ref["carved_blob_sha"]


# ---------------------------------------------------------------------------- rooms: the headline is the colour
def _room_from_gt(noise: bool, seed: int = 0, size: int = 48) -> Gaussians:
    """Gaussians on the ground-truth room's surface: one per pixel of the scene evaluation views at
    `size`^2, at its depth, a pixel's footprint wide, with the pixel's colour, or (noise) a random one."""
    from steinsplat.shapeworld.groundtruth import pixel_centre_dirs, render_gt

    cams = eval_cameras(as_prompt(ROOM), size, size)
    gt = render_gt(ROOM, cams, supersample=1)
    pts = cams.centers[:, None, None, :] + pixel_centre_dirs(cams) * gt.depth  # [B, H, W, 3]
    keep = gt.alpha[..., 0] > 0.5  # [B, H, W]
    footprint = (gt.depth[..., 0] / cams.Ks[:, 0, 0][:, None, None])[keep]  # [N] metres per pixel
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.rand(int(keep.sum()), 3, generator=gen) if noise else gt.rgb[keep]  # [N, 3]
    n = len(rgb)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return Gaussians(pts[keep], torch.log(0.8 * footprint)[:, None].repeat(1, 3), quats, torch.full((n,), 3.0),
                     rgb_to_sh0(rgb)[:, None, :])


ROOM = "a room with blue walls and a gray floor"


def test_a_room_of_coloured_noise_has_a_clearly_worse_headline_than_a_fitted_room():
    with torch.no_grad():
        good = evaluate(_room_from_gt(noise=False), ROOM)
        noisy = evaluate(_room_from_gt(noise=True), ROOM)
    # what misled: both cover the views and sit on the walls
    assert good.mask_iou > 0.95 and noisy.mask_iou > 0.95
    assert abs(good.depth_error - noisy.depth_error) < 0.02
    print(f"fitted room: PSNR {good.psnr:.2f} colour error {good.colour_error:.3f}; noise: PSNR {noisy.psnr:.2f} "
          f"colour error {noisy.colour_error:.3f}")
    assert good.headline["name"] == noisy.headline["name"] == "psnr"
    assert noisy.headline["value"] == noisy.psnr < 16.0
    assert good.headline["value"] > 22.0 and good.headline["value"] > noisy.headline["value"] + 6.0
    assert noisy.colour_error > 2 * good.colour_error


def test_an_objects_headline_is_its_mask_iou_and_the_result_line_says_so():
    from steinsplat.cli import result_summary

    with torch.no_grad():
        m = evaluate(blob(n=800), "a red cube", shape=False, r_precision=False)
    assert m.headline == {"name": "mask_iou", "value": m.mask_iou}
    assert result_summary(m.to_dict()) == f", mask IoU {m.mask_iou:.3f}"
    room = {"mask_iou": 0.99, "psnr": 12.34, "colour_error": 0.21, "headline": {"name": "psnr", "value": 12.34}}
    assert result_summary(room) == ", PSNR 12.3 dB, colour error 0.210"
    assert result_summary({}) == ""


def test_turntable_frames_are_the_same_one_or_four_a_call():
    import numpy as np

    from steinsplat.export.video import VideoConfig, turntable_frames

    g, cfg = blob(n=600), VideoConfig(frames=8, resolution=64)
    one, four = turntable_frames(g, cfg), turntable_frames(g, cfg, batch=4)
    assert one.shape == (8, 64, 64, 3) and (one < 250).any()  # something drawn on the white
    # the same frames: on some CPUs a batched call rounds a few pixels the other way (at most 1/255)
    diff = np.abs(one.astype(int) - four.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
