"""The reference 3D Gaussian Splatting PLY (as written by INRIA's `gaussian-splatting`).

Layout: `binary_little_endian 1.0`, one `vertex` element with float32 properties

    x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3

holding raw parameters: logit opacity, log scales, quaternion w x y z as stored,
zero normals, and `f_rest` channel-major (all K-1 red coefficients, then green,
then blue). Both directions go through plyfile. Before plyfile reads a file,
`ply_guard.check_ply` checks its header and sizes (a hostile file must fail
with one clear `PlyError`, not a huge allocation); the reader accepts other
tools' property orders, extra properties, other scalar types, either byte order
and elements before or after the vertices.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import torch
from numpy.lib.recfunctions import structured_to_unstructured
from plyfile import PlyData, PlyElement, PlyParseError, PlyProperty

from ..gaussians import MAX_SH_DEGREE, Gaussians, num_sh_bases
from .atomic import PathLike, atomic_open
from .errors import ExportError, PlyError
from .ply_guard import REQUIRED, check_ply
from .readable import open_regular

# ---------------------------------------------------------------------------- writing


def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names of the reference 3DGS PLY for `sh_degree`, in file order."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _vertex_element(num: int, sh_degree: int) -> PlyElement:
    return PlyElement("vertex", [PlyProperty(name, "f4") for name in ply_property_names(sh_degree)], num)


def ply_header(num: int, sh_degree: int) -> bytes:
    """The header bytes plyfile (and so INRIA's implementation) writes for `num` vertices of `sh_degree`."""
    return (PlyData([_vertex_element(num, sh_degree)], byte_order="<").header + "\n").encode("ascii")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _sh_rest(shN: np.ndarray, sh_degree: int) -> np.ndarray:
    """[N, K-1, 3] -> [N, K'-1, 3] for the target degree: zero-pad or truncate the bands."""
    k_out = num_sh_bases(sh_degree) - 1
    n, k_in, _ = shN.shape
    if k_out <= k_in:
        return shN[:, :k_out, :]
    return np.concatenate([shN, np.zeros((n, k_out - k_in, 3), np.float32)], axis=1)


def _ply_rows(gaussians: Gaussians, sh_degree: int) -> np.ndarray:
    """All vertex values in file order as a C-contiguous float32 matrix [N, P]."""
    s = gaussians.splats
    n = len(gaussians)
    rest = _sh_rest(_numpy(s["shN"]), sh_degree)  # [N, K-1, 3]
    f_rest = rest.transpose(0, 2, 1).reshape(n, 3 * rest.shape[1])  # [N, 3*(K-1)], channel-major
    cols = [
        _numpy(s["means"]),  # [N, 3]
        np.zeros((n, 3), np.float32),  # normals
        _numpy(s["sh0"]).reshape(n, 3),  # [N, 3]
        f_rest,
        _numpy(s["opacities"]).reshape(n, 1),  # [N, 1]
        _numpy(s["scales"]),  # [N, 3]
        _numpy(s["quats"]),  # [N, 4]
    ]
    return np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32)


def _drop_nonfinite(rows: np.ndarray, what: str) -> np.ndarray:
    """Remove rows [N, P] holding NaN/inf, with a warning saying how many of how many."""
    keep = np.isfinite(rows).all(axis=1)  # [N]
    dropped = int(rows.shape[0] - keep.sum())
    if dropped:
        warnings.warn(
            f"{what}: dropped {dropped} of {rows.shape[0]} Gaussians with non-finite values (NaN or inf)",
            RuntimeWarning,
            stacklevel=3,
        )
        rows = rows[keep]
    return rows


UP_LABELS = {"z": "+Z", "y": "+Y", "-y": "-Y"}  # the header line `comment up +Y` of a file written with --up y


def _write_array(f: BinaryIO, vertices: np.ndarray, comments: Optional[list[str]] = None) -> None:
    """Write the vertex records [M] (one little-endian float32 field per property) as a PLY, through plyfile."""
    PlyData([PlyElement.describe(vertices, "vertex")], byte_order="<", comments=comments or []).write(f)


