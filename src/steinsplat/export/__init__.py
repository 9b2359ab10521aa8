"""Export and import of Gaussians: the reference 3DGS PLY, antimatter15's `.splat` and Niantic's `.spz`.

`export_gaussians` / `load_gaussians` choose the format by the file extension;
all writes are atomic, and every malformed file raises an `ExportError`
subclass whose message names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..gaussians import Gaussians
from .atomic import atomic_open, atomic_write_bytes
from .errors import ExportError, PlyError, SplatError, SpzError
from .ply import read_ply, write_ply
from .splat import read_splat, write_splat
from .spz import read_spz, write_spz

__all__ = [
    "ExportError",
    "PlyError",
    "SplatError",
    "SpzError",
    "atomic_open",
    "atomic_write_bytes",
    "export_gaussians",
    "load_gaussians",
    "read_ply",
    "read_splat",
    "read_spz",
    "write_ply",
    "write_splat",
    "write_spz",
    "SUPPORTED_EXTENSIONS",
]

_WRITERS = {".ply": write_ply, ".splat": write_splat, ".spz": write_spz}
_READERS = {".ply": read_ply, ".splat": read_splat, ".spz": read_spz}
SUPPORTED_EXTENSIONS = tuple(_WRITERS)


def _extension(path: str | Path, action: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in _WRITERS:
        raise ExportError(
            f"cannot {action} '{path}': unsupported extension '{ext or '(none)'}'; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return ext


def export_gaussians(path: str | Path, gaussians: Gaussians, **kw: Any) -> int:
    """Write `gaussians` to `path` (.ply, .splat or .spz, by extension); returns the number written.

    Keyword arguments go to the writer (e.g. `sh_degree=3` for PLY).
    """
    return _WRITERS[_extension(path, "export to")](path, gaussians, **kw)


def load_gaussians(path: str | Path, **kw: Any) -> Gaussians:
    """Read Gaussians from a .ply, .splat or .spz file, by extension."""
    return _READERS[_extension(path, "load")](path, **kw)
