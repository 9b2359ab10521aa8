"""The exporters' atomic writes: steinsplat/atomic.py's, with its `WriteError` raised as an `ExportError`
(its `DiskWriteError` as an `ExportWriteError`, still an OSError with its errno), so that every failure
of an export is one of export/errors.py's. Everything else writes through steinsplat.atomic directly;
the names below are also importable from here as before."""

from __future__ import annotations

import os  # noqa: F401 (tests patch os's functions through this module, as before)
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .. import atomic
from ..atomic import DiskWriteError, PathLike, WriteError, ensure_writable_folder  # noqa: F401 (re-exported)
from .errors import ExportError, ExportWriteError


def as_export_error(exc: WriteError) -> ExportError:
    """The same failure and message as an ExportError (an ExportWriteError, errno kept, for a DiskWriteError)."""
    if isinstance(exc, DiskWriteError):
        err = ExportWriteError(str(exc))
        err.errno = exc.errno
        return err
    return ExportError(str(exc))


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """`steinsplat.atomic.atomic_open`, raising ExportError."""
    try:
        with atomic.atomic_open(path, mode) as f:
            yield f
    except WriteError as exc:
        raise as_export_error(exc) from exc.__cause__


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """`steinsplat.atomic.atomic_path`, raising ExportError."""
    try:
        with atomic.atomic_path(path) as tmp:
            yield tmp
    except WriteError as exc:
        raise as_export_error(exc) from exc.__cause__


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`), raising ExportError."""
    with atomic_open(path, "wb") as f:
        f.write(data)
