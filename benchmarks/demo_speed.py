"""How long `make demo` takes, at this checkout and at an earlier commit, measured side by side.

    python benchmarks/demo_speed.py [--against COMMIT] [--rounds 3] [--out benchmarks/results/demo_speed.json]
                                    [-- extra generation options ...]

Runs the demo's command (`steinsplat "a red cube" --out .../a-red-cube.ply --mesh .../a-red-cube.glb
--video .../a-red-cube.gif`, the Makefile's `demo` target) as a fresh process, once per round for each
side, alternating which side goes first so that a machine that slows down or warms up over the
benchmark weighs on both alike. The earlier commit runs from a temporary `git worktree` with this
checkout's interpreter (so the two differ only in steinsplat's code and assets).

Per run: the process's wall time (what a user waits for), and the phases from run.json's
`timings` (load, optimise, export; metrics, first_step and the export by output -- splats, mesh,
video -- where the commit records them). Prints
the medians per side and the ratio this / earlier; writes everything, raw runs included, as JSON.
Run it on an idle machine: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red cube"
PHASES = ("first_step_s", "load_s", "optimise_s", "export_s", "metrics_s", "total_s")
PARTS = ("splats", "mesh", "video")  # export_s by output (run.json's timings.export_parts_s, where a commit records it)
PART_KEYS = tuple(f"export_{p}_s" for p in PARTS)


def demo_command(out_dir: Path, extra: list[str]) -> list[str]:
    """The Makefile's demo target, writing into out_dir."""
    return [sys.executable, "-m", "steinsplat", PROMPT, "--out", str(out_dir / "a-red-cube.ply"),
            "--mesh", str(out_dir / "a-red-cube.glb"), "--video", str(out_dir / "a-red-cube.gif"), *extra]


def run_once(src: Path, out_dir: Path, extra: list[str]) -> dict:
    """One demo run as a fresh process importing steinsplat from `src`; its wall time and run.json timings."""
    env = dict(os.environ, PYTHONPATH=str(src))
    t0 = time.perf_counter()
    proc = subprocess.run(demo_command(out_dir, extra), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the demo failed under {src} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    rec = json.loads((out_dir / "run.json").read_text())
    timings = rec.get("timings", {})
    metrics = rec.get("metrics", {})
    parts = timings.get("export_parts_s") or {}
    return {"wall_s": wall, **{k: timings.get(k) for k in PHASES}, **{f"export_{p}_s": parts.get(p) for p in PARTS},
            "gaussians": rec.get("gaussians", rec.get("num_gaussians")), "steps": rec.get("steps"),
            "iou_3d": metrics.get("iou_3d"), "chamfer_mm": metrics.get("chamfer_mm"),
            "colour_error": metrics.get("colour_error"), "mask_iou": metrics.get("mask_iou")}


def medians(runs: list[dict]) -> dict:
    keys = ("wall_s", *PHASES, *PART_KEYS, "iou_3d", "chamfer_mm", "colour_error")
    return {k: statistics.median([r[k] for r in runs]) if all(r.get(k) is not None for r in runs) else None for k in keys}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default=None, help="earlier commit to compare with (default: none, this side only)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_speed.json")
    args, extra = ap.parse_known_args()
    extra = [e for e in extra if e != "--"]
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    here = git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    sides = {"this": ROOT / "src"}
    tmp = Path(tempfile.mkdtemp(prefix="demo-speed-"))
    wt = None
    try:
        if args.against:
            wt = tmp / "earlier"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.against],
                           capture_output=True, check=True)
            sides["earlier"] = wt / "src"
        runs: dict[str, list[dict]] = {k: [] for k in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                res = run_once(sides[name], tmp / f"{name}-{r}", extra)
                runs[name].append(res)
                print(f"round {r + 1} {name:<8} wall {res['wall_s']:6.1f} s  " + "  ".join(
                    f"{k[:-2]} {res[k]:.1f}" for k in (*PHASES, *PART_KEYS) if res.get(k) is not None), flush=True)
        med = {k: medians(v) for k, v in runs.items()}
        print()
        for name, m in med.items():
            print(f"median {name:<8} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} -" for k, v in m.items()))
        ratio = None
        if "earlier" in med:
            ratio = {k: (med["this"][k] / med["earlier"][k]) if med["this"][k] and med["earlier"][k] else None
                     for k in ("wall_s", *PHASES, *PART_KEYS)}
            print("ratio this/earlier " + "  ".join(f"{k} {v:.2f}" for k, v in ratio.items() if v is not None))
        report = {"date": time.strftime("%Y-%m-%d"), "this": here, "earlier": args.against, "rounds": args.rounds,
                  "extra": extra, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                              "python": platform.python_version()},
                  "load_average_at_end": os.getloadavg(), "median": med, "ratio": ratio, "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        part = args.out.with_suffix(".json.part")
        part.write_text(json.dumps(report, indent=2) + "\n")
        part.replace(args.out)
        print(f"wrote {args.out}")
    finally:
        if wt is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True)


if __name__ == "__main__":
    main()
