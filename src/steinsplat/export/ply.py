"""The reference 3D Gaussian Splatting PLY (as written by INRIA's `gaussian-splatting`).

Layout: `binary_little_endian 1.0`, one `vertex` element with float32 properties

    x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3

holding raw parameters: logit opacity, log scales, quaternion w x y z as stored,
zero normals, and `f_rest` channel-major (all K-1 red coefficients, then green,
then blue). The reader parses the header itself (hostile files must fail with a
clear `PlyError`, not a huge allocation) and accepts other tools' property
orders, extra properties, other scalar types and trailing elements.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import torch

from ..gaussians import MAX_SH_DEGREE, Gaussians, num_sh_bases
from .atomic import PathLike, atomic_open
from .errors import ExportError, PlyError

# ---------------------------------------------------------------------------- writing


def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names of the reference 3DGS PLY for `sh_degree`, in file order."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def ply_header(num: int, sh_degree: int) -> bytes:
    """The exact header bytes INRIA's implementation writes (via plyfile) for `num` vertices."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {num}"]
    lines += [f"property float {name}" for name in ply_property_names(sh_degree)]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


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


def _write_array(f: BinaryIO, array: np.ndarray) -> None:
    """Write the raw bytes of a C-contiguous array (no copy)."""
    f.write(memoryview(array).cast("B"))


def write_ply(path: PathLike, gaussians: Gaussians, sh_degree: Optional[int] = None) -> int:
    """Write `gaussians` as a reference 3DGS PLY; returns the number of Gaussians written.

    sh_degree: the SH degree to write (0..3); default the Gaussians' own. Missing
    bands are written as zeros (e.g. degree 3 for Unity's importer), extra ones
    are dropped. Rows with NaN/inf are left out with a warning; if none is left,
    ExportError (an empty export is useless). The file is written atomically.
    """
    degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ExportError(f"cannot write '{path}': sh_degree must be 0..{MAX_SH_DEGREE}, got {sh_degree}")
    rows = _drop_nonfinite(_ply_rows(gaussians, degree), f"write_ply('{path}')")  # [M, P]
    if rows.shape[0] == 0:
        raise ExportError(f"nothing to write to '{path}': no Gaussians with finite values (the file was not written)")
    names = ply_property_names(degree)
    vertices = rows.astype("<f4", copy=False).view(np.dtype([(n, "<f4") for n in names])).reshape(-1)  # [M]
    with atomic_open(path, "wb") as f:
        f.write(ply_header(len(vertices), degree))
        _write_array(f, vertices)
    return len(vertices)


# ---------------------------------------------------------------------------- reading

_MAX_HEADER_BYTES = 1 << 20

_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}  # fmt: skip

_BYTE_ORDERS = {"binary_little_endian": "<", "binary_big_endian": ">"}

_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [
    f"rot_{i}" for i in range(4)
]

_F_REST = re.compile(r"f_rest_(\d+)$")


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]] = field(default_factory=list)  # (name, numpy type code)
    has_list: bool = False

    def dtype(self, order: str) -> np.dtype:
        return np.dtype([(n, order + t) for n, t in self.props])


@dataclass
class _Header:
    order: str  # "<" or ">"
    elements: list[_Element]
    data_start: int  # byte offset of the first element's data


def _header_lines(f: BinaryIO, where: str) -> tuple[list[str], int]:
    """Read the header lines (up to and including `end_header`) and the data offset."""
    head = f.read(_MAX_HEADER_BYTES)
    if not head:
        raise PlyError(f"{where}: the file is empty (0 bytes); export it again")
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    if first != b"ply":
        raise PlyError(f"{where}: not a PLY file (it does not start with the line 'ply')")
    lines: list[str] = []
    pos = 0
    while True:
        nl = head.find(b"\n", pos)
        if nl < 0:
            limit = " within the first 1 MiB" if len(head) >= _MAX_HEADER_BYTES else ""
            raise PlyError(f"{where}: the PLY header has no 'end_header' line{limit}; the file is truncated or corrupt")
        try:
            line = head[pos:nl].decode("ascii").strip()
        except UnicodeDecodeError:
            raise PlyError(
                f"{where}: the PLY header contains non-ASCII bytes before 'end_header'; the file is corrupt"
            ) from None
        pos = nl + 1
        lines.append(line)
        if line == "end_header":
            return lines, pos


