"""Camera batches, samplers and evaluation rigs (conventions of docs/shapeworld.md, section Cameras).

- World: right-handed, +Z up.
- Camera frame: OpenCV (x right, y down, z forward); `viewmats` are world-to-camera.
- Pinhole `Ks` with the principal point at the image centre; pixel centres at +0.5.
- Orbit cameras: elevation `el` (degrees above the XY plane), azimuth `az` (degrees
  from +X towards +Y), distance `d`; position (d cos el cos az, d cos el sin az, d sin el),
  looking at the origin, up +Z.
- Inside-out cameras: a fixed position, `yaw` (degrees from +X towards +Y) and
  `pitch` (degrees up from horizontal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

ViewTag = Literal["front", "side", "back", "overhead"]
VIEW_TAGS: tuple[ViewTag, ...] = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras sharing one image size."""

    viewmats: Tensor  # [B, 4, 4] world-to-camera (OpenCV axes)
    Ks: Tensor  # [B, 3, 3] intrinsics
    width: int
    height: int
    # Orbit parameters for objects (degrees, degrees, metres) or yaw/pitch for scenes; used for
    # conditioning priors and view tags. NaN where unknown.
    elevation: Optional[Tensor] = None  # [B]
    azimuth: Optional[Tensor] = None  # [B]
    distance: Optional[Tensor] = None  # [B]
    kind: Literal["orbit", "inside_out", "custom"] = "custom"

    def __post_init__(self) -> None:
        if self.viewmats.dim() != 3 or self.viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must be [B, 4, 4], got {tuple(self.viewmats.shape)}")
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise ValueError(f"Ks must be [B, 3, 3] with B={self.viewmats.shape[0]}, got {tuple(self.Ks.shape)}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device: torch.device | str) -> "Cameras":
        def mv(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device)

        return Cameras(
            self.viewmats.to(device), self.Ks.to(device), self.width, self.height,
            mv(self.elevation), mv(self.azimuth), mv(self.distance), self.kind,
        )

    def __getitem__(self, idx: int | slice | Tensor) -> "Cameras":
        def sel(t: Optional[Tensor]) -> Optional[Tensor]:
            if t is None:
                return None
            out = t[idx]
            return out.unsqueeze(0) if isinstance(idx, int) else out

        return Cameras(
            sel(self.viewmats), sel(self.Ks), self.width, self.height,
            sel(self.elevation), sel(self.azimuth), sel(self.distance), self.kind,
        )

    @staticmethod
    def cat(cams: Sequence["Cameras"]) -> "Cameras":
        if not cams:
            raise ValueError("cannot concatenate zero camera batches")
        w, h, kind = cams[0].width, cams[0].height, cams[0].kind
        if any(c.width != w or c.height != h for c in cams):
            raise ValueError("all camera batches must share one image size")

        def cat_opt(name: str) -> Optional[Tensor]:
            ts = [getattr(c, name) for c in cams]
            return None if any(t is None for t in ts) else torch.cat(ts)

        return Cameras(
            torch.cat([c.viewmats for c in cams]), torch.cat([c.Ks for c in cams]), w, h,
            cat_opt("elevation"), cat_opt("azimuth"), cat_opt("distance"),
            kind if all(c.kind == kind for c in cams) else "custom",
        )

    @property
    def camtoworlds(self) -> Tensor:  # [B, 4, 4]
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:  # [B, 3] camera positions in world
        R = self.viewmats[:, :3, :3]
        t = self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)

    def resized(self, width: int, height: int) -> "Cameras":
        """Same cameras at another resolution (intrinsics scaled)."""
        Ks = self.Ks.clone()
        Ks[:, 0] *= width / self.width
        Ks[:, 1] *= height / self.height
        return Cameras(self.viewmats, Ks, width, height, self.elevation, self.azimuth, self.distance, self.kind)

    def view_tags(
        self, front_azimuth: float = 0.0, front_span: float = 90.0, back_span: float = 90.0,
        overhead_elevation: float = 60.0,
    ) -> list[ViewTag]:
        """DreamFusion-style view tags for view-dependent prompting.

        overhead: elevation > overhead_elevation; front: |az - front_azimuth| < front_span/2;
        back: |az - front_azimuth - 180| < back_span/2; side otherwise. Cameras without an
        azimuth (custom) are tagged from their viewing direction.
        """
        if self.azimuth is not None and self.elevation is not None:
            az, el = self.azimuth, self.elevation
        else:
            c = self.centers
            az = torch.rad2deg(torch.atan2(c[:, 1], c[:, 0]))
            el = torch.rad2deg(torch.atan2(c[:, 2], c[:, :2].norm(dim=-1)))
        tags: list[ViewTag] = []
        for a, e in zip(az.tolist(), el.tolist()):
            rel = (a - front_azimuth + 180.0) % 360.0 - 180.0  # (-180, 180]
            if e > overhead_elevation:
                tags.append("overhead")
            elif abs(rel) < front_span / 2:
                tags.append("front")
            elif abs(rel) > 180.0 - back_span / 2:
                tags.append("back")
            else:
                tags.append("side")
        return tags


