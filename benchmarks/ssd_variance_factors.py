"""Why the default SSD's variance ratio moved: one factor at a time.

    python benchmarks/ssd_variance_factors.py [--prompt "a red cube"] [--old-prior FOLDER] [--draws 48]
                                              [--out docs/bench/ssd_variance_factors.json]

The first report measured the default SSD (the learned noise filter) at 0.48-0.52x SDS's
parameter-gradient variance in the middle of a 200-step run; later measurements found 0.95x. Between
them three things changed: the prior (retrained camera-aware), the densification schedule (now a
fraction of the budget, so a 200-step run has refined three times by step 100) and the timestep
range of the measurement (the full initial range vs the annealed range at the snapshot's step).
This measures SDS and the default SSD on the snapshot at step `at` of an SDS run of `steps` steps
(generation's defaults, seed 0), fresh cameras, paired draws (`steinsplat.bench.variance`), with
SSD's mu learned on the snapshot for `warmup` steps, under each combination:
  prior      current | old (a prior folder, e.g. the first prior from git history)
  densify    on (the default schedule) | off (no refinement before the snapshot)
  t range    full (the range at progress 0, as the first report) | annealed (at the snapshot's progress)
Rows are appended to --out as they finish and reused by a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

from steinsplat.bench.convergence import bench_trainer
from steinsplat.bench.variance import measure_variance
from steinsplat.gaussians import Gaussians
from steinsplat.priors import ShapeWorldPriorAdapter


def snapshot(prompt: str, prior, steps: int, at: int, densify: bool, views: int, resolution: int) -> Gaussians:
    def no_refinement(optim):  # densification starts at the end of the schedule: never before the snapshot
        return dataclasses.replace(optim, densify=dataclasses.replace(optim.densify, start=1.0))

    tr = bench_trainer("sds", prompt, 0, steps, prior, None, views, resolution, None if densify else no_refinement)
    while tr.state.step < at:
        tr.step()
    return Gaussians.from_state_tensors({k: v.detach().clone() for k, v in tr.g.state_tensors().items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--old-prior", type=Path, default=None, help="folder of another prior (e.g. the first one)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--at", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--draws", type=int, default=48)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("docs/bench/ssd_variance_factors.json"))
    a = ap.parse_args()
    priors = {"current": None} | ({"old": a.old_prior} if a.old_prior else {})
    rows = json.loads(a.out.read_text())["rows"] if a.out.exists() else []
    done = {(r["prior"], r["densify"], r["t_range"]) for r in rows}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    for pname, densify in itertools.product(priors, (True, False)):
        todo = [tr for tr in ("full", "annealed") if (pname, densify, tr) not in done]
        if not todo:
            continue
        prior = ShapeWorldPriorAdapter.from_pretrained(priors[pname])
        scene = snapshot(a.prompt, prior, a.steps, a.at, densify, a.views, a.resolution)
        embeds = prior.encode_prompt(a.prompt)
        for t_range in todo:
            band = prior.timestep_range(0.0 if t_range == "full" else a.at / a.steps)
            t0 = time.perf_counter()
            res = measure_variance(scene, "middle", a.at, prior, None, embeds, "object", ["sds", "ssd"],
                                   {"band": tuple(band)}, ["fresh"], a.warmup, a.draws, a.views, a.resolution, seed=1234)
            ssd = next(r for r in res if r.method == "ssd")
            sds = next(r for r in res if r.method == "sds")
            row = {"prior": pname, "densify": densify, "t_range": t_range, "band": list(band), "gaussians": len(scene),
                   "sds_variance": sds.variance, "ssd_variance": ssd.variance, "ratio": ssd.ratio_vs_sds,
                   "ssd_variance_se": ssd.variance_se, "mean_z": ssd.mean_z_vs_sds, "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"prior {pname:<7} densify {str(densify):<5} t {t_range:<8} {band} {len(scene):>5} Gaussians: "
                  f"SSD {row['ratio']:.3f}x SDS (z {row['mean_z']:.2f})", flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = a.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"command": "python benchmarks/ssd_variance_factors.py", "settings": settings,
                                       "rows": rows}, indent=1))
            tmp.replace(a.out)


if __name__ == "__main__":
    main()
