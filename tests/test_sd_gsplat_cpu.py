"""The GPU owner's command, `steinsplat PROMPT --prior sd --model ... --steps 5`, on the CPU: tiny
random Stable Diffusion and DPT models saved locally, every render through gsplat's own
rasterization() (the `gsplat_cpu` fixture), the prior in bfloat16 / float16 and the Gaussians in
float32 as on a GPU, for SDS, VSD and SSD (with the transformers depth estimator) in object and
scene mode; then the outputs read back, and a resumed run that ends on the same bytes."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from steinsplat.cli import main
from steinsplat.export import read_ply, read_splat
from test_priors import _save_tiny_dpt, _save_tiny_sd

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return _save_tiny_sd(root / "sd"), _save_tiny_dpt(root / "dpt")


@pytest.fixture
def spy(gsplat_cpu, monkeypatch):
    """Record what reaches gsplat.rasterization (dtypes) and the prior the run builds; make the mesh
    and turntable small (their renders go through gsplat's reference too)."""
    import gsplat

    import steinsplat.export.mesh as mesh
    import steinsplat.export.video as video
    import steinsplat.pipeline as pipeline

    seen = {"calls": 0, "dtypes": set(), "priors": []}
    real = gsplat.rasterization

    def rasterization(**kw):
        seen["calls"] += 1
        seen["dtypes"] |= {str(kw[k].dtype) for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")}
        return real(**kw)

    real_build = pipeline.build_prior

    def build_prior(*a, **k):
        p = real_build(*a, **k)
        seen["priors"].append(p)
        return p

    monkeypatch.setattr(gsplat, "rasterization", rasterization)
    monkeypatch.setattr(pipeline, "build_prior", build_prior)
    monkeypatch.setattr(mesh, "MeshConfig", functools.partial(mesh.MeshConfig, views=6, resolution=48, voxel=0.05))
    monkeypatch.setattr(video, "VideoConfig", functools.partial(video.VideoConfig, frames=4, resolution=32))
    return seen


def argv_for(sd, dpt, guidance: str, mode: str, dtype: str, out, *extra: str) -> list[str]:
    ssd = ["--estimator", "transformers", "--estimator-model", str(dpt), "--baseline", "depth"] if guidance == "ssd" else []
    return ["a corgi in a spacesuit", "--prior", "sd", "--model", str(sd), "--steps", "5", "--guidance", guidance,
            "--mode", mode, *ssd,  # SSD's options only with SSD (with another --guidance they are refused)
            "--dtype", dtype, "--resolution", "16", "--views", "2", "--init-gaussians", "64", "--quiet",
            "--checkpoint-every", "2", "--preview-every", "0", "--out", str(out), *extra]


CASES = [  # (guidance, mode, prior dtype); float16 once: CPU kernels allow it, slowly
    ("sds", "object", "bfloat16"), ("vsd", "object", "bfloat16"), ("ssd", "object", "float16"),
    ("sds", "scene", "bfloat16"), ("vsd", "scene", "bfloat16"), ("ssd", "scene", "bfloat16"),
]


@pytest.mark.parametrize("guidance,mode,dtype", CASES)
def test_sd_command_through_gsplat(tmp_path, tiny_models, spy, guidance, mode, dtype):
    import imageio.v3 as iio

    sd, dpt = tiny_models
    out = tmp_path / "run" / ("x.ply" if mode == "object" else "x.splat")
    extra = ["--video", str(tmp_path / "run" / "turn.gif")] if mode == "object" else ["--mesh", str(tmp_path / "run" / "m.ply")]
    assert main(argv_for(sd, dpt, guidance, mode, dtype, out, *extra)) == 0
    # every render went through gsplat, with float32 Gaussians and cameras; the prior ran in dtype
    assert spy["calls"] >= 5 and spy["dtypes"] == {"torch.float32"}
    prior = spy["priors"][0]
    assert prior.unet.dtype == getattr(torch, dtype) and prior.text_encoder.dtype == getattr(torch, dtype)
    assert prior.vae.dtype == torch.float32
    rec = json.loads((out.parent / "run.json").read_text())
    assert rec["status"] == "ok" and rec["prior"] == "sd" and rec["steps"] == 5 and rec["skipped_steps"] == 0
    assert rec["config"]["guidance"]["name"] == guidance and rec["config"]["dtype"] == dtype
    g = (read_ply if out.suffix == ".ply" else read_splat)(out)
    # densification runs at fractions of the budget, so even 5 steps refine the 64 initial Gaussians
    assert len(g) == rec["gaussians"] >= 64 and torch.isfinite(g.means).all() and g.means.dtype == torch.float32
    ckpts = sorted(p.name for p in (out.parent / "checkpoints").glob("step_*.safetensors"))
    assert ckpts == ["step_000004.safetensors", "step_000005.safetensors"]  # the newest periodic one + the final one
    if mode == "object":
        frames = iio.imread(tmp_path / "run" / "turn.gif", index=None)
        assert frames.shape[:3] == (4, 32, 32)
    else:
        import open3d as o3d

        m = o3d.io.read_triangle_mesh(str(tmp_path / "run" / "m.ply"))
        assert len(m.triangles) > 0 and rec["outputs"]["mesh"].endswith("m.ply")


def test_sd_resume_through_gsplat_ends_on_the_same_bytes(tmp_path, tiny_models, spy):
    """5 steps in one go vs 4 steps + --resume from the step-4 checkpoint: the same PLY bytes."""
    sd, dpt = tiny_models
    full, part = tmp_path / "full" / "x.ply", tmp_path / "part" / "x.ply"
    assert main(argv_for(sd, dpt, "ssd", "object", "bfloat16", full)) == 0
    ckpt = full.parent / "checkpoints" / "step_000004.safetensors"
    assert main(argv_for(sd, dpt, "ssd", "object", "bfloat16", part, "--resume", str(ckpt))) == 0
    assert json.loads((part.parent / "run.json").read_text())["steps"] == 5
    assert part.read_bytes() == full.read_bytes()
    assert len(read_ply(part)) == json.loads((full.parent / "run.json").read_text())["gaussians"]
