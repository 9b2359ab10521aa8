"""`steinsplat bench`: the evidence for SSD — gradient variance, convergence, cost and ablations of
SDS, VSD and SSD on ShapeWorld's ground truth, written as JSON, Markdown and PNG plots.

    steinsplat bench --quick --out runs/bench-quick     # a few minutes: CI checks its structure
    steinsplat bench --out runs/bench                   # the full protocol (hours on 2 CPU cores)

Modules: methods (name -> estimator), variance, convergence, cost, report; run wires them.
"""

from .run import BenchConfig, main, run_bench

__all__ = ["BenchConfig", "main", "run_bench"]
