"""What a generation run may write over and resume from, decided before any model loads.

    check_distinct_outputs   --out, --mesh and --video name three different files
    check_run_folder         a run folder (run.json, checkpoints/) belongs to one run: another
                             prompt or output name there is refused, not overwritten
    check_checkpoint_state   a checkpoint's metadata and tensor shapes fit this run (read from the
                             header only), so a bad one is refused in a second, not after loading
                             the models and not by training from a step of -5 or 2.5

Every refusal is a `RunError` (a ValueError) whose message says what to do; `generate` turns it
into its GenerationError.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from .naming import short

RUN_FILE = "run.json"
MAX_RUN_FILE_BYTES = 64 << 20  # a run.json with a long history is a few MB


class RunError(ValueError):
    """A run that would overwrite another's files or resume from a state that cannot be its own."""


# ---------------------------------------------------------------------------- outputs
def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_distinct_outputs(paths: dict[str, Optional[Path]]) -> None:
    """{flag: path}: refuse two flags naming one file (the second write would replace the first)."""
    given = [(flag, p) for flag, p in paths.items() if p is not None]
    for i, (fa, a) in enumerate(given):
        for fb, b in given[i + 1:]:
            if _same_file(a, b):
                raise RunError(f"{fa} and {fb} both name '{b}': the second would replace the first; "
                               f"give each its own file (e.g. {fb} {b.with_name(b.stem + '-' + fb.strip('-') + b.suffix)})")


# ---------------------------------------------------------------------------- run folders
def _run_record(folder: Path) -> Optional[dict[str, Any]]:
    from .export.readable import is_regular

    p = folder / RUN_FILE
    if not is_regular(p):
        return None
    try:
        with open(p, "rb") as f:
            rec = json.loads(f.read(MAX_RUN_FILE_BYTES))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _recorded_out(rec: dict[str, Any]) -> Optional[str]:
    cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    outs = rec.get("outputs") if isinstance(rec.get("outputs"), dict) else {}
    out = cfg.get("out") or outs.get("splats")
    return Path(str(out)).name if out else None


def owner_of(folder: Path) -> Optional[tuple[str, Optional[str], str]]:
    """(prompt, splat file name or None, where it was read) of the run that owns `folder`, if any."""
    rec = _run_record(folder)
    if rec is not None and isinstance(rec.get("prompt"), str):
        return rec["prompt"], _recorded_out(rec), f"{folder / RUN_FILE}"
    from .checkpoint import CheckpointError, read_meta

    ckpts = sorted((folder / "checkpoints").glob("step_*.safetensors"), reverse=True)
    for c in ckpts[:3]:
        try:
            meta = read_meta(c)
        except CheckpointError:
            continue
        opts = meta.get("options") if isinstance(meta.get("options"), dict) else {}
        run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
        if isinstance(opts.get("prompt"), str):
            return opts["prompt"], run.get("out"), str(c)
    return None


def check_run_folder(folder: Path, prompt: str, out_name: str, resume: Optional[Path] = None) -> None:
    """Refuse to write into a folder whose run.json or checkpoints are another run's (another prompt,
    or the same prompt written to another splat file). Resuming from this folder is its own run
    going on: its outputs may change (the prompt is checked against the checkpoint elsewhere)."""
    owner = owner_of(folder)
    if owner is None:
        return
    their_prompt, their_out, where = owner
    if resume is not None and _inside(resume, folder) and their_prompt == prompt:
        return
    if their_prompt == prompt and (their_out is None or their_out == out_name):
        return
    theirs = f"{short(their_prompt, 50)!r}" + (f" -> {their_out}" if their_out else "")
    raise RunError(f"'{folder}' holds another run ({theirs}, see {where}); a run folder belongs to one run: give "
                   f"this one its own folder, e.g. GenerateConfig.out=\"{folder / Path(out_name).stem / out_name}\"")


def _inside(path: Path, folder: Path) -> bool:
    try:
        p, f = path.resolve(), folder.resolve()
    except OSError:
        return False
    return p == f or f in p.parents


