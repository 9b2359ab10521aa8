"""The checks a PLY passes before plyfile reads it: one clear `PlyError` per malformed file.

plyfile parses any well-formed PLY, but on a hostile or damaged one it allocates what the header
claims (an `element vertex 1000000000000` line is a terabyte) or fails with a parser message that
does not say what to do. So `check_ply` reads the header itself (at most 1 MiB, ASCII, binary
formats only), requires a 3DGS vertex element (x y z, f_dc_*, opacity, scale_*, rot_*, a valid
number of f_rest_*), and checks every element's size against the file size before anything is
allocated. What passes is handed to plyfile (`export/ply.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import BinaryIO, Optional

import numpy as np

from ..gaussians import MAX_SH_DEGREE, num_sh_bases
from .errors import PlyError

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

REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [
    f"rot_{i}" for i in range(4)
]

_F_REST = re.compile(r"f_rest_(\d+)$")


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]] = field(default_factory=list)  # (name, numpy type code)
    list_prefix_bytes: int = 0  # per row, the length prefixes of its list properties (0: no lists)

    @property
    def has_list(self) -> bool:
        return self.list_prefix_bytes > 0

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
        if len(words) != 5 or words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
            raise PlyError(
                f"{where}: malformed list property line '{' '.join(words)}' "
                "(expected 'property list <count type> <value type> <name>')"
            )
        elem.list_prefix_bytes += np.dtype(_PLY_TYPES[words[2]]).itemsize
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
    missing = [n for n in REQUIRED if n not in present]
    if missing:
        raise PlyError(
            f"{where}: not a 3DGS PLY, the vertex element lacks the properties {', '.join(missing)} "
            "(a plain point cloud cannot be loaded as Gaussians)"
        )


def _min_bytes(elem: _Element, order: str) -> int:
    """Fewest bytes the element's rows can take: fixed rows exactly, list rows at least their length prefixes."""
    return elem.count * (elem.dtype(order).itemsize + elem.list_prefix_bytes)


def _check_sizes(header: _Header, vertex: _Element, offset: int, file_size: int, max_vertices: int,
                 where: str) -> None:
    """Refuse counts above `max_vertices` or beyond what the file holds, before allocating anything."""
    if vertex.count > max_vertices:
        raise PlyError(
            f"{where}: the header claims {vertex.count} vertices, more than max_vertices={max_vertices}; "
            "raise max_vertices if the file is genuine"
        )
    needed = vertex.count * vertex.dtype(header.order).itemsize
    available = max(file_size - offset, 0)
    if needed > available:
        raise PlyError(
            f"{where}: truncated or corrupt, the header claims {vertex.count} vertices "
            f"({needed} bytes of vertex data) but only {available} bytes follow"
        )
    total = header.data_start + sum(_min_bytes(e, header.order) for e in header.elements)
    if total > file_size:
        big = max(header.elements, key=lambda e: _min_bytes(e, header.order))
        raise PlyError(
            f"{where}: truncated or corrupt, the header's elements need at least {total - header.data_start} "
            f"bytes (element '{big.name}' claims {big.count} rows) but only {file_size - header.data_start} "
            "bytes follow the header"
        )


@dataclass
class CheckedPly:
    """What `check_ply` found: the vertex element's property names to read, in `REQUIRED` + f_rest order."""

    vertex_count: int
    rest_names: list[str]  # f_rest_0 .. f_rest_{3(K-1)-1}


def check_ply(f: BinaryIO, file_size: int, max_vertices: int, where: str) -> CheckedPly:
    """Validate the PLY open as `f` (positioned at 0) for reading as Gaussians; `PlyError` naming `where` if not."""
    header = _parse_header(f, where)
    vertex, offset = _vertex_offset(header, where)
    _check_required(vertex, where)
    rest_names = _sh_rest_names(vertex, where)
    _check_sizes(header, vertex, offset, file_size, max_vertices, where)
    return CheckedPly(vertex.count, rest_names)
