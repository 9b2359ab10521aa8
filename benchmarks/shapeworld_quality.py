"""Text-to-3D quality and speed on the embedded default, against ShapeWorld's ground truth.

    python benchmarks/shapeworld_quality.py [--set all|quick] [--seeds 0] [--guidance ssd] [--steps 500]
                                            [--out-dir runs/quality] [extra generation options ...]

For each prompt (all 56 colour/shape pairs plus a room with --set all; one pair per shape, three
of them held out, plus the room with --set quick) it runs `steinsplat PROMPT` with the defaults
(models loaded once) and collects the ShapeWorld metrics of its run.json: mask IoU, PSNR,
colour error, depth error, R-precision (shipped classifier), and the wall time. Prints a table,
the means over trained and held-out pairs separately, and writes results.json + results.md.

Targets (issue "End-to-end text-to-3D"): "a red cube" <= 120 s; over all 56 pairs mean mask IoU
>= 0.85, colour error <= 0.08, R-precision >= 0.9; a room reaches depth error <= 0.15 m.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steinsplat import config
from steinsplat.batch import slugify
from steinsplat.bench.convergence import finite_mean
from steinsplat.export.atomic import atomic_write_bytes
from steinsplat.generate import GenerateConfig, generate
from steinsplat.shapeworld.vocab import HELD_OUT, all_object_prompts, canonical_text

ROOM = "a room with blue walls and a gray floor"
QUICK = ["a red cube", "a blue sphere", "a yellow cylinder", "an orange cone", "a cyan torus", "a gray pyramid",
         "a purple capsule"]  # blue sphere, orange cone, cyan torus are held out
KEYS = ("mask_iou", "psnr", "colour_error", "depth_error", "r_precision")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["all", "quick"], default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out-dir", type=Path, default=Path("runs/quality"))
    args, extra = ap.parse_known_args()
    prompts = [canonical_text(p) for p in all_object_prompts()] if args.set == "all" else list(QUICK)
    prompts.append(ROOM)
    held = {canonical_text(p) for p in HELD_OUT}
    models: dict = {}
    rows = []
    print(f"{'prompt':<42} {'seed':>4} {'IoU':>6} {'PSNR':>6} {'colour':>7} {'depth m':>8} {'R-prec':>6} {'s':>6}")
    for prompt in prompts:
        for seed in args.seeds:
            mode = ["--mode", "scene"] if prompt == ROOM else []
            out = args.out_dir / f"{slugify(prompt)}-seed{seed}" / "splats.ply"
            cfg = config.parse(GenerateConfig, [prompt, "--seed", str(seed), "--out", str(out), "--quiet",
                                                "--checkpoint-every", "0", *mode, *extra], prog="quality")
            rec = generate(cfg, models=models)
            m = rec["metrics"]
            row = {"prompt": prompt, "seed": seed, "held_out": prompt in held, "room": prompt == ROOM,
                   "seconds": rec["timings"]["total_s"], **{k: m.get(k) for k in KEYS}}
            rows.append(row)
            rp = "-" if row["r_precision"] is None else f"{row['r_precision']:.2f}"
            print(f"{prompt:<42} {seed:>4} {row['mask_iou']:>6.3f} {row['psnr']:>6.2f} {row['colour_error']:>7.3f} "
                  f"{row['depth_error']:>8.3f} {rp:>6} {row['seconds']:>6.1f}", flush=True)
    summary = {}
    for name, sel in (("trained", lambda r: not r["held_out"] and not r["room"]), ("held_out", lambda r: r["held_out"]),
                      ("objects", lambda r: not r["room"]), ("room", lambda r: r["room"])):
        group = [r for r in rows if sel(r)]
        summary[name] = {k: finite_mean([r[k] for r in group]) for k in (*KEYS, "seconds")} | {"runs": len(group)}
    print()
    for name, s in summary.items():
        print(f"{name:<9} runs {s['runs']:>3}  " + "  ".join(f"{k} {s[k]:.3f}" for k in (*KEYS, "seconds")))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out_dir / "results.json", json.dumps({"rows": rows, "summary": summary}, indent=2).encode())
    md = ["| group | runs | mask IoU | PSNR | colour err | depth err (m) | R-precision | s / run |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {n} | {s['runs']} | {s['mask_iou']:.3f} | {s['psnr']:.2f} | {s['colour_error']:.3f} | {s['depth_error']:.3f} | "
           f"{s['r_precision']:.2f} | {s['seconds']:.0f} |" for n, s in summary.items()]
    atomic_write_bytes(args.out_dir / "results.md", ("\n".join(md) + "\n").encode())
    print(f"wrote {args.out_dir / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
