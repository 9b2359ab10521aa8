"""Batch generation over a prompt list: parsing, output names, resume, isolation, summary; Ray optional.

Prompt file format (one job per line):
    # comments and blank lines are skipped
    a red cube
    a blue sphere | --seed 3 --steps 400
Text after `|` are per-prompt command-line options, parsed by the caller's option parser.

Before the first job runs, `check_jobs` checks every line (the caller's check: the prompt for the prior,
the options, the outputs) and that no two lines write one file, and reports every bad line at once
(`FILE:LINE: reason`); nothing runs until all are good.

Each job writes into `out_dir/<name>/` where <name> is a file-system-safe slug of the prompt
(with `-seed<N>` when options set a seed, and a numeric suffix when two lines give the same
name). A job is finished when its folder holds `run.json` with `"status": "ok"`: re-running the
batch skips it. A failing job is recorded (`status: failed`, the error message) and the batch
goes on. Ctrl-C or SIGTERM stops the batch after the current step of the current job, whose
checkpoint the next run resumes (`status: interrupted` in its run.json until then). At the end:
a summary table and `summary.json` (written atomically): per job its name, prompt, status, seconds, error,
`outputs` (the files, by kind) and `metrics`.
"""

from __future__ import annotations

import json
import shlex
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .atomic import atomic_write_bytes
from .naming import slugify  # also imported from here

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


class BatchError(ValueError):
    pass


@dataclass
class Job:
    line: int  # 1-based line number in the prompt file
    prompt: str
    options: list[str]  # per-prompt command-line options (after "|")
    name: str = ""  # output folder name (unique within the batch)


@dataclass
class JobResult:
    name: str
    prompt: str
    status: str  # "ok", "failed" or "skipped" (finished in an earlier run)
    seconds: float = 0.0
    error: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)  # the files written, by kind ({"splats": ..., "mesh": ...})
    metrics: Optional[dict[str, Any]] = None  # the generator's final metrics, if it reports any


MAX_PROMPT_FILE_BYTES = 16 << 20  # a prompt list of 16 MB is ~100,000 prompts; more is the wrong file


def parse_prompt_file(path: str | Path) -> list[Job]:
    from .export.readable import read_regular

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise BatchError(f"prompt file '{path}' does not exist")
    try:  # regular files only: a FIFO or /dev/zero would block or never end
        data = read_regular(path, f"prompt file '{path}'", BatchError, limit=MAX_PROMPT_FILE_BYTES, what="prompt list")
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of the first prompt
    except UnicodeDecodeError:
        raise BatchError(f"prompt file '{path}' is not UTF-8 text") from None
    jobs: list[Job] = []
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompt, _, opts = line.partition("|")
        prompt = prompt.strip()
        if not prompt:
            raise BatchError(f"{path}:{i}: options without a prompt: {raw!r}")
        try:
            options = shlex.split(opts)
        except ValueError as exc:
            raise BatchError(f"{path}:{i}: cannot split the options ({exc}): {opts.strip()!r}") from None
        jobs.append(Job(line=i, prompt=prompt, options=options))
    if not jobs:
        raise BatchError(f"prompt file '{path}' holds no prompt (blank lines and # comments are skipped)")
    assign_names(jobs)
    return jobs


def _seed_of(options: Sequence[str]) -> Optional[str]:
    for i, o in enumerate(options):
        if o == "--seed" and i + 1 < len(options):
            return options[i + 1]
        if o.startswith("--seed="):
            return o.split("=", 1)[1]
    return None


def assign_names(jobs: list[Job]) -> None:
    """Unique, stable folder names: slug of the prompt, -seedN if given, -2, -3 ... on collisions
    (a suffix that is some other line's own name is passed over: "a red cube" twice and then
    "a red cube 2" give a-red-cube, a-red-cube-2 and a-red-cube-2-2)."""
    bases = []
    for job in jobs:
        base = slugify(job.prompt)
        seed = _seed_of(job.options)
        if seed is not None:
            base += f"-seed{slugify(seed)}"
        bases.append(base)
    used: set[str] = set()
    for job, base in zip(jobs, bases):
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        job.name = name


