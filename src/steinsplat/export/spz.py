"""Niantic's `.spz`: quantised, gzip-compressed Gaussians, read and written through `gsply`.

What we write is **version 3**, the gzip container every current reader takes (Spark 2.x,
splat-transform, Niantic's own library): a 16-byte header (magic "NGSP", version, count, SH
degree, fractional bits) and the packed attributes, gzipped as one stream. Version 4 (zstd
streams, written by splat-transform 3.7 and later) is refused by Spark 2.2 ("Invalid gzip
header"), so it is read (if `zstandard` is installed) but never written. The quantisation,
per Gaussian:

    positions   24-bit fixed point, 12 fractional bits (1/4096 m; fewer bits if a
                coordinate would leave +-2048 m)
    alpha       8 bits of sigmoid(opacity)
    colour      8 bits of the DC band: byte = f_dc * 0.15 * 255 + 127.5 (|f_dc| <= 3.3)
    scales      8 bits of the log scale: byte = (log s + 10) * 16 (log s in -10 .. 5.9)
    rotation    smallest three components, 9 bits and a sign each (q and -q are one rotation)
    f_rest      8 bits each: byte = f * 128 + 128 (|f| <= 1)

so about 16 bytes a Gaussian before compression at SH degree 0 (a PLY takes 68). The gzip
header's time stamp is zeroed, so the same Gaussians give the same bytes. Values beyond a
field's range are clamped by the format. gsply decodes with a numba kernel, compiled on
its first use in an environment (a few seconds) and cached after.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ..gaussians import Gaussians
from .atomic import PathLike, atomic_write_bytes
from .errors import SpzError
from .readable import read_regular

SPZ_VERSION = 3  # written; see the module docstring
FRACTIONAL_BITS = 12  # Niantic's default position precision (1/4096 m)
_MAGIC = 0x5053474E  # "NGSP", little-endian
_HEADER = struct.Struct("<IIIBBBB")  # magic, version, count, sh degree, fractional bits, flags, reserved
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this: bounds what a file can hold
_MAX_ZSTD_RATIO = 1 << 15  # nor zstd (a 128 KiB block of one byte repeated is 4 bytes at best)
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15}


def _gsply():
    try:
        import gsply
    except ImportError as e:  # a declared dependency; missing only in a broken environment
        raise SpzError(f".spz needs the gsply package ({e}); install it with: pip install 'gsply>=0.4.6'") from None
    return gsply


# ---------------------------------------------------------------------------- writing


def _numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _fractional_bits(means: np.ndarray, where: str) -> int:
    """12 bits unless a coordinate would overflow the 24-bit fixed point; then as many as fit."""
    extent = float(np.abs(means).max()) if means.size else 0.0
    bits = min(FRACTIONAL_BITS, 23 - max(0, math.ceil(math.log2(extent + 1.0))))
    if bits < 1:
        raise SpzError(f"cannot write {where}: a coordinate reaches {extent:.3g} m, beyond what .spz holds "
                       "(+-4 million m); centre or scale the scene first, or export .ply")
    return bits


def _finite_rows(gaussians: Gaussians, where: str) -> dict[str, np.ndarray]:
    """The Gaussians' parameters as float32 arrays, without rows holding NaN/inf or a zero quaternion."""
    s = gaussians.splats
    n = len(gaussians)
    arrays = {
        "means": _numpy64(s["means"]), "scales": _numpy64(s["scales"]), "quats": _numpy64(s["quats"]),
        "opacities": _numpy64(s["opacities"]), "sh0": _numpy64(s["sh0"]).reshape(n, 3),
        "shN": _numpy64(s["shN"]),
    }
    keep = np.ones(n, bool)
    for a in arrays.values():
        keep &= np.isfinite(a.reshape(n, -1)).all(axis=1)
    keep &= np.linalg.norm(arrays["quats"], axis=1) > 0
    dropped = int(n - keep.sum())
    if dropped:
        warnings.warn(f"write_spz({where}): dropped {dropped} of {n} Gaussians with non-finite values "
                      "(NaN or inf, or a zero quaternion)", RuntimeWarning, stacklevel=3)
    return {k: np.ascontiguousarray(a[keep], dtype=np.float32) for k, a in arrays.items()}


