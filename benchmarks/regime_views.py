"""Views of SDS and the eps-oracle in a regime beside the ground truth (the regime search's pictures).

    python benchmarks/regime_views.py --regime textured --steps 100 --lr-mult 4 \
        --prompts "a red striped cube;a blue striped cylinder" --out docs/images/regime-textured-sds-vs-oracle.png

For each prompt, rows: SDS, the eps-oracle (sds-eps4), the ground truth (striped prompts: at the
phase nearest to the eps-oracle's result), each at evaluation views 0, 2, 4, 6 (64x64, shown 2x).
Generation's defaults, seed 0, learning rates x lr_mult (`bench.convergence.bench_trainer`); prints
each run's nearest-mode 3D IoU and colour error (and the chosen phase with the range over phases).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch


def main() -> None:
    from PIL import Image

    from steinsplat.bench.convergence import bench_trainer
    from steinsplat.bench.regimes import regime_priors, regime_prompt
    from steinsplat.bench.run import prompt_list
    from steinsplat.bench.study import scaled_optim
    from steinsplat.export.atomic import atomic_write_bytes
    from steinsplat.shapeworld.metrics import eval_cameras, eval_gt, evaluate
    from steinsplat.shapeworld.phase_metrics import striped_gt
    from steinsplat.shapeworld.shape_metrics import render_views
    from steinsplat.shapeworld.vocab import parse_prompt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", default="textured")
    ap.add_argument("--prompts", default="a red striped cube;a blue striped cylinder")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr-mult", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/images/regime-textured-sds-vs-oracle.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    prior, est = regime_priors(args.regime)
    views = torch.tensor([0, 2, 4, 6])
    rows = []
    for text in prompt_list(args.prompts):
        text = regime_prompt(args.regime, text)
        p = parse_prompt(text)
        cams = eval_cameras(p)
        m = None
        for method in ("sds", "sds-eps4"):
            tr = bench_trainer(method, text, args.seed, args.steps, prior, est, 4, 64,
                               lambda o: scaled_optim(o, args.lr_mult))
            while tr.state.step < args.steps:
                tr.step()
            with torch.no_grad():
                m = evaluate(tr.g, text, shape=True, r_precision=False)
                rgb = render_views(tr.g, {"eval": cams})["eval"][0]  # [B, 64, 64, 3]
            extra = ""
            if getattr(m, "phase", None) is not None:
                extra = (f" phase {m.phase:.4f} (colour error over the phases {min(m.phase_colour_errors):.3f}.."
                         f"{max(m.phase_colour_errors):.3f})")
            print(f"{text} {method}: 3D IoU {m.iou_3d:.3f} colour error {m.colour_error:.3f}{extra}", flush=True)
            rows.append(torch.cat(list(rgb[views].clamp(0, 1)), 1))
        gt = striped_gt(p, m.phase).rgb if getattr(m, "phase", None) is not None else eval_gt(p).rgb
        rows.append(torch.cat(list(gt[views]), 1))
    img = Image.fromarray((torch.cat(rows, 0) * 255).round().byte().numpy())
    img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