def is_finished(folder: Path, prompt: Optional[str] = None) -> bool:
    """The folder holds a finished run (of `prompt`, when given: another prompt's run is not this job's)."""
    try:
        rec = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(rec, dict) or rec.get("status") != "ok":
        return False
    return prompt is None or rec.get("prompt") == prompt


# Runs one job into its folder; returns {"outputs": {kind: file}, "metrics": {...} or None}, or just {kind: file}.
Generator = Callable[[Job, Path], dict[str, Any]]
# Checks one job before anything runs (raises with a message saying what to do); returns the files it will
# write, {flag: path}, and may say a line about the job (through the callable it is given).
Checker = Callable[[Job, Path, Callable[[str], None]], dict[str, Path]]


def check_jobs(jobs: list[Job], out_dir: str | Path, check: Checker, source: str | Path) -> list[str]:
    """Check every job before the first one runs; every bad line is reported at once, as
    `SOURCE:LINE: reason` (a BatchError whose first line says how many, the others one line each), and two
    lines that would write one file are a bad line too. Returns the notes the checks said, `SOURCE:LINE: note`.
    Job folders the checks created are removed again while empty (and OUT_DIR too when a line is bad)."""
    out = Path(out_dir)
    problems: list[str] = []
    notes: list[str] = []
    writers: dict[Path, tuple[int, str]] = {}  # resolved file -> (line, flag) of the first line writing it
    made = [out / job.name for job in jobs if not (out / job.name).exists()]  # the checks may create them
    made_out = not out.exists()
    for job in jobs:
        where = f"{source}:{job.line}"
        try:
            files = check(job, out / job.name, lambda m, w=where: notes.append(f"{w}: {m}")) or {}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the check's own errors say what to do; anything else names its type
            text = str(exc).strip().splitlines()
            problems.append(f"{where}: {text[0] if text else type(exc).__name__}")
            continue
        for flag, path in files.items():
            key = Path(path).resolve()
            if key in writers:
                line, other = writers[key]
                problems.append(f"{where}: {flag} '{path}' is also line {line}'s {other}: give each line its own file")
            else:
                writers[key] = (job.line, flag)
    for folder in made + ([out] if problems and made_out else []):  # a job's folder appears when it runs
        try:
            folder.rmdir()  # only if still empty
        except OSError:
            pass
    if problems:
        n = len(problems)
        raise BatchError(f"{n} line{'s' if n > 1 else ''} of {source} cannot run (listed above); nothing was run: "
                         "fix them and run the batch again\n" + "\n".join(problems))
    return notes


def run_job(job: Job, folder: Path, generate: Generator) -> JobResult:
    """Run one job, never raising: failures become a `failed` result (and a run.json saying so)."""
    t0 = time.perf_counter()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        reported = generate(job, folder) or {}
        if isinstance(reported.get("outputs"), dict):  # {"outputs": files, "metrics": ...}
            files, metrics = reported["outputs"], reported.get("metrics")
        else:  # a plain {kind: file}
            files, metrics = reported, None
        res = JobResult(job.name, job.prompt, "ok", time.perf_counter() - t0, outputs=dict(files), metrics=metrics)
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM stops the batch; a rerun resumes this job's checkpoint
        checkpoint = getattr(exc, "checkpoint", None)
        record = {"prompt": job.prompt, "options": job.options, "status": "interrupted",
                  "checkpoint": str(checkpoint) if checkpoint else None, "seconds": time.perf_counter() - t0}
        try:
            atomic_write_bytes(folder / RUN_FILE, json.dumps(record, indent=2).encode())
        except OSError:
            pass
        raise
    except Exception as exc:  # one bad prompt must not stop the batch
        msg = f"{type(exc).__name__}: {exc}"
        res = JobResult(job.name, job.prompt, "failed", time.perf_counter() - t0, error=msg)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / "error.txt", traceback.format_exc().encode())
        except OSError:
            pass
    if res.status == "failed" or not (folder / RUN_FILE).exists():
        try:
            record = {"prompt": job.prompt, "options": job.options, "status": res.status, "error": res.error,
                      "seconds": res.seconds, "outputs": res.outputs, "metrics": res.metrics}
            atomic_write_bytes(folder / RUN_FILE, json.dumps(record, indent=2, default=str).encode())
        except OSError:
            pass
    return res


