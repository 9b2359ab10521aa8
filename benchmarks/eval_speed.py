"""Time `shapeworld.metrics.evaluate` (and its parts) on a finished run's splats, as the CLI calls it:
once, in a fresh process, so the ground truth, the classifier and the occupancy are computed cold.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py runs/demo/a-red-cube.ply [--prompt "a red cube"] [--warm]

Prints the seconds (wall and process CPU: the CPU figure is the steadier on a busy machine) of one cold call (and, with --warm, of a second call whose per-process caches are
filled), and the metrics as JSON on the last line. Old and new code cannot share a process: run it
with each tree's src on PYTHONPATH, interleaved, on an idle machine, and compare the minima.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("splats", type=Path, help="a .ply written by steinsplat (run.json beside it names the prompt)")
    ap.add_argument("--prompt", help="the prompt (default: run.json's)")
    ap.add_argument("--warm", action="store_true", help="also time a second call (caches filled)")
    args = ap.parse_args()
    import torch

    from steinsplat.export.ply import read_ply
    from steinsplat.shapeworld.metrics import evaluate

    prompt = args.prompt or json.loads((args.splats.parent / "run.json").read_text())["prompt"]
    g = read_ply(args.splats)
    import steinsplat.render  # noqa: F401  (the renderer's import is start-up, not evaluation)

    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        m = evaluate(g, prompt)
        t1, c1 = time.perf_counter(), time.process_time()
        print(f"evaluate (cold): {t1 - t0:.2f} s wall, {c1 - c0:.2f} s CPU")
        if args.warm:
            evaluate(g, prompt)
            print(f"evaluate (warm): {time.perf_counter() - t1:.2f} s wall, {time.process_time() - c1:.2f} s CPU")
    print(json.dumps(m.to_dict(), default=str))


if __name__ == "__main__":
    main()