def _parse_format(words: list[str], where: str) -> str:
    if len(words) != 3:
        raise PlyError(f"{where}: malformed format line '{' '.join(words)}'")
    fmt = words[1]
    if fmt == "ascii":
        raise PlyError(
            f"{where}: ASCII PLY is not supported; 3DGS tools write binary_little_endian. "
            "Convert the file to binary (e.g. plyfile: PlyData.read(p).text = False, then write)"
        )
    if fmt not in _BYTE_ORDERS:
        raise PlyError(f"{where}: unknown PLY format '{fmt}' (expected binary_little_endian or binary_big_endian)")
    return _BYTE_ORDERS[fmt]


def _parse_element(words: list[str], where: str) -> _Element:
    if len(words) != 3 or not re.fullmatch(r"\d+", words[2]):
        raise PlyError(f"{where}: malformed element line '{' '.join(words)}' (expected 'element <name> <count>')")
    return _Element(words[1], int(words[2]))


def _parse_property(words: list[str], elem: Optional[_Element], where: str) -> None:
    if elem is None:
        raise PlyError(f"{where}: 'property' line before any 'element' line")
    if len(words) >= 2 and words[1] == "list":
        if elem.name == "vertex":
            raise PlyError(
                f"{where}: the vertex element has a list property ('{' '.join(words)}'); "
                "3DGS PLYs have scalar vertex properties only"
            )
        elem.has_list = True
        return
    if len(words) != 3:
        raise PlyError(f"{where}: malformed property line '{' '.join(words)}' (expected 'property <type> <name>')")
    ptype, name = words[1], words[2]
    if ptype not in _PLY_TYPES:
        raise PlyError(
            f"{where}: unknown type '{ptype}' of property '{name}' in element '{elem.name}' "
            f"(known: {', '.join(sorted(_PLY_TYPES))})"
        )
    if any(name == n for n, _ in elem.props):
        raise PlyError(f"{where}: property '{name}' appears twice in element '{elem.name}'")
    elem.props.append((name, _PLY_TYPES[ptype]))


def _parse_header(f: BinaryIO, where: str) -> _Header:
    lines, data_start = _header_lines(f, where)
    order: Optional[str] = None
    elements: list[_Element] = []
    for line in lines[1:-1]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            order = _parse_format(words, where)
        elif words[0] == "element":
            elements.append(_parse_element(words, where))
        elif words[0] == "property":
            _parse_property(words, elements[-1] if elements else None, where)
        else:
            raise PlyError(f"{where}: unexpected PLY header line '{line}'")
    if order is None:
        raise PlyError(f"{where}: the PLY header has no 'format' line")
    return _Header(order, elements, data_start)


def _vertex_offset(header: _Header, where: str) -> tuple[_Element, int]:
    """The vertex element and the byte offset of its data (after fixed-size leading elements)."""
    offset = header.data_start
    for elem in header.elements:
        if elem.name == "vertex":
            return elem, offset
        if elem.has_list:
            raise PlyError(
                f"{where}: element '{elem.name}' with list properties comes before 'vertex'; "
                "such files are not supported (3DGS PLYs start with the vertex element)"
            )
        offset += elem.count * elem.dtype(header.order).itemsize
    raise PlyError(f"{where}: the PLY has no 'vertex' element; it does not hold Gaussians")


