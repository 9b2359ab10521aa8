"""The binary glTF container (GLB, glTF 2.0 section 4.4) and accessor decoding, for our glTF writers and reader.

    header  12 bytes: magic "glTF", version 2, total length (uint32 little-endian each)
    chunk   uint32 length, uint32 type ("JSON", then optionally "BIN\\0"), data padded to 4 bytes
            (JSON with spaces, BIN with zeros)

`pack_glb` builds a file from a JSON document and one binary buffer; `BinaryBuilder` lays out the buffer views
(each 4-byte aligned) and accessors. `unpack_glb` reads one back without trusting it: every length is checked
against the file before anything is allocated, and the JSON goes through `json.loads` (nothing is unpickled or
evaluated). `read_accessor` decodes an accessor into float64, with the bounds of its buffer view checked.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GltfError

MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
MAX_JSON_BYTES = 64 << 20  # a JSON chunk larger than this is refused (ours are a few kB)

COMPONENTS = {  # componentType -> (numpy dtype, bytes, normalised divisor, normalised lower bound)
    5120: ("<i1", 1, 127.0, -1.0),
    5121: ("<u1", 1, 255.0, 0.0),
    5122: ("<i2", 2, 32767.0, -1.0),
    5123: ("<u2", 2, 65535.0, 0.0),
    5125: ("<u4", 4, None, None),
    5126: ("<f4", 4, None, None),
}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
FLOAT, UNSIGNED_BYTE = 5126, 5121
ARRAY_BUFFER = 34962  # bufferView target of vertex attributes


@dataclass
class BinaryBuilder:
    """Collects the binary buffer of one GLB: `add` appends an array as a buffer view and an accessor."""

    views: list[dict] = field(default_factory=list)  # glTF bufferViews
    accessors: list[dict] = field(default_factory=list)  # glTF accessors
    blobs: list[bytes] = field(default_factory=list)  # the buffer, piece by piece
    offset: int = 0  # bytes so far

    def add(self, values: np.ndarray, gltf_type: str, component: int = FLOAT, normalized: bool = False,
            min_max: bool = False, target: int | None = ARRAY_BUFFER) -> int:
        """Append `values` [count, width] (or [count] for SCALAR) as little-endian `component`s; the accessor's index."""
        dtype = COMPONENTS[component][0]
        data = np.ascontiguousarray(values, dtype=dtype)
        count = data.shape[0]
        raw = data.tobytes()
        raw += b"\x00" * (-len(raw) % 4)  # every view starts 4-byte aligned
        view = {"buffer": 0, "byteOffset": self.offset, "byteLength": data.nbytes}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        self.blobs.append(raw)
        self.offset += len(raw)
        acc: dict[str, Any] = {"bufferView": len(self.views) - 1, "componentType": component, "count": count,
                               "type": gltf_type}
        if normalized:
            acc["normalized"] = True
        if min_max:
            flat = data.reshape(count, -1).astype(np.float64)
            acc["min"], acc["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def binary(self) -> bytes:
        return b"".join(self.blobs)


def pack_glb(doc: dict, binary: bytes) -> bytes:
    """A GLB file of the JSON document `doc` (its `buffers` are set to the one binary buffer) and `binary`."""
    doc = dict(doc)
    if binary:
        doc["buffers"] = [{"byteLength": len(binary)}]
    js = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    js += b" " * (-len(js) % 4)
    binary += b"\x00" * (-len(binary) % 4)
    chunks = struct.pack("<II", len(js), CHUNK_JSON) + js
    if binary:
        chunks += struct.pack("<II", len(binary), CHUNK_BIN) + binary
    return struct.pack("<4sII", MAGIC, 2, 12 + len(chunks)) + chunks


def unpack_glb(data: bytes, where: str) -> tuple[dict, bytes]:
    """(JSON document, BIN chunk or b"") of a GLB file's bytes; GltfError naming `where` if it is not one."""
    if len(data) < 20 or data[:4] != MAGIC:
        raise GltfError(f"{where}: not a binary glTF (.glb) file (no 'glTF' magic); a .gltf JSON file with separate "
                        "buffers is not read here: convert it to .glb")
    version, total = struct.unpack("<II", data[4:12])
    if version != 2:
        raise GltfError(f"{where}: GLB version {version}; only glTF 2.0 is read")
    if total > len(data):
        raise GltfError(f"{where}: truncated: the header says {total} bytes, the file has {len(data)}")
    pos, doc, binary = 12, None, b""
    while pos + 8 <= total:
        length, kind = struct.unpack("<II", data[pos : pos + 8])
        pos += 8
        if length > total - pos:
            raise GltfError(f"{where}: a chunk of {length} bytes runs past the end of the file; the file is corrupt")
        if kind == CHUNK_JSON and doc is None:
            if length > MAX_JSON_BYTES:
                raise GltfError(f"{where}: its JSON chunk is {length:,} bytes (more than {MAX_JSON_BYTES:,}); refused")
            try:
                doc = json.loads(data[pos : pos + length].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise GltfError(f"{where}: its JSON chunk does not parse ({e}); the file is corrupt") from None
        elif kind == CHUNK_BIN and not binary:
            binary = data[pos : pos + length]
        pos += length
    if not isinstance(doc, dict):
        raise GltfError(f"{where}: no JSON chunk (or not a JSON object) at the start; the file is corrupt")
    return doc, binary


def _get(doc: dict, key: str, index: Any, where: str) -> dict:
    items = doc.get(key)
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(items, list) \
            or not 0 <= index < len(items) or not isinstance(items[index], dict):
        raise GltfError(f"{where}: refers to {key}[{index}], which does not exist; the file is corrupt")
    return items[index]


def buffer_bytes(doc: dict, index: int, binary: bytes, where: str) -> bytes:
    """The bytes of buffer `index`: the GLB's BIN chunk (a buffer without uri) or a base64 data: URI."""
    buf = _get(doc, "buffers", index, where)
    uri = buf.get("uri")
    if uri is None:
        data = binary
    elif isinstance(uri, str) and uri.startswith("data:") and ";base64," in uri[:100]:
        import base64

        data = base64.b64decode(uri.split(",", 1)[1], validate=False)
    else:
        raise GltfError(f"{where}: buffer {index} is an external file ({str(uri)[:60]!r}); only data inside the .glb "
                        "is read: convert the asset to a single .glb")
    n = buf.get("byteLength")
    if not isinstance(n, int) or n < 0 or n > len(data):
        raise GltfError(f"{where}: buffer {index} says {n} bytes but holds {len(data)}; the file is corrupt")
    return data[:n]


def read_accessor(doc: dict, index: int, binary: bytes, where: str, max_count: int) -> np.ndarray:
    """Accessor `index` as float64 [count, width] (normalised integers mapped to [0, 1] / [-1, 1] as glTF says)."""
    acc = _get(doc, "accessors", index, where)
    what = f"{where}: accessor {index}"
    count, gltf_type, component = acc.get("count"), acc.get("type"), acc.get("componentType")
    if gltf_type not in WIDTHS or component not in COMPONENTS or not isinstance(count, int) or count < 0:
        raise GltfError(f"{what} has type {gltf_type!r}, componentType {component!r}, count {count!r}; not valid glTF")
    if count > max_count:
        raise GltfError(f"{what} holds {count:,} elements, more than the limit of {max_count:,}; refused")
    if "sparse" in acc:
        raise GltfError(f"{what} is sparse; sparse accessors are not read: write the file without them")
    dtype, size, divisor, lower = COMPONENTS[component]
    width = WIDTHS[gltf_type]
    if "bufferView" not in acc:  # glTF: an accessor without a buffer view is all zeros
        return np.zeros((count, width))
    view = _get(doc, "bufferViews", acc["bufferView"], where)
    data = buffer_bytes(doc, view.get("buffer", -1), binary, where)
    v_off, v_len = view.get("byteOffset", 0), view.get("byteLength")
    a_off = acc.get("byteOffset", 0)
    stride = view.get("byteStride") or width * size
    for name, val in (("byteOffset", v_off), ("byteLength", v_len), ("accessor byteOffset", a_off), ("byteStride", stride)):
        if not isinstance(val, int) or val < 0:
            raise GltfError(f"{what}: its {name} is {val!r}; the file is corrupt")
    if v_off + v_len > len(data) or (count and a_off + stride * (count - 1) + width * size > v_len):
        raise GltfError(f"{what} reaches past the end of its buffer view or buffer; the file is corrupt")
    if stride < width * size or (a_off % size) or ((v_off + a_off) % size) or (stride % size):
        raise GltfError(f"{what} is not aligned to its {size}-byte components (glTF requires it); the file is corrupt")
    if count == 0:
        return np.zeros((0, width))
    base = np.frombuffer(data, dtype=np.uint8, count=stride * (count - 1) + width * size, offset=v_off + a_off)
    rows = np.lib.stride_tricks.as_strided(base, shape=(count, width * size), strides=(stride, 1))
    out = np.ascontiguousarray(rows).view(dtype).reshape(count, width).astype(np.float64)
    if acc.get("normalized"):
        if divisor is None:
            raise GltfError(f"{what} is normalised but of componentType {component}; not valid glTF")
        out = np.maximum(out / divisor, lower)
    return out
