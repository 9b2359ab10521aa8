"""What `--viewer` costs a run: `python -m steinsplat.viewer.cost [--runs 3]`.

1. CPU time (all threads, `time.process_time`, which other jobs on the machine do not inflate) of the
   live viewer's hook and push thread per training step, with a simulated 90 ms step (no browser);
2. with --runs K: K interleaved pairs of `steinsplat "a red cube" --steps 100` without / with
   --viewer, comparing the optimisation time of run.json (wall time: needs an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def hook_cpu_ms_per_step(n_gaussians: int, steps: int = 300, push_every: int = 10, step_seconds: float = 0.09) -> float:
    from ..gaussians import Gaussians
    from ..trainer import StepLog
    from .live import LiveConfig, start_live_viewer, stop_live_viewer
    from .server import ViewerConfig

    server, live = start_live_viewer(ViewerConfig(port=0), LiveConfig(push_every=push_every), "cost", say=lambda m: None)
    try:
        tr = SimpleNamespace(g=Gaussians.random_ball(n_gaussians), state=SimpleNamespace(step=0),
                             cfg=SimpleNamespace(steps=10**9))
        c = time.process_time()
        for k in range(1, steps + 1):
            tr.state.step = k
            live.on_step(StepLog(k, 0.1, 1.0, n_gaussians, 0.0), tr)
            time.sleep(step_seconds)  # the training step, which costs the viewer nothing
        live.flush()
        return 1e3 * (time.process_time() - c) / steps
    finally:
        stop_live_viewer(server, live)


def run_pairs(k: int, steps: int = 100) -> list[tuple[float, float]]:
    """(optimise_s without, optimise_s with --viewer) for k interleaved pairs."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(k):
            pair = []
            for extra in ([], ["--viewer", "0"]):
                ply = Path(tmp) / f"{i}{len(extra)}" / "c.ply"
                subprocess.run([sys.executable, "-m", "steinsplat.cli", "a red cube", "--steps", str(steps), "--quiet",
                                "--checkpoint-every", "0", "--preview-every", "0", "--out", str(ply), *extra],
                               check=True, capture_output=True)
                pair.append(json.loads((ply.parent / "run.json").read_text())["timings"]["optimise_s"])
            out.append((pair[0], pair[1]))
            print(f"pair {i + 1}: without {pair[0]:.2f} s, with --viewer {pair[1]:.2f} s "
                  f"({100 * (pair[1] / pair[0] - 1):+.1f} %)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=0, help="interleaved generation pairs (0: only the CPU-time check)")
    args = ap.parse_args(argv)
    for n in (1_000, 8_000):
        print(f"{n:,} Gaussians: {hook_cpu_ms_per_step(n):.2f} ms CPU per step (push every 10 steps)", flush=True)
    if args.runs:
        pairs = run_pairs(args.runs)
        print(f"median overhead {100 * statistics.median(b / a - 1 for a, b in pairs):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
