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
from steinsplat.shapeworld.metrics import evaluate
from steinsplat.shapeworld.shape_metrics import carved_occupancy, gaussians_from_solid


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
