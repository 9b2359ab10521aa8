"""The training low-pass baked into exported splats (export/display_filter.py): a splat seen at display size
after the bake covers what it covered in the 64 px training renders before it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from steinsplat.cameras import orbit_cameras
from steinsplat.export.display_filter import DisplayFilterConfig, bake_display_filter, filter_variance
from steinsplat.gaussians import Gaussians, quat_to_rotmat

CFG = DisplayFilterConfig(resolution=64, fovy=40.0)  # steinsplat's object runs: 64 px, fovy 40, orbit >= 1.6 m


def one(scales, quat=(1.0, 0.0, 0.0, 0.0), opacity: float = 0.6, at=(0.0, 0.0, 0.0)) -> Gaussians:
    o = torch.tensor([opacity])
    return Gaussians(torch.tensor([at]), torch.tensor([scales]).log(), torch.tensor([quat]), torch.log(o / (1 - o)),
                     torch.zeros(1, 1, 3))


def covariance(g: Gaussians) -> np.ndarray:
    R = quat_to_rotmat(g.quats.detach().double())
    return ((R * g.scales.detach().double()[:, None, :] ** 2) @ R.transpose(1, 2)).numpy()


def test_bake_adds_the_training_low_pass_to_the_covariance() -> None:
    """Sigma' = Sigma + 0.3 (d / f)^2 I with d the nearest camera distance (1.6 m - |mu|) and f the 64 px focal
    length; means, opacity and colour unchanged; the rotation of an anisotropic splat kept."""
    q = torch.nn.functional.normalize(torch.tensor([0.9, 0.3, -0.2, 0.25]), dim=0)
    g = one([0.02, 0.005, 0.001], q.tolist(), at=(0.3, 0.0, 0.0))
    h = bake_display_filter(g, CFG)
    f = 0.5 * 64 / math.tan(math.radians(20))
    var = 0.3 * ((1.6 - 0.3) / f) ** 2
    assert np.isclose(float(filter_variance(g.means.detach(), CFG)[0]), var)
    assert np.allclose(covariance(h), covariance(g) + var * np.eye(3), rtol=1e-5, atol=1e-12)
    assert torch.equal(h.means, g.means.detach()) and torch.allclose(h.opacities, g.opacities)
    assert torch.equal(h.splats["sh0"], g.splats["sh0"].detach())


def test_a_baked_splat_at_display_size_covers_what_it_covered_in_training() -> None:
    """One small faint splat (2 mm, seen from the nearest orbit distance): its summed alpha (its footprint, in
    the world's units) at 512 px after the bake is that at 64 px before it, to 3 %; unbaked at 512 px it is far
    smaller (what made the demo cube thin out at display size)."""
    from steinsplat.render import render

    g = one([0.002, 0.002, 0.002], opacity=0.3)
    h = bake_display_filter(g, CFG)

    def footprint(x: Gaussians, res: int) -> float:
        cam = orbit_cameras([20.0], [30.0], [1.6], fovy=40.0, width=res, height=res)
        with torch.no_grad():
            a = render(x, cam).alpha[0, ..., 0]
        return float(a.sum()) / res**2  # alpha summed over the image, per image area

    trained, baked, unbaked = footprint(g, 64), footprint(h, 512), footprint(g, 512)
    print(f"footprint: training 64 px {trained:.3e}, baked 512 px {baked:.3e}, unbaked 512 px {unbaked:.3e}")
    assert abs(baked / trained - 1) < 0.03
    assert unbaked < 0.2 * trained


def test_export_display_filter_cli(tmp_path: Path, capsys) -> None:
    from steinsplat.cli import main
    from steinsplat.export import read_ply, write_ply

    g = one([0.01, 0.01, 0.01])
    write_ply(tmp_path / "g.ply", g)
    assert main(["export", str(tmp_path / "g.ply"), "--to", str(tmp_path / "b.ply"), "--display-filter", "64"]) == 0
    assert np.allclose(covariance(read_ply(tmp_path / "b.ply")), covariance(bake_display_filter(g, CFG)), rtol=1e-5)
    assert main(["export", str(tmp_path / "g.ply"), "--html", str(tmp_path / "h"), "--display-filter", "64"]) == 2
    assert "--display-filter RES" in capsys.readouterr().err


def test_generate_display_filter_bakes_the_trained_splats(tmp_path: Path) -> None:
    """`steinsplat PROMPT --display-filter` writes the same run's splats with the filter of its own training
    cameras baked in (same seed: the same trained splats)."""
    from steinsplat.cli import main
    from steinsplat.export import read_ply

    common = ["--steps", "3", "--resolution", "16", "--views", "1", "--preview-every", "0", "--checkpoint-every", "0",
              "--quiet"]
    assert main(["a red cube", "--out", str(tmp_path / "a" / "plain.ply"), *common]) == 0
    assert main(["a red cube", "--out", str(tmp_path / "b" / "baked.ply"), "--display-filter", *common]) == 0
    expected = bake_display_filter(read_ply(tmp_path / "a" / "plain.ply"), DisplayFilterConfig(resolution=16, fovy=40.0))
    got = read_ply(tmp_path / "b" / "baked.ply")
    # the same to float32 round-off (two trainings in one process agree to ~1e-7, not always bit for bit)
    c_got, c_exp = covariance(got), covariance(expected)
    assert np.abs(c_got - c_exp).max() <= 1e-4 * np.abs(c_exp).max()
    assert torch.allclose(got.means, expected.means, atol=1e-5)
    assert not np.allclose(c_exp, covariance(read_ply(tmp_path / "a" / "plain.ply")), rtol=0.05)  # it did bake
