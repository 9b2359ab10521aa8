"""Export and import of Gaussians: the reference 3DGS PLY, antimatter15's `.splat`, Niantic's `.spz` and
glTF with Khronos's KHR_gaussian_splatting (`NAME.splats.glb`; any `.glb` with such splats is read).

`export_gaussians` / `load_gaussians` choose the format by the file extension;
all writes are atomic, and every malformed file raises an `ExportError`
subclass whose message names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..gaussians import Gaussians
from .atomic import atomic_open, atomic_write_bytes
from .axes import UP_AXES, UP_LABELS, from_up, to_up, up_rotation
from .errors import ExportError, GltfError, PlyError, SplatError, SpzError
from .gltf_splats import read_gltf_splats, write_gltf_splats
from .ply import read_ply, read_ply_up, write_ply
from .splat import read_splat, write_splat
from .spz import read_spz, write_spz

__all__ = [
    "ExportError",
    "GltfError",
    "PlyError",
    "SplatError",
    "SpzError",
    "atomic_open",
    "atomic_write_bytes",
    "export_gaussians",
    "load_gaussians",
    "read_gltf_splats",
    "read_ply",
    "read_splat",
    "read_spz",
    "write_gltf_splats",
    "write_ply",
    "write_splat",
    "write_spz",
    "SUPPORTED_EXTENSIONS",
    "UP_AXES",
    "file_up_axis",
]

_WRITERS = {".ply": write_ply, ".splat": write_splat, ".spz": write_spz, ".splats.glb": write_gltf_splats}
_READERS = {".ply": read_ply, ".splat": read_splat, ".spz": read_spz, ".splats.glb": read_gltf_splats,
            ".glb": read_gltf_splats}
SUPPORTED_EXTENSIONS = tuple(_WRITERS)


def _extension(path: str | Path, action: str) -> str:
    name = Path(path).name.lower()
    if name.endswith(".splats.glb"):
        return ".splats.glb"
    ext = Path(path).suffix.lower()
    table = _READERS if action == "load" else _WRITERS
    if ext == ".glb" and action != "load":
        raise ExportError(
            f"cannot {action} '{path}': a .glb is a mesh in steinsplat (--mesh); to write the Gaussians as glTF "
            f"(KHR_gaussian_splatting) name the file '{Path(path).with_suffix('')}.splats.glb'"
        )
    if ext not in table:
        raise ExportError(
            f"cannot {action} '{path}': unsupported extension '{ext or '(none)'}'; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return ext


def export_gaussians(path: str | Path, gaussians: Gaussians, up: Optional[str] = None, **kw: Any) -> int:
    """Write `gaussians` to `path` (.ply, .splat, .spz or .splats.glb, by extension); returns the number written.

    up: the file's up axis (`axes.py`): "z" (ours, the default), "y" or "-y"; the Gaussians are rotated into it,
    and a PLY records it in its header (`comment up +Y`; .splat and .spz have no place for it). glTF is +Y up by
    definition: .splats.glb is always written +Y up and takes up=None or "y". Other keyword arguments go to the
    writer (e.g. `sh_degree=3` for PLY).
    """
    ext = _extension(path, "export to")
    if up is not None:
        up_rotation(up)  # a clear error for an unknown value
    if ext == ".splats.glb":
        if up not in (None, "y"):
            raise ExportError(f"cannot export to '{path}' with up {up!r}: glTF is +Y up by definition (steinsplat "
                              "rotates its +Z up to it); --up applies to .ply, .splat and .spz")
        return write_gltf_splats(path, gaussians, **kw)
    if up is not None and up != "z":
        gaussians = to_up(gaussians, up)
    if ext == ".ply" and up is not None:
        kw["up"] = up
    return _WRITERS[ext](path, gaussians, **kw)


def load_gaussians(path: str | Path, **kw: Any) -> Gaussians:
    """Read Gaussians from a .ply, .splat, .spz or .glb (KHR_gaussian_splatting) file, by extension, in our +Z-up
    world: a PLY whose header records another up axis (`comment up +Y`) and any glTF are rotated back."""
    ext = _extension(path, "load")
    g = _READERS[ext](path, **kw)
    if ext == ".ply":
        up = read_ply_up(path)
        if up is not None:
            g = from_up(g, up)
    return g


def file_up_axis(path: str | Path) -> str:
    """What a splat file says about its up axis, in words (for `steinsplat info`)."""
    ext = _extension(path, "load")
    if ext in (".glb", ".splats.glb"):
        return "+Y (glTF's convention; read back into steinsplat's +Z up)"
    if ext == ".ply":
        up = read_ply_up(path)
        if up is not None:
            return f"{UP_LABELS[up]} (its header says so; read back into steinsplat's +Z up)"
        return "not recorded: +Z if steinsplat wrote it without --up (3DGS captures are usually -Y up)"
    return (f"not recorded ({ext} has no field for it): +Z if steinsplat wrote it without --up, else as --up said "
            "(3DGS captures are usually -Y up)")
