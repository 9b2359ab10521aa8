"""Opening an input file: regular files only, and never more than a stated size.

A FIFO blocks `open()` until someone writes to it, a device (`/dev/zero`) never ends, and a folder
is not a file: every reader of steinsplat (splat files, checkpoints, presets, prompt lists) opens
its input here, so each of them is refused at once with one line that says what was given.
The open itself is non-blocking (a FIFO opens at once and is then refused by its type).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Optional, Type

from .errors import ExportError

PathLike = str | os.PathLike


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: PathLike, where: Optional[str] = None, error: Type[Exception] = ExportError) -> BinaryIO:
    """`path` open for binary reading if it is a regular file; else `error` naming it and what it is."""
    where = where or f"'{path}'"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:
        raise error(f"{where} is a folder; give a file") from None
    except OSError as e:
        raise error(f"{where}: cannot open: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{where} is {_kind(mode)}, not a file; give a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_regular(path: PathLike, where: Optional[str] = None, error: Type[Exception] = ExportError) -> None:
    """`error` unless `path` is a regular file (for readers that open by name: safetensors)."""
    open_regular(path, where, error).close()


def read_regular(path: PathLike, where: Optional[str] = None, error: Type[Exception] = ExportError,
                 limit: Optional[int] = None, what: str = "file") -> bytes:
    """The bytes of the regular file `path`; `error` if it is larger than `limit` bytes (read no further)."""
    where = where or f"'{path}'"
    with open_regular(path, where, error) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise error(f"{where}: more than {limit:,} bytes, too large for a {what}; give the right file")
    return data


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