def read_ply_up(path: PathLike) -> Optional[str]:
    """The up axis a PLY's header records ("z", "y" or "-y" from a line `comment up +Y`), or None if it says none.

    Only the header is read (at most 64 kB); a file that is not a PLY gives None.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    end = head.find(b"end_header")
    for line in head[: end if end >= 0 else 0].decode("ascii", "replace").splitlines():
        words = line.strip().split()
        if len(words) == 3 and words[:2] == ["comment", "up"]:
            for key, label in UP_LABELS.items():
                if words[2].upper() == label:
                    return key
    return None


def write_ply(path: PathLike, gaussians: Gaussians, sh_degree: Optional[int] = None, up: Optional[str] = None) -> int:
    """Write `gaussians` as a reference 3DGS PLY; returns the number of Gaussians written.

    sh_degree: the SH degree to write (0..3); default the Gaussians' own. Missing
    bands are written as zeros (e.g. degree 3 for Unity's importer), extra ones
    are dropped. Rows with NaN/inf are left out with a warning; if none is left,
    ExportError (an empty export is useless). The file is written atomically.
    up: record this up axis ("z", "y", "-y") in a header line `comment up +Y`; the Gaussians must already be in
    that convention (`export_gaussians(..., up=...)` rotates them). None: no line (INRIA's bytes exactly).
    """
    if up is not None and up not in UP_LABELS:
        raise ExportError(f"cannot write '{path}': up must be one of {', '.join(UP_LABELS)}, got {up!r}")
    degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ExportError(f"cannot write '{path}': sh_degree must be 0..{MAX_SH_DEGREE}, got {sh_degree}")
    rows = _drop_nonfinite(_ply_rows(gaussians, degree), f"write_ply('{path}')")  # [M, P]
    if rows.shape[0] == 0:
        raise ExportError(f"nothing to write to '{path}': no Gaussians with finite values (the file was not written)")
    names = ply_property_names(degree)
    vertices = rows.astype("<f4", copy=False).view(np.dtype([(n, "<f4") for n in names])).reshape(-1)  # [M]
    with atomic_open(path, "wb") as f:
        if up is None:
            _write_array(f, vertices)
        else:
            _write_array(f, vertices, [f"up {UP_LABELS[up]}"])
    return len(vertices)


# ---------------------------------------------------------------------------- reading


def _vertex_rows(vertex: np.ndarray, rest_names: list[str]) -> np.ndarray:
    """plyfile's vertex records [N] -> float32 matrix [N, 14 + len(rest)] in `REQUIRED` + f_rest order."""
    names = REQUIRED + rest_names
    with np.errstate(over="ignore", invalid="ignore"):  # doubles beyond float32 become inf, dropped later
        return structured_to_unstructured(vertex[names], dtype=np.float32, copy=True)


def _gaussians_from_rows(rows: np.ndarray, n_rest: int) -> Gaussians:
    """Rows [N, 14 + 3(K-1)] (order of `REQUIRED` then channel-major f_rest) -> Gaussians."""
    n = rows.shape[0]
    t = torch.from_numpy(np.ascontiguousarray(rows))
    shN = t[:, 14:].reshape(n, 3, n_rest // 3).transpose(1, 2)  # [N, K-1, 3]
    # column slices are strided views; Gaussians makes each parameter contiguous (one copy)
    return Gaussians(
        means=t[:, 0:3],  # [N, 3]
        scales=t[:, 7:10],  # [N, 3]
        quats=t[:, 10:14],  # [N, 4]
        opacities=t[:, 6],  # [N]
        sh0=t[:, 3:6].unsqueeze(1),  # [N, 1, 3]
        shN=shN,
    )


def read_ply(path: PathLike, max_vertices: int = 50_000_000) -> Gaussians:
    """Load a 3DGS PLY (binary, either endianness, any property order) as CPU float32 Gaussians.

    The header and sizes are checked first (`ply_guard.check_ply`), then plyfile reads the
    file. Raises `PlyError` naming the file for anything malformed; rows with NaN/inf are
    dropped with a warning.
    """
    path = Path(path)
    where = f"'{path}'"
    with open_regular(path, where, PlyError) as f:
        checked = check_ply(f, os.fstat(f.fileno()).st_size, max_vertices, where)
        f.seek(0)
        try:
            # read, not memory-mapped: a file cut or rewritten while it is read must end in PlyError, and
            # through a map it ends the process with SIGBUS
            data = PlyData.read(f, mmap=False)
        except (PlyParseError, ValueError) as e:
            raise PlyError(f"{where}: plyfile cannot read it ({e}); the file is corrupt, export it again") from None
    rows = _vertex_rows(data["vertex"].data, checked.rest_names)
    rows = _drop_nonfinite(rows, f"read_ply({where})")
    return _gaussians_from_rows(rows, len(checked.rest_names))
