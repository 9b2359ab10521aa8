"""The GPU acceptance check (docs/gpu.md, section The acceptance check): what a CUDA machine without
network runs once, in under 10 minutes, to show that steinsplat's GPU path works there.

    scripts/gpu-check.sh [--json results.json] [--keep DIR] [--quick]

Checks, each one summary line `PASS|FAIL|SKIP name (seconds): detail`:
  1. cuda            a CUDA device (name, memory) or why not;
  2. gsplat-kernels  gsplat's CUDA kernels prebuilt or compiled, and a CUDA render with them;
  3. parity          gsplat (CUDA) against steinsplat's torch rasteriser: images and gradients
                     (without CUDA: the torch rasteriser against the dense reference, the CPU part);
  4. cuda-tests      the tests marked `cuda` (pytest -m cuda);
  5. tiny-sd-cuda    a tiny Stable Diffusion built here (random weights, no download) run end to
                     end on CUDA through the real gsplat with an fp16 prior and the sd-object recipe
                     (its SSD, without the depth estimator: no weights to fetch);
                     its refinements (Gaussian counts, share over the threshold) are in the detail;
  6. tiny-sd-cpu     the same run on the CPU at 16x16 (a stand-in that exercises this script, only
                     without CUDA);
  7. sd-speed        benchmarks/sd_speed.py on that tiny model (on the CPU: its --cpu-tiny path);
  8. shapeworld-cuda the ShapeWorld demo ("a red cube", 500 steps) on CUDA with its metrics.
Exit code 0 when nothing failed (skips are not failures), 1 otherwise. Without CUDA every check that
needs it is a SKIP that says so, and the rest runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from steinsplat.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Result:
    name: str  # the check
    status: str  # PASS, FAIL or SKIP
    detail: str  # what was found (or why it was skipped)
    seconds: float = 0.0  # wall time of the check
    data: dict = field(default_factory=dict)  # numbers behind the detail

    def line(self) -> str:
        return f"{self.status} {self.name} ({self.seconds:.0f} s): {self.detail}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _tail(text: str, n: int = 300) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (" | ".join(lines[-3:]))[-n:]


# ---------------------------------------------------------------------------- checks
def check_cuda() -> Result:
    import torch

    if not torch.cuda.is_available():
        why = "CPU-only torch build" if torch.version.cuda is None else f"torch for CUDA {torch.version.cuda}, no device visible"
        return Result("cuda", "SKIP", f"no CUDA device ({why}); the checks that need one are skipped")
    p = torch.cuda.get_device_properties(0)
    return Result("cuda", "PASS", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}",
                  data={"gpu": p.name})


def _from_doctor(name: str, fn: Callable[[], object]) -> Result:
    c = fn()
    status = {"ok": "PASS", "warn": "PASS", "skip": "SKIP", "fail": "FAIL"}[c.status]  # type: ignore[attr-defined]
    detail = c.detail + (f" -> {c.fix}" if c.status == "fail" and c.fix else "")  # type: ignore[attr-defined]
    return Result(name, status, detail, data=dict(c.data))  # type: ignore[attr-defined]


def check_kernels(cuda: bool) -> Result:
    from steinsplat.doctor import check_gsplat_kernels

    return _from_doctor("gsplat-kernels", lambda: check_gsplat_kernels(cuda))


def check_parity(cuda: bool) -> Result:
    from steinsplat.doctor import check_parity as doctor_parity

    return _from_doctor("parity", lambda: doctor_parity(cuda))


def check_cuda_tests(cuda: bool) -> Result:
    if not cuda:
        return Result("cuda-tests", "SKIP", "no CUDA device: the tests marked cuda skip themselves here")
    r = _run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], timeout=300)
    summary = _tail(r.stdout, 200)
    ok = r.returncode == 0
    return Result("cuda-tests", "PASS" if ok else "FAIL", f"pytest -m cuda: {summary}", data={"returncode": r.returncode})


def tiny_sd(folder: Path) -> Path:
    """A tiny random SD saved with save_pretrained (the tests' builder): no download needed."""
    from test_priors import _save_tiny_sd  # tests/ is on sys.path (main)

    if not (folder / "unet").is_dir():
        _save_tiny_sd(folder)
    return folder


def check_tiny_sd(model: Path, work: Path, device: str, quick: bool) -> Result:
    name = f"tiny-sd-{device}"
    out = work / f"run-{device}" / "corgi.ply"
    if device == "cuda":
        size, steps, dtype, init = ("64", "60" if quick else "120", "float16", "2000")
    else:
        size, steps, dtype, init = ("16", "12", "float32", "100")
    n = int(steps)
    # the sd-object recipe, its schedule scaled to this short run (refine every n/6 steps from n/6 to 5n/6)
    sched = ["--optim.densify.start", str(n // 12), "--optim.densify.stop", str(n - n // 12),
             "--optim.densify.interval", str(max(1, n // 6))]
    argv = ["a corgi in a spacesuit", "--config", "sd-object", "--model", str(model), "--device", device,
            "--dtype", dtype, "--guidance", "ssd", "--estimator", "none", "--steps", steps, "--resolution", size, "--views", "4",
            "--init-gaussians", init, "--checkpoint-every", "0", "--preview-every", str(max(1, n // 2)),
            "--out", str(out), *sched]
    r = _run([sys.executable, "-c", CLI, *argv], timeout=240)
    if r.returncode != 0:
        return Result(name, "FAIL", f"exit {r.returncode}: {_tail(r.stderr)}")
    rec = json.loads((out.parent / "run.json").read_text())
    rows = rec.get("densify") or []
    refines = ", ".join(f"{x['before']}->{x['after']} ({100 * x.get('over', float('nan')):.0f} % over)" for x in rows)
    ok = rec["status"] == "ok" and rec["skipped_steps"] == 0 and rec["gaussians"] > 0
    previews = sorted(p.name for p in (out.parent / "previews").glob("*.png"))
    detail = (f"{steps} steps at {size}x{size}, prior {dtype}, {rec['skipped_steps']} skipped, {rec['gaussians']:,} Gaussians; "
              f"refinements {refines or 'none'}; previews {', '.join(previews) or 'none'}; "
              f"{rec['timings']['optimise_s']:.1f} s optimising")
    if device == "cpu":
        detail = "stand-in for tiny-sd-cuda (torch rasteriser, no CUDA here): " + detail
    return Result(name, "PASS" if ok else "FAIL", detail, data={"densify": rows, "timings": rec["timings"]})


def check_sd_speed(model: Path, work: Path, cuda: bool) -> Result:
    js = work / "sd_speed.json"
    if cuda:
        args = ["--model", str(model), "--guidances", "sds", "vsd", "ssd", "--resolution", "64", "--repeats", "2"]
    else:
        args = ["--cpu-tiny", str(model), "--guidances", "sds", "--resolution", "16", "--views", "1", "--gaussians", "200",
                "--repeats", "1"]
    r = _run([sys.executable, str(ROOT / "benchmarks" / "sd_speed.py"), *args, "--json", str(js)], timeout=240)
    if r.returncode != 0:
        return Result("sd-speed", "FAIL", f"exit {r.returncode}: {_tail(r.stderr or r.stdout)}")
    res = json.loads(js.read_text())["results"]
    parts = ", ".join(f"{x['guidance']} {x['seconds']:.3f} s/step" + (f" {x['peak_gib']:.2f} GiB" if x.get("peak_gib") else "")
                      for x in res if "guidance" in x)
    what = "tiny model on CUDA" if cuda else "--cpu-tiny path (CPU, numbers mean nothing)"
    return Result("sd-speed", "PASS", f"{what}: {parts}", data={"results": res})


def check_shapeworld(cuda: bool, work: Path, quick: bool) -> Result:
    if not cuda:
        return Result("shapeworld-cuda", "SKIP", "no CUDA device (on the CPU this is `make demo`)")
    out = work / "demo" / "a-red-cube.ply"
    steps = "200" if quick else "500"
    r = _run([sys.executable, "-c", CLI, "a red cube", "--device", "cuda", "--steps", steps, "--quiet",
              "--checkpoint-every", "0", "--out", str(out)], timeout=300)
    if r.returncode != 0:
        return Result("shapeworld-cuda", "FAIL", f"exit {r.returncode}: {_tail(r.stderr)}")
    rec = json.loads((out.parent / "run.json").read_text())
    m = rec.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, (int, float)))
    return Result("shapeworld-cuda", "PASS", f"{steps} steps, {rec['gaussians']:,} Gaussians, "
                  f"{rec['timings']['optimise_s']:.1f} s optimising; {shown}", data={"metrics": m})


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write every result here (with the date and the GPU)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="shorter CUDA runs (for a rerun)")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no shard-writing bars between the summary lines

    work = args.keep or Path(tempfile.mkdtemp(prefix="steinsplat-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []

    def run(fn: Callable[[], Result], name: str) -> Result:
        t = time.perf_counter()
        try:
            res = fn()
        except subprocess.TimeoutExpired as exc:
            res = Result(name, "FAIL", f"timed out after {exc.timeout:.0f} s")
        except Exception as exc:  # a check that breaks is a failure of that check, not of the script
            res = Result(name, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
        res.seconds = time.perf_counter() - t
        results.append(res)
        print(res.line(), flush=True)
        return res

    cuda = run(check_cuda, "cuda").status == "PASS"
    run(lambda: check_kernels(cuda), "gsplat-kernels")
    run(lambda: check_parity(cuda), "parity")
    run(lambda: check_cuda_tests(cuda), "cuda-tests")
    model = tiny_sd(work / "tiny-sd")
    if cuda:
        run(lambda: check_tiny_sd(model, work, "cuda", args.quick), "tiny-sd-cuda")
    else:
        results.append(Result("tiny-sd-cuda", "SKIP", "no CUDA device: the fp16 run through the real gsplat needs one"))
        print(results[-1].line(), flush=True)
        run(lambda: check_tiny_sd(model, work, "cpu", args.quick), "tiny-sd-cpu")
    run(lambda: check_sd_speed(model, work, cuda), "sd-speed")
    run(lambda: check_shapeworld(cuda, work, args.quick), "shapeworld-cuda")

    failed = [r.name for r in results if r.status == "FAIL"]
    skipped = [r.name for r in results if r.status == "SKIP"]
    gpu = next((r.data.get("gpu") for r in results if r.name == "cuda" and r.data.get("gpu")), "no GPU")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{stamp} · {gpu} · {platform.node()}: {len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed"
          f"{' (' + ', '.join(failed) + ')' if failed else ''}, {len(skipped)} skipped"
          f"{' (' + ', '.join(skipped) + ')' if skipped else ''}; work folder {work}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": stamp, "gpu": gpu, "results": [asdict(r) for r in results]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