def _zero_gzip_mtime(data: bytes, where: str) -> bytes:
    """Clear the time stamp (bytes 4-7) that gzip writes, so that equal input gives equal bytes."""
    if data[:3] != b"\x1f\x8b\x08":
        raise SpzError(f"cannot write {where}: gsply did not produce a gzip stream (version {SPZ_VERSION} expected)")
    return data[:4] + b"\x00\x00\x00\x00" + data[8:]


def write_spz(path: PathLike, gaussians: Gaussians) -> int:
    """Write `gaussians` as a version-3 `.spz` (all their SH bands); returns the number written.

    Rows with NaN/inf (or a zero quaternion) are left out with a warning; if none is
    left, SpzError. The file is written atomically.
    """
    where = f"'{path}'"
    a = _finite_rows(gaussians, where)
    n = a["means"].shape[0]
    if n == 0:
        raise SpzError(f"nothing to write to {where}: no Gaussians with finite values (the file was not written)")
    gsply = _gsply()
    data = gsply.GSData.from_arrays(a["means"], a["scales"], a["quats"], a["opacities"], a["sh0"],
                                    a["shN"] if a["shN"].shape[1] else None, format="ply")
    with tempfile.TemporaryDirectory(prefix="steinsplat-spz-") as tmp:
        out = Path(tmp) / "out.spz"
        gsply.write_spz(out, data, version=SPZ_VERSION, fractional_bits=_fractional_bits(a["means"], where))
        encoded = out.read_bytes()
    atomic_write_bytes(path, _zero_gzip_mtime(encoded, where))
    return n


# ---------------------------------------------------------------------------- reading


def _bytes_per_point(version: int, sh_degree: int) -> int:
    return 9 + 1 + 3 + 3 + (4 if version >= 3 else 3) + 3 * _SH_DIM[sh_degree]


def _check_header(version: int, n: int, sh_degree: int, bits: int, max_points: int, where: str) -> None:
    if version == 1:
        raise SpzError(f"{where}: .spz version 1 (float16 positions) is not supported; "
                       "convert it to version 3, e.g. `splat-transform IN.spz OUT.ply`, then `steinsplat export`")
    if version not in (2, 3, 4):
        raise SpzError(f"{where}: unknown .spz version {version} (versions 2, 3 and 4 are read)")
    if sh_degree not in _SH_DIM:
        raise SpzError(f"{where}: SH degree {sh_degree} in the header; .spz holds degrees 0..3, the file is corrupt")
    if not 1 <= bits <= 24:
        raise SpzError(f"{where}: {bits} fractional bits in the header (1..24 expected); the file is corrupt")
    if n > max_points:
        raise SpzError(f"{where}: the header claims {n} Gaussians, more than max_points={max_points}; "
                       "raise max_points if the file is genuine")


def _peek_gzip_header(data: bytes, where: str) -> tuple[int, int, int, int, int]:
    """Decompress only the 16-byte header of a gzip-container .spz: (version, count, SH degree, fractional bits, flags)."""
    try:
        head = zlib.decompressobj(wbits=31).decompress(data, _HEADER.size)
    except zlib.error as e:
        raise SpzError(f"{where}: corrupt gzip stream ({e}); the file is damaged, export it again") from None
    if len(head) < _HEADER.size:
        raise SpzError(f"{where}: truncated, the gzip stream holds fewer than the {_HEADER.size} bytes of an "
                       ".spz header; export it again")
    magic, version, n, sh_degree, bits, flags, _ = _HEADER.unpack(head)
    if magic != _MAGIC:
        raise SpzError(f"{where}: a gzip file but not .spz (no 'NGSP' header inside)")
    return version, n, sh_degree, bits, flags


