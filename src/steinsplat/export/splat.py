"""antimatter15's `.splat` format (the WebGL viewer's compact layout).

32 bytes per Gaussian, little-endian, no header:

    float32 x, y, z          position
    float32 sx, sy, sz       linear scales, exp(log-scale)
    uint8   R, G, B, A       RGB = (0.5 + SH_C0 * f_dc) * 255, A = sigmoid(opacity) * 255
    uint8   qw, qx, qy, qz   normalised quaternion, q * 128 + 128

Bytes are clipped to 0..255 and rounded to the nearest integer. Gaussians are
sorted most important first, by descending volume times opacity
(`exp(sum log-scales) * sigmoid(opacity)`), as antimatter15's converter does.
Only the DC colour is stored; higher SH bands are lost.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..gaussians import SH_C0, Gaussians
from .atomic import PathLike, atomic_open
from .errors import SplatError
from .readable import read_regular

SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert SPLAT_DTYPE.itemsize == 32

_OPACITY_EPS = 1e-4


def _numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _to_bytes(x: np.ndarray) -> np.ndarray:
    """Values on the 0..255 scale -> uint8, rounded and clipped."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _importance_order(log_scales: np.ndarray, opacity_logits: np.ndarray) -> np.ndarray:
    """Indices by descending exp(sum log-scales) * sigmoid(opacity), computed in log space (no overflow)."""
    log_sigmoid = -np.logaddexp(0.0, -opacity_logits)  # [N]
    key = log_scales.sum(axis=1) + log_sigmoid  # [N]
    return np.argsort(-key, kind="stable")


def _splat_records(gaussians: Gaussians, where: str) -> np.ndarray:
    """Gaussians -> structured `.splat` records [M] (finite rows only, importance-sorted)."""
    s = gaussians.splats
    n = len(gaussians)
    means = _numpy64(s["means"])  # [N, 3]
    log_scales = _numpy64(s["scales"])  # [N, 3]
    logits = _numpy64(s["opacities"])  # [N]
    dc = _numpy64(s["sh0"]).reshape(n, 3)  # [N, 3]
    quats = _numpy64(s["quats"])  # [N, 4]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scales = np.exp(log_scales).astype(np.float32)  # [N, 3], inf if beyond float32
        unit_q = quats / np.linalg.norm(quats, axis=1, keepdims=True)  # [N, 4], NaN for q = 0
        alpha = 1.0 / (1.0 + np.exp(-logits))  # [N]
    values = np.concatenate([means, scales, logits[:, None], dc, unit_q], axis=1)  # [N, 14]
    keep = np.isfinite(values).all(axis=1) & np.isfinite(means.astype(np.float32)).all(axis=1)
    dropped = int(n - keep.sum())
    if dropped:
        warnings.warn(
            f"write_splat({where}): dropped {dropped} of {n} Gaussians with non-finite values "
            "(NaN or inf, or a zero quaternion)",
            RuntimeWarning,
            stacklevel=3,
        )
    idx = np.flatnonzero(keep)
    idx = idx[_importance_order(log_scales[idx], logits[idx])]
    out = np.empty(len(idx), SPLAT_DTYPE)
    out["position"] = means[idx]
    out["scale"] = scales[idx]
    out["rgba"][:, :3] = _to_bytes((0.5 + SH_C0 * dc[idx]) * 255.0)
    out["rgba"][:, 3] = _to_bytes(alpha[idx] * 255.0)
    out["rot"] = _to_bytes(unit_q[idx] * 128.0 + 128.0)
    return out


def write_splat(path: PathLike, gaussians: Gaussians) -> int:
    """Write `gaussians` as an antimatter15 `.splat` file; returns the number written.

    Rows with NaN/inf (or a zero quaternion) are left out with a warning; if
    none is left, SplatError. The file is written atomically.
    """
    records = _splat_records(gaussians, f"'{path}'")
    if len(records) == 0:
        raise SplatError(f"nothing to write to '{path}': no Gaussians with finite values (the file was not written)")
    with atomic_open(path, "wb") as f:
        f.write(memoryview(records).cast("B"))
    return len(records)


def _check_size(size: int, where: str) -> None:
    if size == 0:
        raise SplatError(f"{where}: the file is empty (0 bytes); export it again")
    if size % SPLAT_DTYPE.itemsize:
        raise SplatError(
            f"{where}: size {size} bytes is not a multiple of {SPLAT_DTYPE.itemsize} "
            "(bytes per splat); the file is truncated or not a .splat file"
        )


def read_splat(path: PathLike) -> Gaussians:
    """Load an antimatter15 `.splat` file as CPU float32 Gaussians (SH degree 0).

    The inverse of `write_splat` up to quantisation: opacity = logit(A/255)
    (clamped to (1e-4, 1-1e-4)), sh0 from RGB, quaternion (byte-128)/128.
    Zero scales are clamped to 1e-12 before the log; rows with NaN/inf are
    dropped with a warning.
    """
    path = Path(path)
    where = f"'{path}'"
    data = read_regular(path, where, SplatError)
    _check_size(len(data), where)
    rec = np.frombuffer(data, dtype=SPLAT_DTYPE)  # [N]
    means = rec["position"].astype(np.float32)  # [N, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        log_scales = np.log(np.maximum(rec["scale"].astype(np.float32), 1e-12))  # [N, 3]
    keep = np.isfinite(means).all(axis=1) & np.isfinite(log_scales).all(axis=1)
    if not keep.all():
        warnings.warn(
            f"read_splat({where}): dropped {int((~keep).sum())} of {len(rec)} Gaussians with non-finite values",
            RuntimeWarning,
            stacklevel=2,
        )
    rgba = rec["rgba"][keep].astype(np.float32) / 255.0  # [M, 4]
    alpha = np.clip(rgba[:, 3], _OPACITY_EPS, 1.0 - _OPACITY_EPS)  # [M]
    n = int(keep.sum())
    return Gaussians(
        means=torch.from_numpy(np.ascontiguousarray(means[keep])),
        scales=torch.from_numpy(np.ascontiguousarray(log_scales[keep])),
        quats=torch.from_numpy((rec["rot"][keep].astype(np.float32) - 128.0) / 128.0),  # [M, 4]
        opacities=torch.from_numpy(np.log(alpha / (1.0 - alpha)).astype(np.float32)),  # [M]
        sh0=torch.from_numpy(((rgba[:, :3] - 0.5) / SH_C0).astype(np.float32)).reshape(n, 1, 3),
    )
