"""3D Gaussians: raw parameters, their activations, and initialisers.

The raw parameters live in a `torch.nn.ParameterDict` with the key names that
gsplat's strategies expect (`means`, `scales`, `quats`, `opacities`, `sh0`,
`shN`), so densification can grow and prune them in place.

Conventions (the same as gsplat and the reference 3DGS PLY):
- `scales` are log-scales, `opacities` are logits, `quats` are w, x, y, z and
  need not be normalised;
- colour is spherical harmonics: `sh0 [N, 1, 3]` is the DC band, `shN [N, K-1, 3]`
  the higher bands, K = (degree + 1)^2 with degree 0..3; the colour of a
  direction is `0.5 + sum_k c_k Y_k(dir)`, clamped at 0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))
MAX_SH_DEGREE = 3


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Linear RGB in [0, 1] -> DC coefficient (the inverse of `0.5 + SH_C0 * c`)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    for d in range(MAX_SH_DEGREE + 1):
        if (d + 1) ** 2 == k:
            return d
    raise ValueError(f"{k} SH coefficients per channel is not (degree+1)^2 for degree 0..3")


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate real spherical harmonics (the 3DGS basis and signs).

    coeffs: [..., K, 3] with K >= (degree+1)^2; dirs: [..., 3] unit vectors.
    Returns [..., 3] (without the +0.5 offset and clamp).
    """
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]  # each [..., 1]
    out = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return out
    c1 = 0.4886025119029199
    out = out - c1 * y * coeffs[..., 1, :] + c1 * z * coeffs[..., 2, :] - c1 * x * coeffs[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    c2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
    out = (
        out
        + c2[0] * xy * coeffs[..., 4, :]
        + c2[1] * yz * coeffs[..., 5, :]
        + c2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6, :]
        + c2[3] * xz * coeffs[..., 7, :]
        + c2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree < 3:
        return out
    c3 = (
        -0.5900435899266435,
        2.890611442640554,
        -0.4570457994644658,
        0.3731763325901154,
        -0.4570457994644658,
        1.445305721320277,
        -0.5900435899266435,
    )
    out = (
        out
        + c3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + c3[1] * xy * z * coeffs[..., 10, :]
        + c3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + c3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + c3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + c3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + c3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )
    return out


class Gaussians(torch.nn.Module):
    """A set of N 3D Gaussians.

    Raw parameters (in `self.splats`, a ParameterDict shared with gsplat's strategies):
        means      [N, 3]        world positions
        scales     [N, 3]        log of the per-axis standard deviations
        quats      [N, 4]        rotation, w x y z (normalised on use)
        opacities  [N]           logit of the opacity
        sh0        [N, 1, 3]     SH DC band
        shN        [N, K-1, 3]   higher SH bands (K-1 = 0 for degree 0)
    """

    def __init__(
        self,
        means: Tensor,
        scales: Tensor,
        quats: Tensor,
        opacities: Tensor,
        sh0: Tensor,
        shN: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        n = means.shape[0]
        if shN is None:
            shN = torch.zeros(n, 0, 3, dtype=means.dtype, device=means.device)
        shapes = {
            "means": (means, (n, 3)),
            "scales": (scales, (n, 3)),
            "quats": (quats, (n, 4)),
            "opacities": (opacities, (n,)),
            "sh0": (sh0, (n, 1, 3)),
        }
        for name, (t, shape) in shapes.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"Gaussians: '{name}' must have shape {shape}, got {tuple(t.shape)}")
        if shN.dim() != 3 or shN.shape[0] != n or shN.shape[2] != 3:
            raise ValueError(f"Gaussians: 'shN' must have shape [N, K-1, 3], got {tuple(shN.shape)}")
        sh_degree_from_bases(shN.shape[1] + 1)  # validates K
        self.splats = torch.nn.ParameterDict(
            {
                "means": torch.nn.Parameter(means.contiguous()),
                "scales": torch.nn.Parameter(scales.contiguous()),
                "quats": torch.nn.Parameter(quats.contiguous()),
                "opacities": torch.nn.Parameter(opacities.contiguous()),
                "sh0": torch.nn.Parameter(sh0.contiguous()),
                "shN": torch.nn.Parameter(shN.contiguous()),
            }
        )

    # ------------------------------------------------------------------ raw access
    def __len__(self) -> int:
        return self.splats["means"].shape[0]

    @property
    def num(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.splats["shN"].shape[1] + 1)

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    @property
    def means(self) -> Tensor:  # [N, 3]
        return self.splats["means"]

    # ------------------------------------------------------------------ activations
    @property
    def scales(self) -> Tensor:  # [N, 3] standard deviations
        return torch.exp(self.splats["scales"])

    @property
    def quats(self) -> Tensor:  # [N, 4] unit quaternions w x y z
        return torch.nn.functional.normalize(self.splats["quats"], dim=-1)

    @property
    def opacities(self) -> Tensor:  # [N] in (0, 1)
        return torch.sigmoid(self.splats["opacities"])

    @property
    def sh_coeffs(self) -> Tensor:  # [N, K, 3]
        return torch.cat([self.splats["sh0"], self.splats["shN"]], dim=1)

    def colors(self, campos: Optional[Tensor] = None) -> Tensor:
        """View-dependent RGB.

        campos: None (-> DC colour only, [N, 3]) or camera centres [C, 3] (-> [C, N, 3]).
        """
        if campos is None or self.sh_degree == 0:
            rgb = sh0_to_rgb(self.splats["sh0"][:, 0, :])  # [N, 3]
            rgb = torch.clamp_min(rgb, 0.0)
            if campos is None:
                return rgb
            return rgb.unsqueeze(0).expand(campos.shape[0], -1, -1)
        dirs = self.means.unsqueeze(0) - campos[:, None, :]  # [C, N, 3]
        dirs = torch.nn.functional.normalize(dirs, dim=-1)
        coeffs = self.sh_coeffs.unsqueeze(0).expand(campos.shape[0], -1, -1, -1)  # [C, N, K, 3]
        return torch.clamp_min(eval_sh(self.sh_degree, coeffs, dirs) + 0.5, 0.0)

    # ------------------------------------------------------------------ helpers
    def detached_copy(self) -> "Gaussians":
        s = self.splats
        return Gaussians(*(s[k].detach().clone() for k in ("means", "scales", "quats", "opacities", "sh0", "shN")))

    def state_tensors(self) -> dict[str, Tensor]:
        """Plain tensors (detached, CPU) for checkpoints / safetensors."""
        return {k: v.detach().cpu().clone().contiguous() for k, v in self.splats.items()}

    @classmethod
    def from_state_tensors(cls, state: dict[str, Tensor]) -> "Gaussians":
        missing = {"means", "scales", "quats", "opacities", "sh0"} - set(state)
        if missing:
            raise ValueError(f"Gaussian state is missing {sorted(missing)}")
        return cls(
            state["means"], state["scales"], state["quats"], state["opacities"], state["sh0"], state.get("shN")
        )

    # ------------------------------------------------------------------ initialisers
    @classmethod
    def from_points(
        cls,
        points: Tensor,
        colors: Optional[Tensor] = None,
        scale: Optional[float | Tensor] = None,
        opacity: float = 0.1,
        sh_degree: int = 0,
    ) -> "Gaussians":
        """Isotropic Gaussians at `points [N, 3]` with RGB `colors [N, 3]` (default gray).

        scale: the standard deviation; default the mean distance to the 3 nearest neighbours.
        """
        points = points.detach().float()
        n = points.shape[0]
        if n == 0:
            raise ValueError("from_points needs at least one point")
        if colors is None:
            colors = torch.full((n, 3), 0.5)
        colors = colors.to(points).clamp(0.0, 1.0)
        if scale is None:
            scale = _knn_scale(points)
        scale_t = torch.as_tensor(scale, dtype=torch.float32, device=points.device)
        scale_t = scale_t.expand(n) if scale_t.dim() == 0 else scale_t.reshape(n)
        log_scales = torch.log(scale_t.clamp_min(1e-7))[:, None].repeat(1, 3)  # [N, 3]
        quats = torch.zeros(n, 4, device=points.device)
        quats[:, 0] = 1.0
        if not 0.0 < opacity < 1.0:
            raise ValueError(f"initial opacity must be in (0, 1), got {opacity}")
        opac = torch.full((n,), math.log(opacity / (1.0 - opacity)), device=points.device)
        sh0 = rgb_to_sh0(colors)[:, None, :]  # [N, 1, 3]
        shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, device=points.device)
        return cls(points.clone(), log_scales, quats, opac, sh0, shN)

    @classmethod
    def random_ball(
        cls,
        num: int,
        radius: float = 0.5,
        scale: Optional[float] = None,
        opacity: float = 0.1,
        sh_degree: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> "Gaussians":
        """Object init: `num` Gaussians uniform in a ball of `radius`, random colours."""
        if num <= 0:
            raise ValueError(f"number of Gaussians must be positive, got {num}")
        d = torch.randn(num, 3, generator=generator)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        r = radius * torch.rand(num, 1, generator=generator) ** (1.0 / 3.0)
        pts = d * r
        colors = torch.rand(num, 3, generator=generator)
        if scale is None:
            # spacing of num points in the ball volume
            scale = 0.5 * radius * (4.0 / 3.0 * math.pi / num) ** (1.0 / 3.0)
        return cls.from_points(pts, colors, scale=scale, opacity=opacity, sh_degree=sh_degree)

    @classmethod
    def random_box_shell(
        cls,
        num: int,
        lo: tuple[float, float, float] = (-2.0, -2.0, 0.0),
        hi: tuple[float, float, float] = (2.0, 2.0, 2.5),
        scale: Optional[float] = None,
        opacity: float = 0.1,
        sh_degree: int = 0,
        generator: Optional[torch.Generator] = None,
        flatness: float = 1.0,
    ) -> "Gaussians":
        """Scene init: `num` Gaussians on the six faces of the box [lo, hi] (a room seen from inside),
        faces sampled in proportion to their areas.

        flatness: the scale across the face as a fraction of the scale along it (1: isotropic;
            0.1: discs lying on the walls, so the rendered depth is the wall's from the first step).
        """
        if not 0.0 < flatness <= 1.0:
            raise ValueError(f"flatness must be in (0, 1], got {flatness}")
        if num <= 0:
            raise ValueError(f"number of Gaussians must be positive, got {num}")
        lo_t, hi_t = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
        size = hi_t - lo_t
        if bool((size <= 0).any()):
            raise ValueError(f"box must have hi > lo on every axis, got lo={lo}, hi={hi}")
        # face f in 0..5: axis = f // 2, side = f % 2 (0 -> lo, 1 -> hi)
        areas = torch.tensor([size[(a + 1) % 3] * size[(a + 2) % 3] for a in range(3) for _ in range(2)])
        faces = torch.multinomial(areas / areas.sum(), num, replacement=True, generator=generator)  # [N]
        u = torch.rand(num, 3, generator=generator)
        pts = lo_t + u * size  # [N, 3]
        axis = faces // 2
        side = (faces % 2).float()
        pts[torch.arange(num), axis] = lo_t[axis] + side * size[axis]
        colors = torch.rand(num, 3, generator=generator)
        if scale is None:
            scale = 0.5 * math.sqrt(float(areas.sum()) / num)
        g = cls.from_points(pts, colors, scale=scale, opacity=opacity, sh_degree=sh_degree)
        with torch.no_grad():  # identity rotations: the face normal is the world axis `axis`
            g.splats["scales"][torch.arange(num), axis] += math.log(flatness)
        return g


def _knn_scale(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """Mean distance to the k nearest neighbours of each point ([N]), by chunked brute force."""
    n = points.shape[0]
    if n == 1:
        return torch.full((1,), 0.01, device=points.device)
    k = min(k, n - 1)
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(points[i : i + chunk], points)  # [c, N]
        vals = d.topk(k + 1, largest=False).values[:, 1:]  # drop self
        out.append(vals.mean(dim=-1))
    return torch.cat(out).clamp_min(1e-4)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Unit quaternions w x y z [..., 4] -> rotation matrices [..., 3, 3]."""
    w, x, y, z = quats.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
