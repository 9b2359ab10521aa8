"""Text-to-3D quality and speed on the embedded default, against ShapeWorld's ground truth.

    python benchmarks/shapeworld_quality.py [--set all|quick|rooms] [--seeds 0] [--guidance ssd] [--steps 100]
                                            [--out-dir runs/quality] [--shard I/N] [--reuse] [extra generation options ...]

For each prompt (all 56 colour/shape pairs plus a room with --set all; one pair per shape, three
of them held out, plus the room with --set quick; four rooms with --set rooms) it runs `steinsplat PROMPT` with the defaults
(models loaded once) and collects the ShapeWorld metrics of its run.json: mask IoU, PSNR,
colour error, depth error, R-precision (shipped classifier), the shape-aware measures (top-view
and low-view mask IoU, 3D IoU, chamfer distance in mm, the classifier's shape votes on views where
look-alike shapes differ) and the wall time. Prints a table, the means over trained and held-out
pairs separately, per shape, the shape confusion matrix, and writes results.json + results.md.

Pieces: `--shard I/N` runs every N-th prompt from the I-th (two shards run side by side on two
cores); `--reuse` takes the metrics of runs whose run.json already exists in the output folder
instead of generating again, so a last `--reuse` invocation collects the shards' runs in one table.

Targets (issue "End-to-end text-to-3D"): "a red cube" <= 120 s; over all 56 pairs mean mask IoU
>= 0.85, colour error <= 0.08, R-precision >= 0.9; a room reaches depth error <= 0.15 m.
A room's headline is its PSNR and colour error against the ground truth (run.json's metrics.headline):
a room has no background, so a room of coloured noise on the walls still scores ~0.99 mask IoU and a
small depth error; the room's row and the summary's room line lead with PSNR and colour error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steinsplat import config
from steinsplat.batch import slugify
from steinsplat.bench.convergence import finite_mean
from steinsplat.export.atomic import atomic_write_bytes
from steinsplat.pipeline import GenerateConfig, generate
from steinsplat.shapeworld.vocab import HELD_OUT, SHAPE_NAMES, all_object_prompts, canonical_text, parse_prompt

ROOM = "a room with blue walls and a gray floor"
ROOMS = (ROOM, "a room with red walls and a yellow floor", "a room with green walls and a purple floor",
         "a room with cyan walls and an orange floor")  # --set rooms
QUICK = ["a red cube", "a blue sphere", "a yellow cylinder", "an orange cone", "a cyan torus", "a gray pyramid",
         "a purple capsule"]  # blue sphere, orange cone, cyan torus are held out
KEYS = ("mask_iou", "psnr", "colour_error", "depth_error", "r_precision", "top_iou", "low_iou", "iou_3d", "chamfer_mm")
CUBOIDS = ("cube", "pyramid")  # the shapes whose look changes with azimuth


def confusion(rows: list[dict]) -> dict:
    """{true shape: {called shape: mean share}} of the classifier's shape votes (objects with votes)."""
    out: dict = {}
    for r in rows:
        if r.get("shape_votes"):
            acc = out.setdefault(r["shape"], {"runs": 0})
            acc["runs"] += 1
            for k, v in r["shape_votes"].items():
                acc[k] = acc.get(k, 0.0) + v
    return {s: {k: (v / a["runs"] if k != "runs" else v) for k, v in a.items()} for s, a in out.items()}


