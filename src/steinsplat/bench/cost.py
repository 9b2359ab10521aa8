"""Cost: time per optimisation step and peak memory of each method, side by side in one run.

Each method runs `steps` steps of a fresh optimisation of the same prompt and seed, in a fresh
Python process of its own (one after the other), so that memory is not shared between methods.
Time per step is the median over steps after the first two. Memory: on CUDA, torch's peak
allocated bytes above those before the steps; on the CPU, the process's peak resident set size
(sampled every 2 ms during the steps) above its resident size once the models are loaded: the
optimisation's own working memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..pipeline import build_trainer
from .convergence import bench_config
from .methods import build


@dataclass
class CostRow:
    method: str
    seconds_per_step: float
    ratio_vs_sds: float
    peak_memory_mb: float  # extra peak memory of the method's run (see module docstring)
    steps: int


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _PeakRSS:
    """The peak resident set size while the `with` block runs, sampled every 2 ms in a thread
    (the process's lifetime high-water mark would be the model-loading peak instead)."""

    def __enter__(self) -> "_PeakRSS":
        import threading

        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _one(name: str, prompt: str, seed: int, steps: int, views: int, resolution: int, threads: int) -> dict:
    """Runs in a fresh process: load the models, `steps` optimisation steps of one method."""
    from ..geometry import ShapeWorldEstimatorAdapter
    from ..priors import ShapeWorldPriorAdapter

    torch.set_num_threads(threads)
    prior = ShapeWorldPriorAdapter.from_pretrained(None)
    est = ShapeWorldEstimatorAdapter.from_pretrained(None)
    cfg = bench_config(prompt, seed, steps, views, resolution)
    trainer = build_trainer(cfg, prior, build(name, prior, est, cfg.mode), prior.device)
    cuda = torch.cuda.is_available() and str(prior.device).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    times = []
    with _PeakRSS() as mon:
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.step()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else mon.peak
    kept = sorted(times[2:] if len(times) > 4 else times)
    return {"seconds_per_step": kept[len(kept) // 2], "peak_extra_mb": max(0.0, (peak - base) / 2**20)}


def measure_cost(methods: list[str], prompt: str, seed: int, steps: int, prior, est, views: int,
                 resolution: int) -> list[CostRow]:
    """One fresh process per method, one after the other (same machine state, same threads)."""
    import json
    import subprocess
    import sys

    rows = []
    for name in methods:
        args = json.dumps([name, prompt, seed, steps, views, resolution, torch.get_num_threads()])
        code = ("import json, sys; from steinsplat.bench.cost import _one; "
                "print('RESULT ' + json.dumps(_one(*json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"cost measurement of {name} failed:\n{proc.stderr[-2000:]}")
        res = json.loads(line[len("RESULT "):])
        rows.append(CostRow(name, res["seconds_per_step"], float("nan"), res["peak_extra_mb"], steps))
    sds = next((r for r in rows if r.method == "sds"), None)
    for r in rows:
        r.ratio_vs_sds = r.seconds_per_step / sds.seconds_per_step if sds else float("nan")
    return rows
