"""Ground-truth ShapeWorld renders by ray casting (open3d `RaycastingScene`, Embree).

For every pixel, S x S rays go through the sub-pixel centres ((j*S + s + 0.5) / S in pixel
units, so that S = 1 is the pinhole pixel centre at +0.5 of K), then the sub-samples are
box-filtered:
- rgb: mean of the shaded sub-samples, misses showing the background (white);
- alpha: the fraction of sub-samples that hit;
- depth (camera z) and normal (world, unit): mean over the hit sub-samples only, normals
  renormalised; 0 where nothing is hit.
Ray directions are K^-1 (u, v, 1) rotated to world, so the hit distance *is* camera z.

Textured objects ("a red striped cube", texture.py) take a phase per camera (`phase=`); their hit
sub-samples are labelled by the stripe band of the hit point (part 0 the colour, part 1 white)
instead of the triangle's label, so the same per-part sums and `compose_gt` render them. Plain
prompts never reach that branch: their renders are bit-identical to the code before textures.

Speed: the scene of each shape (and the room) is built once and cached; all cameras showing
one geometry are cast together (in calls of at most `max_rays` rays); for objects only the
pixels that can see the shape's bounding sphere get rays (the others are background, exactly
as if they had been cast); the per-ray arithmetic runs on one torch thread (see `render_gt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from .texture import STRIPE_WHITE, check_phase, stripe_band
from .vocab import CEILING_COLOUR, COLOURS, ObjectPrompt, Prompt, RoomPrompt, as_prompt
from .world import CEILING, FLOOR, WALL, WorldMesh, shade, world_mesh

OBJECT_BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)
MAX_RAYS_PER_CAST = 1 << 20  # rays per cast_rays call (memory bound: ~100 bytes a ray)


@dataclass
class GTRender:
    rgb: Tensor  # [B, H, W, 3] float32 in [0, 1], composited on the background
    alpha: Tensor  # [B, H, W, 1] fraction of covered sub-samples
    depth: Tensor  # [B, H, W, 1] camera z in metres, 0 where empty
    normal: Tensor  # [B, H, W, 3] world-space unit normal, 0 where empty

    def __len__(self) -> int:
        return self.rgb.shape[0]


@lru_cache(maxsize=None)
def _scene(key: str):  # -> open3d.t.geometry.RaycastingScene
    """The cached ray-casting scene of a shape name or "room"."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(world_mesh(key).to_open3d())
    return scene


def scene_key(prompt: Prompt) -> str:
    """Which geometry a prompt shows: its shape name, or "room"."""
    return prompt.shape if isinstance(prompt, ObjectPrompt) else "room"


def part_albedos(prompt: Prompt) -> Tensor:
    """Albedo per part label [3, 3]: objects use one colour; striped objects (colour, white, white)
    (part 0 the colour band, 1 the white band); rooms (WALL, FLOOR, CEILING)."""
    if isinstance(prompt, ObjectPrompt):
        if prompt.texture is not None:
            return torch.tensor([prompt.albedo, STRIPE_WHITE, STRIPE_WHITE], dtype=torch.float32)
        return torch.tensor([prompt.albedo] * 3, dtype=torch.float32)
    if isinstance(prompt, RoomPrompt):
        table = [None] * 3
        table[WALL], table[FLOOR], table[CEILING] = COLOURS[prompt.wall], COLOURS[prompt.floor], COLOURS[CEILING_COLOUR]
        return torch.tensor(table, dtype=torch.float32)
    raise TypeError(f"expected an ObjectPrompt or RoomPrompt, got {type(prompt).__name__}")


def pixel_centre_dirs(cameras: Cameras) -> Tensor:
    """World directions [B, H, W, 3] through the pixel centres (+0.5), camera-z component 1."""
    return subpixel_dirs(cameras, 1)


def subpixel_dirs(cameras: Cameras, supersample: int) -> Tensor:
    """World directions [B, H*S, W*S, 3] through the sub-pixel centres, camera-z component 1."""
    S, H, W = supersample, cameras.height, cameras.width
    Ks = cameras.Ks.float().cpu()  # [B, 3, 3]
    u = (torch.arange(W * S, dtype=torch.float32) + 0.5) / S  # [W*S] pixel units
    v = (torch.arange(H * S, dtype=torch.float32) + 0.5) / S  # [H*S]
    x = (u[None, :] - Ks[:, 0, 2:3]) / Ks[:, 0, 0:1]  # [B, W*S]
    y = (v[None, :] - Ks[:, 1, 2:3]) / Ks[:, 1, 1:2]  # [B, H*S]
    R = cameras.viewmats[:, :3, :3].float().cpu()  # [B, 3, 3] world-to-camera rotation (rows = camera axes)
    # d_world = R^T (x, y, 1) = x * R[0] + y * R[1] + R[2]
    return (
        x[:, None, :, None] * R[:, None, None, 0, :]
        + y[:, :, None, None] * R[:, None, None, 1, :]
        + R[:, None, None, 2, :]
    )  # [B, H*S, W*S, 3]