def room_line(r: dict) -> str:
    """A room's headline, PSNR and colour error first (mask IoU and depth error cannot see a room of noise)."""
    num = lambda k, d: "-" if r.get(k) is None or r[k] != r[k] else f"{r[k]:.{d}f}"  # noqa: E731
    return (f"room: PSNR {num('psnr', 2)} dB, colour error {num('colour_error', 3)} "
            f"(mask IoU {num('mask_iou', 3)}, depth error {num('depth_error', 3)} m)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["all", "quick", "rooms"], default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out-dir", type=Path, default=Path("runs/quality"))
    ap.add_argument("--shard", type=str, default="0/1", help="I/N: run every N-th prompt starting at the I-th")
    ap.add_argument("--reuse", action="store_true", help="read finished runs' run.json instead of generating again")
    args, extra = ap.parse_known_args()
    if args.set == "rooms":
        prompts = list(ROOMS)
    else:
        prompts = [canonical_text(p) for p in all_object_prompts()] if args.set == "all" else list(QUICK)
        prompts.append(ROOM)
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        raise SystemExit(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    prompts = prompts[shard::shards]
    held = {canonical_text(p) for p in HELD_OUT}
    models: dict = {}
    rows = []
    print(f"{'prompt':<42} {'seed':>4} {'IoU':>6} {'PSNR':>6} {'colour':>7} {'depth m':>8} {'R-prec':>6} "
          f"{'top':>6} {'low':>6} {'3D':>6} {'CD mm':>6} {'s':>6}")
    for prompt in prompts:
        for seed in args.seeds:
            mode = ["--mode", "scene"] if prompt in ROOMS else []
            out = args.out_dir / f"{slugify(prompt)}-seed{seed}" / "splats.ply"
            cfg = config.parse(GenerateConfig, [prompt, "--seed", str(seed), "--out", str(out), "--quiet",
                                                "--checkpoint-every", "0", *mode, *extra], prog="quality")
            done = out.parent / "run.json"
            if args.reuse and done.exists() and json.loads(done.read_text()).get("status") == "ok":
                rec = json.loads(done.read_text())
            else:
                rec = generate(cfg, models=models).to_dict()  # the reused ones are run.json: the same form
            m = rec["metrics"]
            row = {"prompt": prompt, "seed": seed, "held_out": prompt in held, "room": prompt in ROOMS,
                   "shape": None if prompt in ROOMS else parse_prompt(prompt).shape,
                   "seconds": rec["timings"]["total_s"], **{k: m.get(k) for k in KEYS}, "shape_votes": m.get("shape_votes"),
                   "headline": m.get("headline")}
            rows.append(row)
            f = lambda k, w, d: "-" if row[k] is None else f"{row[k]:>{w}.{d}f}"  # noqa: E731
            print(f"{prompt:<42} {seed:>4} {f('mask_iou', 6, 3)} {f('psnr', 6, 2)} {f('colour_error', 7, 3)} "
                  f"{f('depth_error', 8, 3)} {f('r_precision', 6, 2):>6} {f('top_iou', 6, 3):>6} {f('low_iou', 6, 3):>6} "
                  f"{f('iou_3d', 6, 3):>6} {f('chamfer_mm', 6, 1):>6} {row['seconds']:>6.1f}", flush=True)
            if row["room"]:
                print(room_line(row), flush=True)
    summary = {}
    for name, sel in (("trained", lambda r: not r["held_out"] and not r["room"]), ("held_out", lambda r: r["held_out"]),
                      ("objects", lambda r: not r["room"]), ("cubes+pyramids", lambda r: r["shape"] in CUBOIDS),
                      *((f"shape {s}", (lambda s: lambda r: r["shape"] == s)(s)) for s in SHAPE_NAMES),
                      ("room", lambda r: r["room"])):
        group = [r for r in rows if sel(r)]
        if group:
            summary[name] = {k: finite_mean([r[k] for r in group if r[k] is not None]) for k in (*KEYS, "seconds")} | {"runs": len(group)}
    conf = confusion(rows)
    print()
    for name, s in summary.items():
        print(f"{name:<15} runs {s['runs']:>3}  " + "  ".join(f"{k} {s[k]:.3f}" for k in (*KEYS, "seconds")))
    if "room" in summary:
        print(room_line(summary["room"]))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out_dir / "results.json",
                       json.dumps({"rows": rows, "summary": summary, "confusion": conf}, indent=2).encode())
    num = lambda v, d: "-" if v != v else f"{v:.{d}f}"  # noqa: E731  (nan for groups without the measure)
    md = ["| group | runs | mask IoU | top IoU | low IoU | 3D IoU | chamfer mm | PSNR | colour err | depth err (m) | R-precision | s / run |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {n} | {s['runs']} | {num(s['mask_iou'], 3)} | {num(s['top_iou'], 3)} | {num(s['low_iou'], 3)} | "
           f"{num(s['iou_3d'], 3)} | {num(s['chamfer_mm'], 1)} | {num(s['psnr'], 2)} | {num(s['colour_error'], 3)} | "
           f"{num(s['depth_error'], 3)} | {num(s['r_precision'], 2)} | {s['seconds']:.0f} |" for n, s in summary.items()]
    if "room" in summary:
        md += ["", f"Room ({summary['room']['runs']} runs), headline: {room_line(summary['room'])}"]
    md += ["", "Shape confusion (the classifier's shape calls on views where look-alikes differ: el 0 and 60 at az 45, "
           "135, 225, 315; rows: the prompt's shape, mean share over its runs):", "",
           "| shape | " + " | ".join(SHAPE_NAMES) + " |", "|---|" + "---:|" * len(SHAPE_NAMES)]
    md += [f"| {s} | " + " | ".join(f"{c.get(k, 0.0):.2f}" for k in SHAPE_NAMES) + " |" for s, c in conf.items()]
    atomic_write_bytes(args.out_dir / "results.md", ("\n".join(md) + "\n").encode())
    print(f"wrote {args.out_dir / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