_CHUNK = 1 << 20  # bytes inflated at a time while a payload is measured (nothing larger is held)
_FLAG_EXTENSIONS = 0x2  # header flag: extension records follow the Gaussians (Niantic's spz 3.x)
_MAX_EXTENSION_BYTES = 1 << 20  # what such records may add beyond the Gaussians


def _inflated_size(data: bytes, limit: int, where: str) -> int:
    """The size the gzip stream `data` inflates to, inflating at most `limit` + 1 bytes (chunk by chunk,
    none kept): a stream that holds more than `limit` stops there (a decompression bomb costs nothing)."""
    d = zlib.decompressobj(wbits=31)
    total, buf = 0, data
    try:
        while True:
            out = d.decompress(buf, _CHUNK)
            total += len(out)
            if total > limit:
                return total
            buf = d.unconsumed_tail
            if not buf and (d.eof or not out):
                break
        total += len(d.flush())
    except zlib.error as e:
        raise SpzError(f"{where}: corrupt gzip stream ({e}); the file is damaged, export it again") from None
    if not d.eof:
        raise SpzError(f"{where}: truncated, the gzip stream ends early; export it again")
    return total


def _check_gzip_payload(data: bytes, version: int, n: int, sh_degree: int, flags: int, where: str) -> None:
    """The inflated payload must be what the header's count says: fewer bytes is a truncated file,
    more (without the extensions flag) a count that does not match its data."""
    expected = _HEADER.size + n * _bytes_per_point(version, sh_degree)
    slack = _MAX_EXTENSION_BYTES if flags & _FLAG_EXTENSIONS else 0
    size = _inflated_size(data, expected + slack, where)
    if size < expected:
        raise SpzError(f"{where}: truncated, the header claims {n} Gaussians ({expected} bytes) but the payload "
                       f"holds {size} bytes; export it again")
    if size > expected + slack:
        raise SpzError(f"{where}: corrupt, the payload holds more than the {expected} bytes of the header's {n} "
                       "Gaussians (its count does not match its data); export it again")


def _check_zstd_streams(data: bytes, n: int, sh_degree: int, where: str) -> None:
    """Version 4: the table of streams must fit the file, and each stream must inflate to exactly the
    size that the header's count gives its section (measured chunk by chunk, never allocated whole)."""
    try:
        import zstandard
    except ImportError:
        raise SpzError(f"{where}: a version-4 (zstd) .spz; reading it needs the zstandard package: "
                       "pip install zstandard") from None
    num_streams, toc = struct.unpack_from("<BI", data, 15)  # after magic, version, count, degree, bits, flags
    sh = 3 * _SH_DIM[sh_degree] * n
    sizes = [s for s in (9 * n, n, 3 * n, 3 * n, 4 * n, sh) if s > 0]
    if num_streams != len(sizes) or toc < 32 or toc + 16 * num_streams > len(data):
        raise SpzError(f"{where}: corrupt, the table of zstd streams does not match the header's {n} Gaussians "
                       "or overruns the file; export it again")
    offset = toc + 16 * num_streams
    for i, want in enumerate(sizes):
        csize, usize = struct.unpack_from("<QQ", data, toc + 16 * i)
        if usize != want or offset + csize > len(data):
            raise SpzError(f"{where}: corrupt, zstd stream {i} does not match the header's {n} Gaussians "
                           f"or overruns the file; export it again")
        reader = zstandard.ZstdDecompressor().stream_reader(data[offset:offset + csize], read_across_frames=True)
        got = 0
        try:
            while got <= want:
                chunk = reader.read(_CHUNK)
                if not chunk:
                    break
                got += len(chunk)
        except zstandard.ZstdError as e:
            raise SpzError(f"{where}: corrupt zstd stream {i} ({e}); export it again") from None
        if got != want:
            raise SpzError(f"{where}: corrupt, zstd stream {i} holds {'more' if got > want else 'fewer'} bytes than "
                           f"the header's {n} Gaussians need ({want}); export it again")
        offset += csize


