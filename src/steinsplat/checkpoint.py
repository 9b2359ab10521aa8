"""One checkpoint format for generation and for training the embedded models.

A checkpoint is ONE safetensors file: the tensors, and a JSON document (step, histories, the
options the run was made with ...) in the file's string metadata under `steinsplat.meta`. It is
written atomically (a temporary file, then a rename), so a kill at any moment leaves either the
previous checkpoint or the new one, never half of each. Reading never unpickles anything.

Older checkpoints (weights in `X.safetensors`, the JSON beside it in `X.json`) still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from torch import Tensor

META_KEY = "steinsplat.meta"
FORMAT_KEY = "steinsplat.format"
FORMAT = "checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a readable steinsplat checkpoint; the message names the file."""


def write_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` + `meta` (JSON-able) to `path` atomically; returns `path`."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from .atomic import WriteError, atomic_path

    path = Path(path)
    metadata = {META_KEY: json.dumps(meta, separators=(",", ":")), FORMAT_KEY: FORMAT}
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # a full disk, a file-size limit: safetensors' IoError
            raise WriteError(f"cannot write the checkpoint '{path}': {short_reason(exc)}") from None
    return path


def short_reason(exc: BaseException) -> str:
    """What went wrong, in a few words: the OS's own message where there is one (inside safetensors' IoError too)."""
    import re

    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    m = re.search(r'message: "([^"]+)"', text)
    if m:
        return m.group(1)
    return _first_line(exc)[:200]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON document of a checkpoint, read from its header only (fast: no tensor is loaded).

    The header is checked against the file's size, so a truncated file is refused here; a FIFO or a
    device is refused before it is opened by name (it would block or never end)."""
    from safetensors import SafetensorError, safe_open

    from .export.readable import check_regular

    path = Path(path)
    check_regular(path, f"'{path}'", CheckpointError)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"'{path}' is not a readable steinsplat checkpoint ({_first_line(exc)})") from None
    if META_KEY in metadata:
        try:
            meta = json.loads(metadata[META_KEY])
        except ValueError:
            raise CheckpointError(f"'{path}': the checkpoint's metadata is not valid JSON") from None
    else:  # the older two-file layout
        beside = path.with_suffix(".json")
        try:
            meta = json.loads(beside.read_text())
        except (OSError, ValueError):
            raise CheckpointError(f"'{path}' holds tensors but no steinsplat checkpoint metadata "
                                  f"(and no readable '{beside.name}' beside it)") from None
        step_in_weights = metadata.get("step")
        if step_in_weights is not None and str(meta.get("step")) != step_in_weights:
            raise CheckpointError(f"'{path}': weights at step {step_in_weights} but '{beside.name}' at step "
                                  f"{meta.get('step')} (the save was cut between its two files)")
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"'{path}': the checkpoint's metadata has no step")
    meta["_tensor_names"] = keys
    return meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta) of a checkpoint; CheckpointError if it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path)
    meta.pop("_tensor_names", None)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"'{path}' is not a readable steinsplat checkpoint ({_first_line(exc)})") from None
    return tensors, meta


def newest_intact(candidates: Iterable[Path]) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """The newest (last in sort order) candidate whose header reads, and the (path, reason) of
    newer ones that were skipped because they do not."""
    skipped: list[tuple[Path, str]] = []
    for p in sorted(candidates, reverse=True):
        try:
            read_meta(p)
            return p, skipped
        except CheckpointError as exc:
            skipped.append((p, str(exc)))
    return None, skipped


def prune(paths: Iterable[Path], keep: int) -> None:
    """Delete all but the `keep` newest of `paths` (and their old-layout JSON files)."""
    for old in sorted(paths)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
