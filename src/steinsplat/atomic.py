"""Atomic file writes: write to a temporary file in the target folder, then `os.replace`.

A reader never sees a half-written file, and if writing fails the previous file
(if any) is left exactly as it was and the temporary file is removed. Used by every writer of the
package (checkpoints, run records, batch summaries, model folders, the benchmarks' reports); the
exporters use it through export/atomic.py, which words its errors as `ExportError`s.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union


PathLike = Union[str, os.PathLike]

_MODES = {"wb": "wb", "w": "w", "wt": "w"}


class WriteError(ValueError):
    """A file could not be written (its folder cannot be made or written, a folder is in the way, the new
    file could not replace the old one); the message names the file and what to do."""


class DiskWriteError(WriteError, OSError):
    """Writing failed part-way (a full disk, a file-size limit, an I/O error): a WriteError with a message
    that says what to do, and still the OSError it was (`errno` kept) for callers that catch those."""


def _prepare_folder(path: Path) -> Path:
    """Create the parent folder of `path` (with parents); WriteError naming `path` if impossible."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(
            f"cannot create the folder '{parent}' for '{path}': {e.strerror or e}. "
            "Choose an output path in a writable folder."
        ) from e
    if not parent.is_dir():
        raise WriteError(f"cannot write '{path}': '{parent}' is not a folder. Choose another output path.")
    return parent


def _create_temp(path: Path, parent: Path, keep_suffix: bool = False) -> tuple[int, Path]:
    """Create a new, empty temporary file next to `path`; returns (fd, temp path).
    keep_suffix: name it `.{stem}.{random}.tmp{suffix}` (for writers that pick the format by extension).

    `os.open(..., 0o666)` lets the umask choose the permissions, as for a normal file.
    """
    for _ in range(100):
        tok = secrets.token_hex(6)
        tmp = parent / (f".{path.stem}.{tok}.tmp{path.suffix}" if keep_suffix else f".{path.name}.{tok}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise WriteError(
                f"cannot write '{path}': the folder '{parent}' is not writable ({e.strerror or e}). "
                "Choose an output path in a writable folder or fix its permissions."
            ) from e
        return fd, tmp
    raise WriteError(f"cannot create a temporary file next to '{path}' (too many name collisions)")


def _remove_quietly(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _start(path: Path, keep_suffix: bool) -> tuple[int, Path]:
    """Refuse a folder in the way, create the parent folders, create the temporary file."""
    if path.is_dir():
        raise WriteError(f"cannot write '{path}': it is a folder. Give a file name, e.g. '{path / 'out.ply'}'.")
    return _create_temp(path, _prepare_folder(path), keep_suffix=keep_suffix)


def _write_error(path: Path, e: OSError) -> DiskWriteError:
    err = DiskWriteError(f"cannot write '{path}': {e.strerror or e}; nothing was replaced "
                           "(free some space, or choose another folder)")
    err.errno = e.errno
    return err


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"cannot replace '{path}' with the new file: {e.strerror or e}") from e


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open `path` for writing, atomically.

    Yields a file object on a temporary file in the same folder; on normal exit
    the data is flushed, fsynced and moved over `path` with `os.replace`. If the
    body raises, the temporary file is deleted, `path` is untouched, and the
    exception propagates. Parent folders are created. `mode` is "wb" or "w"
    (text, UTF-8).
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_open: mode must be one of {sorted(_MODES)}, got {mode!r}")
    path = Path(path)
    fd, tmp = _start(path, keep_suffix=False)
    try:
        kwargs = {} if "b" in _MODES[mode] else {"encoding": "utf-8", "newline": ""}
        try:
            with os.fdopen(fd, _MODES[mode], **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk, a file-size limit, an I/O error
            raise _write_error(path, e) from None
        _replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path next to `path` for libraries that write by file name (safetensors, open3d,
    imageio); moved over `path` when the body returns, removed if it raises.

    The temporary name keeps `path`'s extension (`.{stem}.{random}.tmp{suffix}`), because those
    libraries pick the format from it. The body must create the file; a missing or empty file is a
    WriteError and `path` is left untouched.
    """
    path = Path(path)
    fd, tmp = _start(path, keep_suffix=True)
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as e:
            raise _write_error(path, e) from None
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise WriteError(f"writing '{path}' produced no data (the writer reported no error); nothing was replaced")
        _replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def ensure_writable_folder(folder: PathLike) -> Path:
    """Create `folder` (and its parents) and check that a file can be made in it, by making and removing an
    empty probe file with a random name; raises the OSError that says why not (callers word it as their flag)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".steinsplat-write-test-{os.getpid()}-{secrets.token_hex(4)}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder
