"""gsplat's own `rasterization()` on the CPU, for tests: its CUDA ops swapped for gsplat's PyTorch
reference implementations (`gsplat.cuda._torch_impl`).

`gsplat.rendering.rasterization` is gsplat's real Python entry point (argument checks, colour
and SH handling, render modes, the `meta` dict its strategies read). Below it, five CUDA ops are
replaced, at the names `gsplat/rendering.py` imports them under, by adapters that keep the CUDA
wrapper's signature and argument checks (`gsplat/cuda/_wrapper.py`: shapes, supported channel
counts and the zero-padding to them, tile-grid sizes) and then call gsplat's reference:

    fully_fused_projection -> _quat_scale_to_covar_preci + _fully_fused_projection
    isect_tiles            -> _isect_tiles (a Python double loop: fine for small scenes)
    isect_offset_encode    -> _isect_offset_encode
    rasterize_to_pixels    -> _rasterize_to_pixels (front-to-back batches of `accumulate`)
    spherical_harmonics    -> _spherical_harmonics

Every adapter also refuses what the CUDA kernels would refuse and the reference would let pass:
float tensors other than float32 (the kernels read `data_ptr<float>()`), and modes the reference
does not implement (packed, absgrad, tile masks, radius_clip) fail loudly instead of silently
differing.

Shimmed, because gsplat's reference path cannot run on CPU there (and only there):
  1. `gsplat.cuda._wrapper.rasterize_to_indices_in_range`, which `_rasterize_to_pixels` calls to
     list the contributing (Gaussian, pixel) pairs, is a CUDA kernel with no PyTorch version:
     `rasterize_to_indices_torch` below re-implements that kernel
     (`csrc/RasterizeToIndices3DGS.cu`: alpha = min(0.999, o exp(-sigma)), skipped when sigma < 0 or
     alpha < 1/255, a pixel stops before the pair that would take its transmittance to <= 1e-4).
  2. `nerfacc` (imported by `_torch_impl.accumulate` for `render_weight_from_alpha` and
     `accumulate_along_rays`) is not installed, and its packed scans are CUDA kernels: a stand-in
     module with the same two functions in plain PyTorch (autograd does the backward) is put in
     `sys.modules["nerfacc"]` while the fixture is active.
Any other gsplat CUDA op reached while active raises at once (`gsplat.cuda._backend` is replaced
by a module whose `_C` says which op is not covered), instead of trying to JIT-compile CUDA.

Known differences between gsplat's reference and its CUDA kernels (gsplat 1.5.3), kept as they are:
  - radii: the reference uses 3.33-sigma boxes and ignores `opacities`; the CUDA projection uses
    opacity-aware boxes and culls opacity < 1/255. Images are the same (pixels outside the tight
    box have alpha < 1/255 and are skipped by both); `meta["radii"]` is larger or equal.
  - the reference returns means2d/conics/depths for culled Gaussians too (CUDA leaves zeros).
"""

from __future__ import annotations

import math
import sys
import types
from typing import Optional

import torch
from torch import Tensor

SUPPORTED_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)


def _require_float32(**tensors: Optional[Tensor]) -> None:
    """The CUDA kernels read float32 (`data_ptr<float>()` raises for anything else)."""
    for name, t in tensors.items():
        if t is not None and t.is_floating_point() and t.dtype != torch.float32:
            raise RuntimeError(f"gsplat CUDA kernels read float32: {name} is {t.dtype} "
                               "(expected scalar type Float; the CPU stand-in refuses it as the kernel would)")