# ---------------------------------------------------------------------------- builders
def intrinsics(fovy_deg: float | Tensor, width: int, height: int) -> Tensor:
    """Pinhole K ([B, 3, 3] or [3, 3]) from the vertical field of view, square pixels."""
    fovy = torch.as_tensor(fovy_deg, dtype=torch.float32)
    fy = 0.5 * height / torch.tan(torch.deg2rad(fovy) / 2)
    K = torch.zeros(fovy.shape + (3, 3))
    K[..., 0, 0] = fy
    K[..., 1, 1] = fy
    K[..., 0, 2] = width / 2.0
    K[..., 1, 2] = height / 2.0
    K[..., 2, 2] = 1.0
    return K


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """World-to-camera matrices [B, 4, 4] (OpenCV: x right, y down, z forward) for cameras at
    `eye [B, 3]` looking at `target [B, 3]` with world up `up` (default +Z)."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0]).expand_as(eye)
    fwd = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    right = torch.linalg.cross(fwd, up, dim=-1)  # camera +x
    # looking straight along +-up: pick any perpendicular right vector
    bad = right.norm(dim=-1) < 1e-6
    if bool(bad.any()):
        alt = torch.tensor([1.0, 0.0, 0.0]).expand_as(eye)
        right = torch.where(bad[:, None], torch.linalg.cross(fwd, alt, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(fwd, right, dim=-1)  # camera +y
    R = torch.stack([right, down, fwd], dim=1)  # [B, 3, 3] rows = camera axes in world
    V = torch.eye(4).repeat(eye.shape[0], 1, 1)
    V[:, :3, :3] = R
    V[:, :3, 3] = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    return V


def orbit_cameras(
    elevation: Tensor | Sequence[float],
    azimuth: Tensor | Sequence[float],
    distance: Tensor | Sequence[float] | float,
    fovy: float | Tensor = 40.0,
    width: int = 64,
    height: int = 64,
) -> Cameras:
    """Cameras on a sphere around the origin, looking at it, up +Z (fovy: one value, or one per camera [B])."""
    el = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1)
    az = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)
    d = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand(el.shape[0]).clone()
    if not (el.shape == az.shape == d.shape):
        raise ValueError("elevation, azimuth and distance must have one value per camera")
    if bool((d <= 0).any()):
        raise ValueError("orbit distance must be positive")
    er, ar = torch.deg2rad(el), torch.deg2rad(az)
    eye = torch.stack([d * torch.cos(er) * torch.cos(ar), d * torch.cos(er) * torch.sin(ar), d * torch.sin(er)], -1)
    V = look_at(eye, torch.zeros_like(eye))
    K = intrinsics(fovy, width, height).expand(el.shape[0], 3, 3).clone()
    return Cameras(V, K, width, height, el, az, d, kind="orbit")


def inside_out_cameras(
    yaw: Tensor | Sequence[float],
    pitch: Tensor | Sequence[float],
    position: Sequence[float] = (0.0, 0.0, 1.2),
    fovy: float = 60.0,
    width: int = 64,
    height: int = 64,
) -> Cameras:
    """Cameras at `position` looking outwards along (yaw, pitch), up +Z.

    Stored in the orbit fields as elevation = pitch, azimuth = yaw, distance = NaN.
    """
    yw = torch.as_tensor(yaw, dtype=torch.float32).reshape(-1)
    pt = torch.as_tensor(pitch, dtype=torch.float32).reshape(-1)
    if yw.shape != pt.shape:
        raise ValueError("yaw and pitch must have one value per camera")
    yr, pr = torch.deg2rad(yw), torch.deg2rad(pt)
    eye = torch.tensor(position, dtype=torch.float32).expand(yw.shape[0], 3).clone()
    fwd = torch.stack([torch.cos(pr) * torch.cos(yr), torch.cos(pr) * torch.sin(yr), torch.sin(pr)], -1)
    V = look_at(eye, eye + fwd)
    K = intrinsics(fovy, width, height).expand(yw.shape[0], 3, 3).clone()
    return Cameras(V, K, width, height, pt, yw, torch.full_like(yw, float("nan")), kind="inside_out")


# ---------------------------------------------------------------------------- samplers
def stratified_circle(batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """[B] points in [0, 1): one uniform offset u plus evenly spaced steps, (u + i / B) mod 1.

    Each point is uniform on [0, 1) by itself (a rotation of a uniform offset), so anything averaged
    over the views keeps its expectation; together they cover the B strata [k/B, (k+1)/B) once each
    (a rotated lattice: the azimuths of one step never bunch up)."""
    u = torch.rand((), generator=generator)
    return torch.remainder(u + torch.arange(batch, dtype=torch.float32) / batch, 1.0)


@dataclass
class OrbitSampler:
    """Random orbit cameras around an object (defaults: training ranges, docs/shapeworld.md, section Cameras)."""

    elevation: tuple[float, float] = (-10.0, 60.0)  # degrees, uniform
    azimuth: tuple[float, float] = (0.0, 360.0)  # degrees, uniform in [lo, hi)
    distance: tuple[float, float] = (1.6, 2.0)  # metres, uniform
    fovy: float = 40.0  # vertical field of view, degrees (when fovy_range is None)
    width: int = 64
    height: int = 64
    fovy_range: Optional[tuple[float, float]] = None  # degrees, uniform per camera, drawn after the other draws (None: fovy)

    def sample(self, batch: int, generator: Optional[torch.Generator] = None, stratified: bool = False) -> Cameras:
        """`batch` cameras; stratified: azimuths evenly spaced around the circle from one random offset
        (`stratified_circle`), each still uniform on its own; elevation and distance drawn as usual."""
        if stratified:
            u = torch.rand(batch, 2, generator=generator)  # [B, 2] elevation, distance
            el = self.elevation[0] + u[:, 0] * (self.elevation[1] - self.elevation[0])
            az = self.azimuth[0] + stratified_circle(batch, generator) * (self.azimuth[1] - self.azimuth[0])
            d = self.distance[0] + u[:, 1] * (self.distance[1] - self.distance[0])
            return orbit_cameras(el, az % 360.0, d, self._fovy(batch, generator), self.width, self.height)
        u = torch.rand(batch, 3, generator=generator)
        el = self.elevation[0] + u[:, 0] * (self.elevation[1] - self.elevation[0])
        az = self.azimuth[0] + u[:, 1] * (self.azimuth[1] - self.azimuth[0])
        d = self.distance[0] + u[:, 2] * (self.distance[1] - self.distance[0])
        return orbit_cameras(el, az % 360.0, d, self._fovy(batch, generator), self.width, self.height)

    def _fovy(self, batch: int, generator: Optional[torch.Generator]) -> float | Tensor:
        """The fixed fovy, or [B] uniform in fovy_range (no draw at all without a range: the fixed-fovy
        runs consume the generator exactly as before)."""
        if self.fovy_range is None:
            return self.fovy
        lo, hi = self.fovy_range
        return lo + torch.rand(batch, generator=generator) * (hi - lo)  # [B]


@dataclass
class InsideOutSampler:
    """Random cameras looking out from a point inside a scene (defaults: docs/shapeworld.md, section Cameras)."""

    position: tuple[float, float, float] = (0.0, 0.0, 1.2)
    yaw: tuple[float, float] = (0.0, 360.0)  # degrees, uniform in [lo, hi)
    pitch: tuple[float, float] = (-15.0, 15.0)  # degrees, uniform
    fovy: float = 60.0
    width: int = 64
    height: int = 64

    def sample(self, batch: int, generator: Optional[torch.Generator] = None, stratified: bool = False) -> Cameras:
        """`batch` cameras; stratified: yaws evenly spaced from one random offset (`stratified_circle`)."""
        if stratified:
            pitch_u = torch.rand(batch, generator=generator)  # [B]
            yaw = self.yaw[0] + stratified_circle(batch, generator) * (self.yaw[1] - self.yaw[0])
            pitch = self.pitch[0] + pitch_u * (self.pitch[1] - self.pitch[0])
            return inside_out_cameras(yaw % 360.0, pitch, self.position, self.fovy, self.width, self.height)
        u = torch.rand(batch, 2, generator=generator)
        yaw = self.yaw[0] + u[:, 0] * (self.yaw[1] - self.yaw[0])
        pitch = self.pitch[0] + u[:, 1] * (self.pitch[1] - self.pitch[0])
        return inside_out_cameras(yaw % 360.0, pitch, self.position, self.fovy, self.width, self.height)


# ---------------------------------------------------------------------------- evaluation rigs
EVAL_AZIMUTHS = tuple(float(a) for a in range(0, 360, 45))


def object_eval_cameras(width: int = 64, height: int = 64) -> Cameras:
    """The fixed object evaluation rig: el 20, d 1.8, fovy 40, az 0, 45, ..., 315."""
    n = len(EVAL_AZIMUTHS)
    return orbit_cameras([20.0] * n, EVAL_AZIMUTHS, 1.8, 40.0, width, height)


def scene_eval_cameras(width: int = 64, height: int = 64) -> Cameras:
    """The fixed scene evaluation rig: position (0, 0, 1.2), pitch 0, yaw 0, 45, ..., 315, fovy 60."""
    n = len(EVAL_AZIMUTHS)
    return inside_out_cameras(EVAL_AZIMUTHS, [0.0] * n, (0.0, 0.0, 1.2), 60.0, width, height)


def make_sampler(mode: Literal["object", "scene"], width: int = 64, height: int = 64) -> OrbitSampler | InsideOutSampler:
    if mode == "object":
        return OrbitSampler(width=width, height=height)
    if mode == "scene":
        return InsideOutSampler(width=width, height=height)
    raise ValueError(f"unknown mode {mode!r}: use 'object' or 'scene'")

