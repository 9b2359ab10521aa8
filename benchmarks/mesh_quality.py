"""Mesh export quality on ShapeWorld: TSDF fusion vs density-grid marching cubes, side by side.

    OMP_NUM_THREADS=1 python benchmarks/mesh_quality.py /work/scratch/quality_quick/a-*/splats.ply \\
        [--methods tsdf density density@0.3] [--points 50000] [--json out.json]

Each splat file's prompt comes from the run.json beside it (or --prompt, once per file, in order);
its ground truth is the ShapeWorld mesh of the prompt's shape (`shapeworld.world.shape_mesh`, the
frame the prior was trained in). A method is `tsdf`, `density` (MeshConfig defaults) or
`density@LEVEL`. Per file and method, with the default MeshConfig otherwise (object mode,
cleanup and decimation to 50k triangles included in the time):
- chamfer: symmetric mean distance (mm) = (mean_pred d(p, GT) + mean_GT d(q, pred)) / 2, from
  `--points` points sampled uniformly on each surface;
- normal consistency: mean |n_p . n_nearest| over both directions (1 = perfect, orientation-free);
- F-score at 1 cm and 2 cm: harmonic mean of precision (pred points within tau of GT) and recall;
- triangles, watertight (every edge shared by exactly two triangles, every vertex manifold), seconds.
Rooms are skipped (this compares object meshes).

The generated splats carry the generation's own shape error (a sphere a little too big, ...), the
same for both methods. `--oracle` adds a row per prompt that isolates the extraction: 8000
isotropic Gaussians (sigma 1.2 cm, opacity 0.9, the prompt's colour) at random points of the GT
surface, i.e. a perfect but hollow splat shell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def sample(mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [n, 3] and unit triangle normals [n, 3] uniformly on a legacy open3d mesh."""
    import open3d as o3d

    o3d.utility.random.seed(seed)
    mesh.compute_triangle_normals()
    pc = mesh.sample_points_uniformly(number_of_points=n, use_triangle_normal=True)
    return np.asarray(pc.points), np.asarray(pc.normals)


def compare(pred, gt, n: int) -> dict[str, float]:
    from scipy.spatial import cKDTree

    p, pn = sample(pred, n, 0)
    q, qn = sample(gt, n, 1)
    d_pq, i_pq = cKDTree(q).query(p, workers=1)  # pred -> GT
    d_qp, i_qp = cKDTree(p).query(q, workers=1)  # GT -> pred
    out = {
        "chamfer_mm": 1000 * 0.5 * (d_pq.mean() + d_qp.mean()),
        "normal_consistency": 0.5 * (np.abs((pn * qn[i_pq]).sum(1)).mean() + np.abs((qn * pn[i_qp]).sum(1)).mean()),
    }
    for tau in (0.01, 0.02):
        prec, rec = (d_pq < tau).mean(), (d_qp < tau).mean()
        out[f"f@{int(tau * 100)}cm"] = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return {k: float(v) for k, v in out.items()}


def oracle_gaussians(gt, colour, n: int = 8000, sigma: float = 0.012):
    from steinsplat.gaussians import Gaussians

    pts, _ = sample(gt, n, 2)
    pts = torch.tensor(pts, dtype=torch.float32)  # [n, 3]
    return Gaussians.from_points(pts, torch.tensor(colour, dtype=torch.float32).expand(n, 3), scale=sigma, opacity=0.9)


def method_config(spec: str):
    from steinsplat.export.mesh import MeshConfig

    name, _, level = spec.partition("@")
    if name not in ("tsdf", "density") or (level and name != "density"):
        sys.exit(f"unknown method {spec!r}: use tsdf, density or density@LEVEL")
    cfg = MeshConfig(method=name, mode="object")
    if level:
        cfg.level = float(level)
    return cfg