# ---------------------------------------------------------------------------- adapters
def fully_fused_projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
                           far_plane=1e10, radius_clip=0.0, packed=False, sparse_grad=False, calc_compensations=False,
                           camera_model="pinhole", opacities=None):
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    batch_dims = means.shape[:-2]
    N, C = means.shape[-2], viewmats.shape[-3]
    assert means.shape == batch_dims + (N, 3), means.shape
    assert viewmats.shape == batch_dims + (C, 4, 4), viewmats.shape
    assert Ks.shape == batch_dims + (C, 3, 3), Ks.shape
    if covars is not None:
        assert covars.shape == batch_dims + (N, 6), covars.shape
    else:
        assert quats is not None and scales is not None, "covars or quats and scales are required"
        assert quats.shape == batch_dims + (N, 4), quats.shape
        assert scales.shape == batch_dims + (N, 3), scales.shape
    if opacities is not None:
        assert opacities.shape == batch_dims + (N,), opacities.shape
    _require_float32(means=means, covars=covars, quats=quats, scales=scales, viewmats=viewmats, Ks=Ks,
                     opacities=opacities)
    if packed or sparse_grad:
        raise NotImplementedError("the CPU stand-in covers packed=False only (gsplat's reference has no packed mode)")
    if radius_clip > 0:
        raise NotImplementedError("the CPU stand-in does not implement radius_clip (gsplat's reference ignores it)")
    if covars is None:
        covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    else:  # upper triangle [..., 6] -> [..., 3, 3]
        i = torch.tensor([[0, 1, 2], [1, 3, 4], [2, 4, 5]], device=covars.device)
        covars = covars[..., i]
    return _fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
                                   far_plane=far_plane, calc_compensations=calc_compensations, camera_model=camera_model)


def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False, packed=False,
                n_images=None, image_ids=None, gaussian_ids=None):
    from gsplat.cuda._torch_impl import _isect_tiles

    if packed:
        raise NotImplementedError("the CPU stand-in covers packed=False only")
    image_dims = means2d.shape[:-2]
    N = means2d.shape[-2]
    assert means2d.shape == image_dims + (N, 2), means2d.shape
    assert radii.shape == image_dims + (N, 2), radii.shape
    assert depths.shape == image_dims + (N,), depths.shape
    return _isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=sort)


def isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    from gsplat.cuda._torch_impl import _isect_offset_encode

    return _isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def rasterize_to_pixels(means2d, conics, colors, opacities, image_width, image_height, tile_size, isect_offsets,
                        flatten_ids, backgrounds=None, masks=None, packed=False, absgrad=False):
    from gsplat.cuda._torch_impl import _rasterize_to_pixels

    if packed or absgrad or masks is not None:
        raise NotImplementedError("the CPU stand-in covers packed=False, absgrad=False, masks=None only")
    image_dims = means2d.shape[:-2]
    channels = colors.shape[-1]
    N = means2d.size(-2)
    assert means2d.shape == image_dims + (N, 2), means2d.shape
    assert conics.shape == image_dims + (N, 3), conics.shape
    assert colors.shape == image_dims + (N, channels), colors.shape
    assert opacities.shape == image_dims + (N,), opacities.shape
    if backgrounds is not None:
        assert backgrounds.shape == image_dims + (channels,), backgrounds.shape
    _require_float32(means2d=means2d, conics=conics, colors=colors, opacities=opacities, backgrounds=backgrounds)
    if channels > 513 or channels == 0:
        raise ValueError(f"Unsupported number of color channels: {channels}")
    pad = 0
    if channels not in SUPPORTED_CHANNELS:  # as the CUDA wrapper: zero channels up to a compiled size
        pad = (1 << (channels - 1).bit_length()) - channels
        colors = torch.cat([colors, torch.zeros(*colors.shape[:-1], pad, device=colors.device)], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros(*backgrounds.shape[:-1], pad, device=colors.device)], -1)
    tile_height, tile_width = isect_offsets.shape[-2:]
    assert tile_height * tile_size >= image_height, f"Assert Failed: {tile_height} * {tile_size} >= {image_height}"
    assert tile_width * tile_size >= image_width, f"Assert Failed: {tile_width} * {tile_size} >= {image_width}"
    img, alpha = _rasterize_to_pixels(means2d, conics, colors, opacities, image_width, image_height, tile_size,
                                      isect_offsets, flatten_ids, backgrounds=backgrounds)
    if pad:
        img = img[..., :-pad]
    return img, alpha