# ---------------------------------------------------------------------------- checkpoints
GAUSSIAN_SHAPES = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3)}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_checkpoint_state(path: Path, steps: int) -> int:
    """The checkpoint's step if its metadata and tensors can be this run's state (header only); else RunError."""
    from safetensors import safe_open

    from .checkpoint import CheckpointError, read_meta

    where = f"GenerateConfig.resume '{path}'"
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        raise RunError(f"GenerateConfig.resume: {exc}") from None
    step = meta.get("step")
    if not _is_int(step) or step < 0:
        raise RunError(f"{where}: the checkpoint's step is {str(step)[:30]!r}, not a whole number >= 0; "
                       "the file is damaged, resume from another checkpoint or start afresh")
    if step > steps:
        raise RunError(f"{where}: the checkpoint is at step {step:,}, beyond GenerateConfig.steps {steps:,}; give GenerateConfig.steps={step} "
                       "or more to continue it (exactly that: only the exports)")
    skipped = meta.get("skipped", 0)
    if not _is_int(skipped) or not 0 <= skipped <= step:
        raise RunError(f"{where}: the checkpoint's 'skipped' count {str(skipped)[:30]!r} is not a whole number "
                       f"from 0 to its step {step}; the file is damaged")
    for key, kind in (("history", list), ("densify_history", list), ("densify_scalars", dict), ("options", dict),
                      ("run", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise RunError(f"{where}: the checkpoint's '{key}' is not a {kind.__name__}; the file is damaged")
    for h in meta.get("history", []):
        if not isinstance(h, dict) or not _is_int(h.get("step")) or not isinstance(h.get("loss"), (int, float, type(None))):
            raise RunError(f"{where}: the checkpoint's history holds an entry that is not a step record; "
                           "the file is damaged")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # SafetensorError, OSError
        raise RunError(f"{where}: the tensors cannot be read ({str(exc).splitlines()[0][:120]})") from None
    n = None
    for name, tail in GAUSSIAN_SHAPES.items():
        shape = shapes.get(f"gaussians.{name}")
        if shape is None:
            raise RunError(f"{where}: the checkpoint holds no 'gaussians.{name}'; it is not a generation checkpoint")
        n = shape[0] if n is None and shape else n
        if len(shape) != 1 + len(tail) or shape[1:] != tail or shape[0] != n:
            raise RunError(f"{where}: 'gaussians.{name}' has shape {list(shape)}, not [{n}{''.join(f', {t}' for t in tail)}]; "
                           "the checkpoint is damaged or of another program")
    shn = shapes.get("gaussians.shN")
    if shn is not None and (len(shn) != 3 or shn[0] != n or shn[2] != 3 or (shn[1] + 1) not in (1, 4, 9, 16)):
        raise RunError(f"{where}: 'gaussians.shN' has shape {list(shn)}, not [{n}, K, 3] with K+1 in 1, 4, 9, 16")
    for key, shape in shapes.items():  # Adam's moments are shaped like their parameter
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "optim" and parts[2] in ("exp_avg", "exp_avg_sq"):
            want = shapes.get(f"gaussians.{parts[1]}")
            if want is not None and shape != want:
                raise RunError(f"{where}: '{key}' has shape {list(shape)}, not that of its parameter {list(want)}; "
                               "the checkpoint is damaged")
    for name in ("rng.generator", "rng.torch"):
        if name not in shapes or len(shapes[name]) != 1:
            raise RunError(f"{where}: the checkpoint holds no valid '{name}' (the random state); it is damaged")
    return step


def check_learning_rates(optim: Any) -> None:
    """Every lr_* of the optimiser config a finite number >= 0 (NaN was found only after the whole run)."""
    import dataclasses

    for f in dataclasses.fields(optim):
        if f.name.startswith("lr_"):
            v = getattr(optim, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise RunError(f"GenerateConfig.optim.{f.name} must be a finite number >= 0, got {v}")