def active_pixels(cameras: Cameras, centre: Tensor, radius: float) -> Tensor:
    """Flat indices [P] into B*H*W of the pixels whose footprint can see the sphere (centre [3], radius).

    A pixel is kept when its centre ray passes within radius + margin of the centre, the margin
    bounding how far any sub-pixel ray of the pixel strays from the centre ray at that distance.
    """
    d = torch.nn.functional.normalize(pixel_centre_dirs(cameras), dim=-1)  # [B, H, W, 3]
    c = centre[None, :] - cameras.centers.float().cpu()  # [B, 3] camera -> sphere centre
    along = (d * c[:, None, None, :]).sum(-1)  # [B, H, W]
    perp = (c.square().sum(-1)[:, None, None] - along.square()).clamp_min(0.0).sqrt()  # [B, H, W]
    Ks = cameras.Ks.float().cpu()
    half_diag = 0.5 * (Ks[:, 0, 0].reciprocal().square() + Ks[:, 1, 1].reciprocal().square()).sqrt()  # [B] tan units
    dist = c.norm(dim=-1)  # [B]
    margin = (dist + radius) * half_diag * 1.05 + 1e-4  # [B]
    keep = (perp <= radius + margin[:, None, None]) & (along >= -radius - margin[:, None, None])
    keep |= (dist <= radius + margin)[:, None, None]  # camera inside the sphere: everything
    return torch.nonzero(keep.reshape(-1)).squeeze(1)


def subpixel_rays(cameras: Cameras, pix: Tensor, supersample: int) -> Tensor:
    """Rays [P, S*S, 6] (origin, direction with camera-z 1) through the sub-pixel centres of the
    flat pixel indices `pix [P]` (into B*H*W), sub-samples in row-major order."""
    S, H, W = supersample, cameras.height, cameras.width
    b, rem = pix // (H * W), pix % (H * W)
    i, j = rem // W, rem % W  # [P] row, column
    Ks = cameras.Ks.float().cpu()  # [B, 3, 3]
    R = cameras.viewmats[:, :3, :3].float().cpu()  # [B, 3, 3] rows = camera axes in world
    u = (torch.arange(W * S, dtype=torch.float32) + 0.5) / S  # [W*S] sub-columns, pixel units
    v = (torch.arange(H * S, dtype=torch.float32) + 0.5) / S  # [H*S] sub-rows
    # d_world = R^T (x, y, 1) = x R[0] + (y R[1] + R[2]): separable in sub-column and sub-row
    X = ((u[None, :] - Ks[:, 0, 2:3]) / Ks[:, 0, 0:1])[..., None] * R[:, None, 0, :]  # [B, W*S, 3]
    Y = ((v[None, :] - Ks[:, 1, 2:3]) / Ks[:, 1, 1:2])[..., None] * R[:, None, 1, :] + R[:, None, 2, :]  # [B, H*S, 3]
    Xp = X.reshape(-1, W, S, 3)[b, j]  # [P, S, 3]
    Yp = Y.reshape(-1, H, S, 3)[b, i]  # [P, S, 3]
    rays = torch.empty(pix.shape[0], S, S, 6)
    rays[..., 0:3] = cameras.centers.float().cpu()[b][:, None, None, :]
    torch.add(Yp[:, :, None, :], Xp[:, None, :, :], out=rays[..., 3:6])
    return rays.reshape(-1, S * S, 6)


def _cast(key: str, rays: Tensor) -> tuple[Tensor, Tensor]:
    """Hit distance [n] (inf on a miss) and triangle id [n] (int64, -1 on a miss) of rays [n, 6]."""
    import open3d as o3d

    out = _scene(key).cast_rays(o3d.core.Tensor.from_numpy(rays.contiguous().numpy()))
    t = torch.from_numpy(out["t_hit"].numpy().copy())
    prim = torch.from_numpy(out["primitive_ids"].numpy().astype(np.int64))
    prim[~torch.isfinite(t)] = -1
    return t, prim


