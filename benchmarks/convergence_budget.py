"""Schedule-aware convergence: SDS against SSD when the whole schedule is given S steps.

    python benchmarks/convergence_budget.py [--budgets 100 150 200] [--methods sds ssd] [--seeds 0 1]
                                            [--prompts "a red cube;a blue sphere;a cyan torus;a gray pyramid"]

Generation's schedules end with the run (the means' learning rate decays exponentially to the last
step, the timestep range anneals to it), so every method reaches its final quality at its final
step, and "steps to reach SDS's final IoU" within one run says little. This asks instead: with a
budget of S steps for the whole schedule, what final mask IoU does each method reach? A method
that converges faster reaches SDS's quality at the largest budget with a smaller one. Every run
uses generation's defaults (`steinsplat bench`'s `run_one`), prompts x seeds per cell; the paired
differences against the reference (the first method at the largest budget) are printed with
their spread.
"""

from __future__ import annotations

import argparse
import statistics

from steinsplat.bench.convergence import run_one
from steinsplat.bench.run import prompt_list
from steinsplat.geometry import ShapeWorldEstimatorAdapter
from steinsplat.priors import ShapeWorldPriorAdapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 150, 200])
    ap.add_argument("--methods", nargs="+", default=["sds", "ssd"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--prompts", default="a red cube;a blue sphere;a cyan torus;a gray pyramid")
    args = ap.parse_args()
    prompts = prompt_list(args.prompts)
    prior, est = ShapeWorldPriorAdapter.from_pretrained(None), ShapeWorldEstimatorAdapter.from_pretrained(None)
    iou: dict[tuple[str, int], list[float]] = {}
    for S in args.budgets:
        for m in args.methods:
            iou[m, S] = [run_one(m, p, seed, S, S, prior, est, 4, 64)[0].final.mask_iou
                         for p in prompts for seed in args.seeds]
            v = iou[m, S]
            print(f"{m:<10} {S:>4} steps: mean mask IoU {statistics.mean(v):.4f} (sd {statistics.stdev(v):.4f}, "
                  f"{len(v)} runs)", flush=True)
    ref_m, ref_S = args.methods[0], max(args.budgets)
    ref = iou[ref_m, ref_S]
    for (m, S), v in iou.items():
        if (m, S) == (ref_m, ref_S):
            continue
        d = [a - b for a, b in zip(v, ref)]
        print(f"{m}@{S} - {ref_m}@{ref_S}: mean {statistics.mean(d):+.4f} (paired sd {statistics.stdev(d):.4f})")


if __name__ == "__main__":
    main()
