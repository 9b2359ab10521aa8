"""Generated splats next to ShapeWorld's ground truth, as one PNG: look at the shape, not only its numbers.

    python benchmarks/shape_sheet.py runs/demo/a-red-cube.ply "a red cube" --out docs/images/red-cube-vs-gt.png
           [--label "after"] [more PLY PROMPT pairs with --pair PLY PROMPT]

Columns: the evaluation ring (el 20, az 0, 45, ..., 315), a low view (el 0, az 45: a cube's edge,
a pyramid's ridge) and the top view (el 90: a square against a disc); rows: for each file, its
render (torch backend, white background); each prompt's ground truth follows the renders of its
files (before / after comparisons of one prompt share one ground-truth row). 64x64 images, scaled x2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from steinsplat.cameras import Cameras, object_eval_cameras, orbit_cameras
from steinsplat.export.atomic import atomic_write_bytes
from steinsplat.export.ply import read_ply
from steinsplat.render import render
from steinsplat.shapeworld.groundtruth import render_gt


def sheet_cameras() -> Cameras:
    ring = object_eval_cameras(64, 64)
    extra = orbit_cameras([0.0, 90.0], [45.0, 0.0], 1.8, width=64, height=64)
    return Cameras.cat([ring, extra])


def strip(images: torch.Tensor) -> np.ndarray:
    return torch.cat(list(images), dim=1).numpy()  # [V, 64, 64, 3] -> [64, V*64, 3]


def render_row(ply: Path) -> np.ndarray:
    with torch.no_grad():
        return strip(render(read_ply(ply), sheet_cameras(), background=(1.0, 1.0, 1.0), backend="torch").rgb.clamp(0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ply", type=Path)
    ap.add_argument("prompt")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("PLY", "PROMPT"), help="more rows")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pairs = [(args.ply, args.prompt), *[(Path(p), q) for p, q in args.pair]]
    rows: list[np.ndarray] = []
    for prompt in dict.fromkeys(q for _, q in pairs):
        rows += [render_row(ply) for ply, q in pairs if q == prompt]
        rows.append(strip(render_gt(prompt, sheet_cameras()).rgb))
    img = np.concatenate(rows, 0)
    img = np.kron((img * 255).round().astype(np.uint8), np.ones((2, 2, 1), np.uint8))
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")


if __name__ == "__main__":
    main()