def prompt_of(path: Path, given: str | None) -> str:
    if given:
        return given
    run = path.parent / "run.json"
    if not run.exists():
        sys.exit(f"no run.json beside {path}: pass its prompt with --prompt")
    return json.loads(run.read_text())["prompt"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("splats", nargs="+", type=Path, help="splat files (.ply / .splat) of object prompts")
    ap.add_argument("--prompt", action="append", default=[], help="the prompt of each file, in order (default: run.json)")
    ap.add_argument("--methods", nargs="+", default=["tsdf", "density"], help="tsdf, density, density@LEVEL")
    ap.add_argument("--points", type=int, default=50_000, help="points sampled on each surface")
    ap.add_argument("--oracle", action="store_true", help="also mesh Gaussians sampled on the GT surface")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from steinsplat.export import load_gaussians
    from steinsplat.export.mesh import gaussians_to_mesh
    from steinsplat.shapeworld.vocab import ObjectPrompt, as_prompt
    from steinsplat.shapeworld.world import shape_mesh

    if args.prompt and len(args.prompt) != len(args.splats):
        sys.exit(f"--prompt given {len(args.prompt)} times for {len(args.splats)} files: give it once per file or not at all")
    configs = {m: method_config(m) for m in args.methods}
    rows = []
    for k, path in enumerate(args.splats):
        text = prompt_of(path, args.prompt[k] if args.prompt else None)
        prompt = as_prompt(text)
        if not isinstance(prompt, ObjectPrompt):
            print(f"skipping {path}: '{text}' is not an object prompt", file=sys.stderr)
            continue
        gt = shape_mesh(prompt.shape).to_open3d().to_legacy()
        inputs = [(text, load_gaussians(path))]
        if args.oracle:
            inputs.append((f"{text} (oracle)", oracle_gaussians(gt, prompt.albedo)))
        for label, g in inputs:
            row = {"prompt": label, "file": str(path)}
            for name, cfg in configs.items():
                t = time.perf_counter()
                mesh = gaussians_to_mesh(g, cfg)
                secs = time.perf_counter() - t
                m = compare(mesh, gt, args.points)
                m.update(triangles=len(mesh.triangles), seconds=secs,
                         watertight=bool(mesh.is_edge_manifold(allow_boundary_edges=False) and mesh.is_vertex_manifold()))
                row[name] = m
                print(f"{label:33s} {name:12s} " + " ".join(f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}"
                                                             for key, val in m.items()), file=sys.stderr, flush=True)
            rows.append(row)
    if not rows:
        sys.exit("no object prompts among the inputs")

    cols = [("chamfer_mm", "chamfer (mm) ↓", "{:.2f}"), ("normal_consistency", "normal cons. ↑", "{:.3f}"),
            ("f@1cm", "F@1cm ↑", "{:.3f}"), ("f@2cm", "F@2cm ↑", "{:.3f}"), ("triangles", "triangles", "{:d}"),
            ("watertight", "watertight", "{}"), ("seconds", "seconds", "{:.1f}")]
    names = list(configs)
    print(f"\nvalues: {' / '.join(names)}\n")
    print("| prompt | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for row in rows:
        cells = [" / ".join(fmt.format(row[n][key]) for n in names) for key, _, fmt in cols]
        print(f"| {row['prompt']} | " + " | ".join(cells) + " |")
    groups = {"generated": [r for r in rows if not r["prompt"].endswith("(oracle)")],
              "oracle": [r for r in rows if r["prompt"].endswith("(oracle)")]}
    for group, members in groups.items():
        if not members:
            continue
        mean_cells = []
        for key, _, fmt in cols:
            vals = [np.mean([float(r[n][key]) for r in members]) for n in names]
            if key == "watertight":
                mean_cells.append(" / ".join(f"{int(round(v * len(members)))}/{len(members)}" for v in vals))
            else:
                mean_cells.append(" / ".join((fmt if fmt != "{:d}" else "{:.0f}").format(v) for v in vals))
        print(f"| **mean, {group}** ({len(members)}) | " + " | ".join(mean_cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