def _sh_rest_names(vertex: _Element, where: str) -> list[str]:
    """The f_rest_* names in index order, validated to be 3*((d+1)^2-1) for d in 0..3."""
    idx = sorted(int(m.group(1)) for n, _ in vertex.props if (m := _F_REST.match(n)))
    valid = [3 * (num_sh_bases(d) - 1) for d in range(MAX_SH_DEGREE + 1)]
    if len(idx) not in valid:
        raise PlyError(
            f"{where}: {len(idx)} f_rest_* properties; expected one of {valid} (SH degree 0..{MAX_SH_DEGREE})"
        )
    if idx != list(range(len(idx))):
        raise PlyError(f"{where}: the f_rest_* properties are not numbered 0..{len(idx) - 1}")
    return [f"f_rest_{i}" for i in idx]


def _check_required(vertex: _Element, where: str) -> None:
    present = {n for n, _ in vertex.props}
    missing = [n for n in _REQUIRED if n not in present]
    if missing:
        raise PlyError(
            f"{where}: not a 3DGS PLY, the vertex element lacks the properties {', '.join(missing)} "
            "(a plain point cloud cannot be loaded as Gaussians)"
        )


def _check_count(vertex: _Element, offset: int, itemsize: int, file_size: int, max_vertices: int, where: str) -> None:
    """Refuse counts above `max_vertices` or beyond what the file holds, before allocating anything."""
    if vertex.count > max_vertices:
        raise PlyError(
            f"{where}: the header claims {vertex.count} vertices, more than max_vertices={max_vertices}; "
            "raise max_vertices if the file is genuine"
        )
    needed = vertex.count * itemsize
    available = max(file_size - offset, 0)
    if needed > available:
        raise PlyError(
            f"{where}: truncated or corrupt, the header claims {vertex.count} vertices "
            f"({needed} bytes of vertex data) but only {available} bytes follow"
        )


def _rows_from_vertices(buf: bytes, vertex: _Element, order: str, rest_names: list[str]) -> np.ndarray:
    """Vertex bytes -> float32 matrix [N, 14 + len(rest)] in the order of `_REQUIRED` + f_rest."""
    names = _REQUIRED + rest_names
    n = vertex.count
    types = {t for _, t in vertex.props}
    with np.errstate(over="ignore", invalid="ignore"):  # doubles beyond float32 become inf, dropped later
        if len(types) == 1:  # the usual case: one scalar type, read as a matrix and gather columns
            position = {name: j for j, (name, _) in enumerate(vertex.props)}
            matrix = np.frombuffer(buf, dtype=order + types.pop(), count=n * len(vertex.props))
            matrix = matrix.reshape(n, len(vertex.props))  # [N, P]
            return matrix[:, [position[name] for name in names]].astype(np.float32, copy=False)
        data = np.frombuffer(buf, dtype=vertex.dtype(order), count=n)  # [N] structured
        out = np.empty((n, len(names)), np.float32)
        for j, name in enumerate(names):
            out[:, j] = data[name]
        return out


def _gaussians_from_rows(rows: np.ndarray, n_rest: int) -> Gaussians:
    """Rows [N, 14 + 3(K-1)] (order of `_REQUIRED` then channel-major f_rest) -> Gaussians."""
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

    Raises `PlyError` naming the file for anything malformed; rows with NaN/inf
    are dropped with a warning.
    """
    path = Path(path)
    where = f"'{path}'"
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PlyError(f"{where}: cannot open: {e.strerror or e}") from e
    with f:
        header = _parse_header(f, where)
        vertex, offset = _vertex_offset(header, where)
        _check_required(vertex, where)
        rest_names = _sh_rest_names(vertex, where)
        dtype = vertex.dtype(header.order)
        _check_count(vertex, offset, dtype.itemsize, os.fstat(f.fileno()).st_size, max_vertices, where)
        f.seek(offset)
        buf = f.read(vertex.count * dtype.itemsize)
    if len(buf) != vertex.count * dtype.itemsize:
        raise PlyError(f"{where}: truncated, could not read the {vertex.count} vertices the header claims")
    rows = _rows_from_vertices(buf, vertex, header.order, rest_names)
    rows = _drop_nonfinite(rows, f"read_ply({where})")
    return _gaussians_from_rows(rows, len(rest_names))