def _accumulate(mesh: WorldMesh, key: str, rays: Tensor, pix: Tensor, sums: Tensor, phase: Optional[Tensor] = None) -> None:
    """Cast `rays [P, S*S, 6]` of pixels `pix [P]` and add their hit sub-samples into `sums [B*H*W, 8]`:
    columns 0-2 the shading factor AMBIENT + DIFFUSE max(0, n.l) of the parts labelled 0, 1, 2
    (to be multiplied by the parts' albedos), 3-5 the normal, 6 the depth, 7 the hit count.
    phase [P] (striped objects): the part label is the stripe band of the hit point instead."""
    P, SS = rays.shape[0], rays.shape[1]
    t, prim = _cast(key, rays.reshape(-1, 6))  # [n], n = P * SS
    hit = prim >= 0  # [n]
    t = torch.where(hit, t, torch.zeros_like(t))
    prim = prim.clamp_min(0)
    r = rays.reshape(-1, 6)
    points = torch.addcmul(r[:, 0:3], t[:, None], r[:, 3:6])  # [n, 3]
    feats = torch.empty(t.shape[0], 8)
    normal = feats[:, 3:6]
    torch.mul(mesh.normals_at(points, prim), hit[:, None], out=normal)  # [n, 3], 0 on a miss
    factor = shade(torch.ones(()), normal).squeeze(-1) * hit  # [n]
    if phase is not None:  # striped: the band of each hit point is its part
        band = stripe_band(points[:, 2], phase.repeat_interleave(SS))  # [n] 0 colour, 1 white
        feats[:, 0:3] = 0.0
        feats[:, 0:3].scatter_(1, band[:, None], factor[:, None])
    elif mesh.labels.max() == 0:  # one part: every factor goes to label 0
        feats[:, 0] = factor
        feats[:, 1:3] = 0.0
    else:
        labels = torch.from_numpy(mesh.labels)[prim]  # [n]
        feats[:, 0:3] = 0.0
        feats[:, 0:3].scatter_(1, labels[:, None], factor[:, None])
    feats[:, 6] = t
    feats[:, 7] = hit
    sums.index_add_(0, pix, feats.reshape(P, SS, 8).sum(1))


class _TorchThreads:
    """Temporarily set torch's intra-op thread count (None: leave it)."""

    def __init__(self, n: Optional[int]) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n is not None:
            torch.set_num_threads(self.old)