def run_batch(
    jobs: list[Job],
    out_dir: str | Path,
    generate: Generator,
    on_result: Optional[Callable[[JobResult, int, int], None]] = None,
) -> list[JobResult]:
    """Run the jobs one after another in this process (models loaded once by `generate`'s owner)."""
    out = Path(out_dir)
    results: list[JobResult] = []
    for k, job in enumerate(jobs):
        folder = out / job.name
        if is_finished(folder, job.prompt):
            res = JobResult(job.name, job.prompt, "skipped")
        else:
            res = run_job(job, folder, generate)
        results.append(res)
        if on_result is not None:
            on_result(res, k + 1, len(jobs))
    write_summary(out, results)
    return results


def run_batch_ray(
    jobs: list[Job],
    out_dir: str | Path,
    generate: Generator,
    address: Optional[str] = None,
    num_gpus_per_job: Optional[float] = None,
    on_result: Optional[Callable[[JobResult, int, int], None]] = None,
) -> list[JobResult]:
    """The same batch spread over a Ray cluster: one task per unfinished prompt.

    address: a running cluster ("auto", "ray://host:10001") or None for a local instance.
    num_gpus_per_job: default 1 when the cluster has GPUs, else 0. `generate` must be picklable
    (a module-level function or a callable object), and `out_dir` reachable by every worker
    (a shared file system) — on one machine it always is.
    """
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray: pip install 'steinsplat[ray]' (or pip install ray)") from None
    out = Path(out_dir).resolve()
    started_here = not ray.is_initialized()
    if started_here:
        kw = {} if address else {"num_cpus": max(1, (__import__("os").cpu_count() or 1))}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kw)
    try:
        if num_gpus_per_job is None:
            num_gpus_per_job = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        remote = ray.remote(num_gpus=num_gpus_per_job, max_retries=0)(run_job)
        results: dict[int, JobResult] = {}
        pending = {}
        for k, job in enumerate(jobs):
            folder = out / job.name
            if is_finished(folder, job.prompt):
                results[k] = JobResult(job.name, job.prompt, "skipped")
            else:
                pending[remote.remote(job, folder, generate)] = k
        done_count = len(results)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            try:
                results[k] = ray.get(ready[0])
            except Exception as exc:  # the worker itself died
                results[k] = JobResult(jobs[k].name, jobs[k].prompt, "failed", error=f"ray task failed: {exc}")
            done_count += 1
            if on_result is not None:
                on_result(results[k], done_count, len(jobs))
        ordered = [results[k] for k in range(len(jobs))]
    finally:
        if started_here:
            ray.shutdown()
    write_summary(out, ordered)
    return ordered


def write_summary(out_dir: Path, results: list[JobResult]) -> None:
    data = {
        "jobs": [asdict(r) for r in results],
        "counts": {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")},
    }
    atomic_write_bytes(Path(out_dir) / SUMMARY_FILE, json.dumps(data, indent=2, default=str).encode())


def summary_table(results: list[JobResult]):  # -> rich.table.Table
    from rich.table import Table

    t = Table(title="batch summary")
    for col in ("name", "status", "seconds", "error"):
        t.add_column(col)
    for r in results:
        colour = {"ok": "green", "failed": "red", "skipped": "dim"}[r.status]
        t.add_row(r.name, f"[{colour}]{r.status}[/{colour}]", f"{r.seconds:.1f}", r.error[:80])
    return t