def spherical_harmonics(degrees_to_use, dirs, coeffs, masks=None):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    _require_float32(dirs=dirs, coeffs=coeffs)
    out = _spherical_harmonics(degrees_to_use, dirs, coeffs)  # [..., 3]
    if masks is not None:
        assert masks.shape == dirs.shape[:-1], masks.shape
        out = torch.where(masks[..., None], out, torch.zeros_like(out))
    return out


# ---------------------------------------------------------------------------- shim 1: pairs
@torch.no_grad()
def rasterize_to_indices_torch(range_start, range_end, transmittances, means2d, conics, opacities, image_width,
                               image_height, tile_size, isect_offsets, flatten_ids):
    """PyTorch version of gsplat's CUDA `rasterize_to_indices_in_range` (3DGS).

    For every pixel of every tile, walk the tile's depth-sorted intersections in batches
    [range_start, range_end) of tile_size^2 entries, starting from the pixel's `transmittances`;
    emit (Gaussian, pixel, image) for each pair with sigma >= 0 and alpha >= 1/255, stopping before
    the first pair after which the transmittance would be <= 1e-4. Pairs come out ordered by
    pixel (image-major), front to back within a pixel, as the kernel writes them.
    Returns gaussian ids [M] (per image, in [0, N)), pixel ids [M] (y * W + x), image ids [M].
    """
    image_dims = means2d.shape[:-2]
    tile_height, tile_width = isect_offsets.shape[-2:]
    N = means2d.shape[-2]
    H, W = image_height, image_width
    assert transmittances.shape == image_dims + (H, W), transmittances.shape
    assert means2d.shape == image_dims + (N, 2), means2d.shape
    assert conics.shape == image_dims + (N, 3), conics.shape
    assert opacities.shape == image_dims + (N,), opacities.shape
    assert isect_offsets.shape == image_dims + (tile_height, tile_width), isect_offsets.shape
    dev = means2d.device
    I = math.prod(image_dims)
    m2 = means2d.reshape(I * N, 2)
    cn = conics.reshape(I * N, 3)
    op = opacities.reshape(I * N)
    T0 = transmittances.reshape(I * H * W)
    starts = isect_offsets.reshape(-1).long()  # [K] first intersection of each (image, tile)
    n_isects = flatten_ids.numel()
    ends = torch.cat([starts[1:], torch.tensor([n_isects], device=dev)])
    bs = tile_size * tile_size
    lo = starts + range_start * bs
    hi = torch.minimum(starts + range_end * bs, ends)
    cnt = (hi - lo).clamp_min(0)  # [K] entries of each tile in this range
    k = torch.repeat_interleave(torch.arange(len(cnt), device=dev), cnt)  # [E] tile of each entry
    entry = lo[k] + torch.arange(len(k), device=dev) - (torch.cumsum(cnt, 0) - cnt)[k]  # [E]
    img, tile = k // (tile_height * tile_width), k % (tile_height * tile_width)
    ty, tx = tile // tile_width, tile % tile_width
    local = torch.arange(bs, device=dev)
    py = (ty[:, None] * tile_size + local[None] // tile_size).reshape(-1)  # [E * bs]
    px = (tx[:, None] * tile_size + local[None] % tile_size).reshape(-1)
    e = torch.arange(len(k), device=dev).repeat_interleave(bs)  # [E * bs] entry of each pair (in order)
    inside = (py < H) & (px < W)
    py, px, e = py[inside], px[inside], e[inside]
    g = flatten_ids.long()[entry[e]]  # [P] flat index in [I * N]
    dx = m2[g, 0] - (px.to(m2.dtype) + 0.5)
    dy = m2[g, 1] - (py.to(m2.dtype) + 0.5)
    sigma = 0.5 * (cn[g, 0] * dx * dx + cn[g, 2] * dy * dy) + cn[g, 1] * dx * dy
    alpha = torch.clamp_max(op[g] * torch.exp(-sigma), 0.999)
    ok = (sigma >= 0) & (alpha >= 1.0 / 255.0)
    pix = img[e] * (H * W) + py * W + px  # [P] global pixel id
    # pixel-major, keeping entry order (= front to back) inside each pixel
    order = torch.argsort(pix * (len(k) + 1) + e, stable=True)
    pix, g, alpha, ok = pix[order], g[order], alpha[order], ok[order]
    la = torch.where(ok, torch.log1p(-alpha.double()), torch.zeros_like(alpha, dtype=torch.float64))
    cs = torch.cumsum(la, 0)  # inclusive
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    start = torch.cummax(torch.where(first, torch.arange(len(pix), device=dev), torch.zeros_like(pix)), 0).values
    log_after = cs - (cs[start] - la[start])  # log transmittance after the pair, within its pixel
    next_T = T0[pix].double() * torch.exp(log_after)
    keep = ok & (next_T > 1e-4)
    return g[keep] % N, pix[keep] % (H * W), pix[keep] // (H * W)


# ---------------------------------------------------------------------------- shim 2: nerfacc
def _exclusive_transmittance(alphas: Tensor, ray_indices: Tensor) -> Tensor:
    """prod_{j < k, same ray} (1 - alpha_j) for pairs sorted by ray (float64 log-sum, differentiable)."""
    la = torch.log1p(-alphas.double())
    cs = torch.cumsum(la, 0)
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    idx = torch.arange(len(ray_indices), device=alphas.device)
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    return torch.exp(cs - la - (cs[start] - la[start])).to(alphas.dtype)


def render_weight_from_alpha(alphas, packed_info=None, ray_indices=None, n_rays=None, prefix_trans=None):
    """nerfacc.render_weight_from_alpha for packed samples sorted by ray: (weights, transmittance)."""
    if ray_indices is None or packed_info is not None or prefix_trans is not None:
        raise NotImplementedError("the nerfacc stand-in covers ray_indices only (what gsplat's accumulate passes)")
    if len(ray_indices) > 1 and bool((ray_indices[1:] < ray_indices[:-1]).any()):
        raise ValueError("samples must be sorted by ray")
    trans = _exclusive_transmittance(alphas, ray_indices)
    return trans * alphas, trans


def accumulate_along_rays(weights, values=None, ray_indices=None, n_rays=None):
    """nerfacc.accumulate_along_rays: sum_k w_k v_k per ray -> [n_rays, D] (D = 1 without values)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices.long(), src)


def _nerfacc_stand_in() -> types.ModuleType:
    mod = types.ModuleType("nerfacc")
    mod.__doc__ = "steinsplat test stand-in for nerfacc (tests/gsplat_cpu.py)"
    mod.render_weight_from_alpha = render_weight_from_alpha
    mod.accumulate_along_rays = accumulate_along_rays
    return mod


def _uncovered_backend() -> types.ModuleType:
    mod = types.ModuleType("gsplat.cuda._backend")

    def __getattr__(name: str):
        if name == "_C":
            raise RuntimeError("a gsplat CUDA op outside the CPU stand-in was called (tests/gsplat_cpu.py covers "
                               "projection, tile intersection, offsets, rasterisation to pixels and SH)")
        raise AttributeError(name)

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def install(monkeypatch) -> None:
    """Route gsplat.rasterization and steinsplat's gsplat backend through the stand-ins above
    (undone by `monkeypatch` at the end of the test)."""
    import gsplat.cuda._wrapper as wrapper
    import gsplat.rendering as rendering

    import steinsplat.render.gsplat_backend as backend

    for name, fn in [("fully_fused_projection", fully_fused_projection), ("isect_tiles", isect_tiles),
                     ("isect_offset_encode", isect_offset_encode), ("rasterize_to_pixels", rasterize_to_pixels),
                     ("spherical_harmonics", spherical_harmonics)]:
        assert hasattr(rendering, name), f"gsplat.rendering no longer imports {name}: update tests/gsplat_cpu.py"
        monkeypatch.setattr(rendering, name, fn)
    monkeypatch.setattr(wrapper, "rasterize_to_indices_in_range", rasterize_to_indices_torch)
    monkeypatch.setitem(sys.modules, "nerfacc", _nerfacc_stand_in())
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", _uncovered_backend())
    monkeypatch.setattr(backend, "gsplat_can_run", lambda device: True)