def render_gt(
    prompt: str | Prompt | Sequence[str | Prompt],
    cameras: Cameras,
    supersample: int = 4,
    max_rays: int = MAX_RAYS_PER_CAST,
    cull: bool = True,
    torch_threads: Optional[int] = 1,
    phase: "float | Sequence[Optional[float]] | None" = None,
) -> GTRender:
    """Ground-truth render of a ShapeWorld prompt from every camera (CPU tensors).

    prompt: one prompt (text or parsed) for all cameras, or a sequence with one per camera
        (objects and rooms may be mixed; cameras are grouped by geometry internally).
    supersample: S, rays per pixel are S x S (the spec's anti-aliasing is S = 4).
    max_rays: at most this many rays per ray-casting call (bounds the memory).
    cull: cast rays only for pixels that can see the geometry's bounding sphere (same result).
    torch_threads: torch threads for the per-ray arithmetic (1 by default: the work is many small
        ops, and OpenMP barriers on a shared, oversubscribed machine cost more than they gain;
        Embree's ray casting uses every core regardless). None keeps the current setting.
    phase: the stripe phase (metres, texture.py) of textured prompts: one for all cameras, or one per
        camera (None for the plain ones); a textured prompt without a phase is an error (its ground
        truth is a set over phases: pick one, e.g. from texture.phase_grid()).
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    B, S = len(cameras), supersample
    if isinstance(prompt, (str, ObjectPrompt, RoomPrompt)):
        prompts = [as_prompt(prompt)] * B
    else:
        prompts = [as_prompt(p) for p in prompt]
        if len(prompts) != B:
            raise ValueError(f"got {len(prompts)} prompts for {B} cameras: pass one prompt, or one per camera")
    phases = stripe_phases(prompts, phase)
    with _TorchThreads(torch_threads):
        albedos = torch.stack([part_albedos(p) for p in prompts]) if B else torch.zeros(0, 3, 3)  # [B, 3, 3]
        sums = gt_sums([scene_key(p) for p in prompts], cameras, S, max_rays, cull, phases)
        return compose_gt(sums, albedos, S)


def stripe_phases(prompts: Sequence[Prompt], phase: "float | Sequence[Optional[float]] | None") -> Optional[list[Optional[float]]]:
    """One phase per camera (None for plain prompts), or None when no prompt is textured."""
    textured = [isinstance(p, ObjectPrompt) and p.texture is not None for p in prompts]
    if not any(textured):
        return None
    if phase is None:
        raise ValueError("a textured prompt's ground truth is a set over stripe phases: pass phase= (metres, "
                         "one for all cameras or one per camera), e.g. from steinsplat.shapeworld.texture.phase_grid()")
    per = [phase] * len(prompts) if isinstance(phase, (int, float)) else list(phase)
    if len(per) != len(prompts):
        raise ValueError(f"got {len(per)} phases for {len(prompts)} cameras: pass one phase, or one per camera")
    out: list[Optional[float]] = []
    for t, ph in zip(textured, per):
        if t and ph is None:
            raise ValueError("every textured prompt needs a phase (got None for one): pass a float per camera")
        out.append(check_phase(ph) if t else None)
    return out


def gt_sums(keys: Sequence[str], cameras: Cameras, supersample: int = 4, max_rays: int = MAX_RAYS_PER_CAST,
            cull: bool = True, phases: Optional[Sequence[Optional[float]]] = None) -> Tensor:
    """The colour-free part of a ground-truth render: [B, H, W, 8] sums over each pixel's hit sub-samples
    (columns 0-2 the shading factor of the parts labelled 0, 1, 2; 3-5 the normal; 6 the depth; 7 the
    hit count), one geometry key (shape name or "room") per camera. `compose_gt` turns them into a
    GTRender for any albedos, so one cast serves every colour of a shape. phases: one per camera, a
    float for a striped object (its band labels the parts: 0 colour, 1 white) or None (plain)."""
    B, H, W, S = len(cameras), cameras.height, cameras.width, supersample
    if len(keys) != B:
        raise ValueError(f"got {len(keys)} geometry keys for {B} cameras: pass one per camera")
    sums = torch.zeros(B * H * W, 8)  # per-part shading factors, normal, depth, hits: summed over hits
    per_cast = max(1, max_rays // (S * S))  # pixels per cast_rays call
    if phases is not None and len(phases) != B:
        raise ValueError(f"got {len(phases)} phases for {B} cameras: pass one per camera (None for plain)")
    striped = [phases is not None and phases[i] is not None for i in range(B)]
    for key, tex in dict.fromkeys(zip(keys, striped)):
        mesh = world_mesh(key)
        idx = torch.tensor([i for i, k in enumerate(keys) if k == key and striped[i] == tex], dtype=torch.long)
        cam_phase = torch.tensor([float(phases[i]) for i in idx.tolist()]) if tex else None  # [len(idx)] metres
        sub = cameras[idx]
        if cull:
            centre, radius = mesh.bounding_sphere()
            pix = active_pixels(sub, torch.tensor(centre, dtype=torch.float32), radius)  # [P] into len(idx)*H*W
        else:
            pix = torch.arange(len(idx) * H * W)
        for p in pix.split(per_cast):
            rays = subpixel_rays(sub, p, S)  # [p, S*S, 6]
            gpix = idx[p // (H * W)] * (H * W) + p % (H * W)  # pixel index in the full batch
            _accumulate(mesh, key, rays, gpix, sums, None if cam_phase is None else cam_phase[p // (H * W)])
    return sums.reshape(B, H, W, 8)


def compose_gt(sums: Tensor, albedos: Tensor, supersample: int = 4) -> GTRender:
    """A GTRender from `gt_sums` [B, H, W, 8] and the parts' albedos [B, 3, 3] (white background):
    rgb = sum_k factor_k albedo_k / S^2 + (1 - alpha) background, alpha = hits / S^2."""
    S = supersample
    n_hit = sums[..., 7:8]  # [B, H, W, 1] hit sub-samples per pixel
    alpha = n_hit / (S * S)
    background = torch.tensor(OBJECT_BACKGROUND, dtype=torch.float32)
    rgb = torch.einsum("bhwk,bkc->bhwc", sums[..., 0:3], albedos) / (S * S) + (1.0 - alpha) * background
    depth = torch.where(n_hit > 0, sums[..., 6:7] / n_hit.clamp_min(1.0), torch.zeros_like(n_hit))
    nsum = sums[..., 3:6]
    nlen = nsum.norm(dim=-1, keepdim=True)
    normal = torch.where(nlen > 1e-12, nsum / nlen.clamp_min(1e-12), torch.zeros_like(nsum))
    return GTRender(rgb=rgb, alpha=alpha, depth=depth, normal=normal)