def _check_file(data: bytes, max_points: int, where: str) -> None:
    """Header and size checks before gsply decompresses or allocates anything: the header's count
    against the file's bytes, and the decompressed payload measured against the count."""
    if not data:
        raise SpzError(f"{where}: the file is empty (0 bytes); export it again")
    if data[:2] == _GZIP_MAGIC:
        version, n, sh_degree, bits, flags = _peek_gzip_header(data, where)
        if version == 4:
            raise SpzError(f"{where}: .spz version 4 inside gzip; the file is corrupt")
        _check_header(version, n, sh_degree, bits, max_points, where)
        if n * _bytes_per_point(version, sh_degree) > _MAX_DEFLATE_RATIO * len(data):
            raise SpzError(f"{where}: truncated or corrupt, the header claims {n} Gaussians, more than "
                           f"{len(data)} compressed bytes can hold")
        _check_count(n, where)
        _check_gzip_payload(data, version, n, sh_degree, flags, where)
    elif data[:4] == struct.pack("<I", _MAGIC):  # version 4: a plain 32-byte header, a TOC, zstd streams
        if len(data) < 32:
            raise SpzError(f"{where}: truncated, {len(data)} bytes is less than a version-4 .spz header; export it again")
        _, version, n, sh_degree, bits = struct.unpack_from("<IIIBB", data)
        _check_header(version, n, sh_degree, bits, max_points, where)
        if n * _bytes_per_point(version, sh_degree) > _MAX_ZSTD_RATIO * len(data):
            raise SpzError(f"{where}: truncated or corrupt, the header claims {n} Gaussians, more than "
                           f"{len(data)} compressed bytes can hold")
        _check_count(n, where)
        _check_zstd_streams(data, n, sh_degree, where)
    else:
        raise SpzError(f"{where}: not a .spz file (it starts with neither gzip's bytes 1f 8b nor 'NGSP')")


def _check_count(n: int, where: str) -> None:
    if n == 0:
        raise SpzError(f"{where}: the file holds 0 Gaussians, nothing to read; export a non-empty scene")


def _check_numba_threads() -> None:
    """numba refuses NUMBA_NUM_THREADS below 1 when gsply's decoder first runs; say so (not 'corrupt file')."""
    value = os.environ.get("NUMBA_NUM_THREADS")
    if value is None:
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise SpzError(f"NUMBA_NUM_THREADS={value!r}: the .spz decoder (numba) needs a whole number of threads of "
                       "at least 1; unset NUMBA_NUM_THREADS or set it to 1 or more")


def read_spz(path: PathLike, max_points: int = 50_000_000) -> Gaussians:
    """Load a `.spz` (versions 2-4) as CPU float32 Gaussians: the quantised values as decoded by gsply.

    Raises `SpzError` naming the file, in one line, for anything malformed.
    """
    path = Path(path)
    where = f"'{path}'"
    data = read_regular(path, where, SpzError)
    _check_file(data, max_points, where)
    _check_numba_threads()
    try:
        with warnings.catch_warnings():  # numba's note that an old TBB is skipped for another threading layer
            warnings.filterwarnings("ignore", message=".*TBB threading layer.*")
            d = _gsply().read_spz(path)
    except (ValueError, EOFError, zlib.error, OSError) as e:
        msg = str(e).replace(f": {path}", "")
        raise SpzError(f"{where}: gsply cannot read it ({msg}); the file is truncated or corrupt, export it again") from None
    n = int(d.means.shape[0])
    shN = d.shN if d.shN is not None and np.asarray(d.shN).size else np.zeros((n, 0, 3), np.float32)

    def t(x) -> torch.Tensor:
        return torch.from_numpy(np.array(x, dtype=np.float32))

    return Gaussians(means=t(d.means), scales=t(d.scales), quats=t(d.quats), opacities=t(d.opacities).reshape(n),
                     sh0=t(d.sh0).reshape(n, 1, 3), shN=t(shN).reshape(n, -1, 3))
