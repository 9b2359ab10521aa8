"""Which way is up in a file: steinsplat's world is +Z up (OpenCV cameras, `cameras.py`); other tools expect
+Y up (glTF, three.js, Babylon.js, Unity) or -Y up (3DGS captures: COLMAP's y-down cameras, as SuperSplat
and most PLY viewers assume). `--up` rotates the Gaussians, exactly, into the chosen convention:

    up   file axes from ours (x, y, z)     the file's up is our +Z; its "forward" (-Z or +Z) is our +Y
    z    (x, y, z)                         (as stored: nothing changes)
    y    (x, z, -y)                        a -90 degree turn about +X
    -y   (x, -z, y)                        a +90 degree turn about +X

A rotation R (file = R @ ours, det +1) moves each Gaussian's mean (R mu), turns its orientation (the quaternion
of R times its own), keeps its scales and opacity, and rotates its view-dependent colour: the SH coefficients
of each degree l are mixed by a (2l+1)x(2l+1) matrix D_l chosen so that the colour seen along R d afterwards is
the colour seen along d before (`sh_rotation`, least squares on sample directions: exact to float precision,
since each band is closed under rotation).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..gaussians import Gaussians, eval_sh, num_sh_bases
from .errors import ExportError

Up = Literal["z", "y", "-y"]
UP_AXES: tuple[str, ...] = ("z", "y", "-y")
UP_ROTATIONS = {  # file coordinates = R @ ours
    "z": np.eye(3),
    "y": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "-y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
}
UP_LABELS = {"z": "+Z", "y": "+Y", "-y": "-Y"}  # how `steinsplat info` and the docs name each


def up_rotation(up: str) -> np.ndarray:
    """R [3, 3] taking our +Z-up coordinates to the `up` convention's (file = R @ ours)."""
    if up not in UP_ROTATIONS:
        raise ExportError(f"unknown up axis {up!r}: use one of {', '.join(UP_AXES)} (z: ours, y: glTF / three.js / "
                          "Babylon, -y: 3DGS captures / SuperSplat)")
    return UP_ROTATIONS[up]


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """A unit quaternion [4] (w, x, y, z, w >= 0) of the rotation matrix R [3, 3] (Shepperd's method)."""
    R = np.asarray(R, np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = [0.0] * 4
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    q = np.array(q)
    q = q / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of quaternions [..., 4] (w, x, y, z): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def _basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real SH basis values (the 3DGS basis and signs) of the bands up to `degree`: [M, K] for dirs [M, 3]."""
    k = num_sh_bases(degree)
    eye = torch.eye(k, dtype=dirs.dtype)[:, :, None].expand(k, k, 3)  # [K (which basis), K, 3]: one-hot coefficients
    vals = eval_sh(degree, eye[None].expand(len(dirs), k, k, 3), dirs[:, None, :].expand(len(dirs), k, 3))  # [M, K, 3]
    return vals[..., 0]  # [M, K]


def sh_rotation(R: np.ndarray, degree: int) -> np.ndarray:
    """D [K, K] (K = (degree + 1)^2, block diagonal by band) such that coefficients c' = D @ c give, at every
    direction d', the colour that c gives at R^T d': sum_k c'_k Y_k(d') = sum_k c_k Y_k(R^T d')."""
    k = num_sh_bases(degree)
    gen = torch.Generator().manual_seed(0)
    d_new = torch.nn.functional.normalize(torch.randn(256, 3, generator=gen, dtype=torch.float64), dim=-1)  # [M, 3]
    d_old = d_new @ torch.as_tensor(R, dtype=torch.float64)  # rows (R^T d')^T = d'^T R
    Y_new, Y_old = _basis(degree, d_new), _basis(degree, d_old)  # [M, K] each
    D = np.zeros((k, k))
    for band in range(degree + 1):  # each band is closed under rotation: solve band by band
        s = slice(band * band, (band + 1) ** 2)
        sol = torch.linalg.lstsq(Y_new[:, s], Y_old[:, s]).solution  # [2l+1, 2l+1]: Y_new @ sol = Y_old
        D[s, s] = sol.numpy()
    return D  # c' = D @ c: Y_new @ c' = Y_new @ D @ c = Y_old @ c


def rotate_gaussians(g: Gaussians, R: np.ndarray) -> Gaussians:
    """The same Gaussians in coordinates x' = R x (R a rotation [3, 3], det +1): detached, float32, on the CPU."""
    R = np.asarray(R, np.float64)
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0):
        raise ExportError("rotate_gaussians: R must be a rotation (orthonormal, determinant +1)")
    s = {k: v.detach().to("cpu", torch.float64) for k, v in g.splats.items()}
    Rt = torch.as_tensor(R)
    means = s["means"] @ Rt.T  # [N, 3]
    q_r = torch.as_tensor(rotmat_to_quat(R))  # [4]
    quats = quat_multiply(q_r.expand_as(s["quats"]), s["quats"])  # [N, 4]: our rotation, then R
    coeffs = torch.cat([s["sh0"], s["shN"]], 1)  # [N, K, 3]
    D = torch.as_tensor(sh_rotation(R, g.sh_degree))  # [K, K]
    coeffs = torch.einsum("jk,nkc->njc", D, coeffs)  # [N, K, 3]
    f = lambda t: t.to(torch.float32)  # noqa: E731
    return Gaussians(f(means), f(s["scales"]), f(quats), f(s["opacities"]), f(coeffs[:, :1]), f(coeffs[:, 1:]))


def to_up(g: Gaussians, up: str) -> Gaussians:
    """Our +Z-up Gaussians in the `up` convention (z: unchanged)."""
    return g if up == "z" else rotate_gaussians(g, up_rotation(up))


def from_up(g: Gaussians, up: str) -> Gaussians:
    """Gaussians stored in the `up` convention, back in our +Z-up world."""
    return g if up == "z" else rotate_gaussians(g, up_rotation(up).T)
