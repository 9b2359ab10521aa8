"""The project's own rasteriser: sparse (pixel, Gaussian) pairs in PyTorch.

Steps for a batch of B cameras and N Gaussians:
  1. project every Gaussian (`projection.project`): centre, conic, depth, pixel box;
  2. list the pairs: for each visible Gaussian (front to back by camera depth) and each
     pixel row of its box, the pixel centres inside its alpha >= 1/255 ellipse, solved
     exactly row by row (no pair outside the ellipse is ever made);
  3. stable-sort the pairs by pixel, so each pixel's pairs are contiguous and front to back;
  4. composite (`_Composite`, a fused autograd Function):
       alpha_k = min(0.99, o_k exp(-sigma_k))           (pairs under 1/255 contribute 0)
       T_k     = prod_{j<k} (1 - alpha_j)                 segmented exclusive cumulative sum
                                                          of log(1 - alpha) in float64
       w_k     = alpha_k T_k   while T_k (1 - alpha_k) > 1e-4   (gsplat's early stop)
       C       = sum_k w_k f_k,   A = sum_k w_k
     and its backward in closed form (the 3DGS back-to-front recursion as a suffix sum):
       dL/dalpha_k = T_k s_k - (sum_{j>k} w_j s_j) / (1 - alpha_k),   s_k = G . f_k + G_A
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .common import RenderOutput, split_features
from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, project

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

LOG_T_MIN = math.log(T_MIN)  # log of the transmittance at which a ray stops


@dataclass
class _Pairs:
    """The (pixel, Gaussian) pairs of one render, in two orders.

    Pixel-major (sorted; what compositing walks): `gid`, `pix` and `crow_pix` (CSR row
    pointers over pixels: pixel p's pairs are crow_pix[p] .. crow_pix[p+1]-1).
    Gaussian-major (generation order; what the backward sums over): `crow_g` over the
    Gaussian rows `row_gid`, with `pix_pre` the pixel of each pair; `perm` maps between the orders.
    """

    gid: Tensor  # [P] flat Gaussian index b*N + n
    pix: Tensor  # [P] flat pixel index b*H*W + y*W + x, non-decreasing
    slot: Tensor  # [P] index of the pair's pixel among the covered pixels
    cov_pix: Tensor  # [Q] the covered pixels (at least one pair), increasing
    cov_first: Tensor  # [Q] their first pair
    cov_last: Tensor  # [Q] their last pair
    px: Tensor  # [P] pixel centre x (x + 0.5), float
    py: Tensor  # [P] pixel centre y (y + 0.5), float
    crow_pix: Tensor  # [n_pix + 1]
    crow_g: Tensor  # [n_rows_g + 1]
    row_gid: Tensor  # [n_rows_g]
    pix_pre: Tensor  # [P]
    perm: Tensor  # [P] sorted pair k is generated pair perm[k]
    n_pix: int
    n_rows_g: int
    width: int
    height: int


def _make_pairs(means2d: Tensor, conics: Tensor, extent: Tensor, opac: Tensor, depths: Tensor,
                valid: Tensor, width: int, height: int) -> _Pairs:
    """Pixels inside each visible Gaussian's alpha >= 1/255 ellipse (all inputs detached).

    means2d, extent: [B, N, 2]; conics: [B, N, 3]; opac: [N]; depths, valid: [B, N].
    """
    B, N = depths.shape
    dev = depths.device
    n_pix = B * height * width
    depth_key = torch.where(valid, depths, torch.full_like(depths, float("inf")))
    order = torch.argsort(depth_key, dim=1, stable=True)  # [B, N] front to back
    flat = (order + torch.arange(B, device=dev)[:, None] * N).reshape(-1)  # [B*N] in (b, depth) order
    flat = flat[valid.reshape(-1)[flat]]  # visible only, order kept
    m2 = means2d.reshape(-1, 2)[flat]  # [G, 2]
    ext = extent.reshape(-1, 2)[flat]
    cn = conics.reshape(-1, 3)[flat]
    k2 = 2.0 * torch.log(255.0 * opac.repeat(B)[flat])  # ellipse: d^T conic d <= k2

    # 1. rows of each box: y in [ceil(my - ey - 0.5), floor(my + ey - 0.5)], clipped
    y0 = torch.ceil(m2[:, 1] - ext[:, 1] - 0.5).clamp_min(0)
    y1 = torch.floor(m2[:, 1] + ext[:, 1] - 0.5).clamp_max(height - 1)
    ny = (y1 - y0 + 1).clamp_min(0).long()  # [G]
    rg = torch.repeat_interleave(torch.arange(len(flat), device=dev), ny)  # [R] row -> Gaussian
    y = y0[rg] + (torch.arange(len(rg), device=dev) - (torch.cumsum(ny, 0) - ny)[rg])  # [R]

    # 2. exact x-range of the ellipse on each row: a dx^2 + 2 b dx dy + c dy^2 <= k2
    a, b, c = cn[rg, 0], cn[rg, 1], cn[rg, 2]
    dy = y + 0.5 - m2[rg, 1]
    disc = (b * b - a * c) * dy * dy + a * k2[rg]
    half = torch.sqrt(disc.clamp_min(0)) / a
    xc = m2[rg, 0] - b * dy / a
    x0 = torch.ceil(xc - half - 0.5).clamp_min(0)
    x1 = torch.floor(xc + half - 0.5).clamp_max(width - 1)
    nx = torch.where(disc > 0, x1 - x0 + 1, torch.zeros_like(x0)).clamp_min(0).long()  # [R]

    # 3. the pixels of each row, generated Gaussian by Gaussian
    pr = torch.repeat_interleave(torch.arange(len(rg), device=dev), nx)  # [P] pair -> row
    pstart = torch.cumsum(nx, 0) - nx
    row_base = (flat[rg] // N) * (height * width) + y.long() * width + x0.long() - pstart  # [R]
    pix_pre = row_base[pr] + torch.arange(len(pr), device=dev)  # [P]
    gid_pre = flat[rg][pr]
    count_g = torch.zeros(len(flat), dtype=torch.long, device=dev).index_add_(0, rg, nx)
    crow_g = torch.zeros(len(flat) + 1, dtype=torch.long, device=dev)
    crow_g[1:] = torch.cumsum(count_g, 0)

    # 4. pixel-major order; a stable sort keeps front-to-back order inside each pixel
    key = pix_pre.int() if n_pix < 2**31 else pix_pre
    _, perm = torch.sort(key, stable=True)
    gid = gid_pre.index_select(0, perm)
    counts = torch.bincount(pix_pre, minlength=n_pix)  # [n_pix] pairs per pixel
    crow_pix = torch.zeros(n_pix + 1, dtype=torch.long, device=dev)
    crow_pix[1:] = torch.cumsum(counts, 0)
    # per-pixel tables over the Q covered pixels, expanded to pairs by `slot` (sequential reads)
    cov_pix = torch.nonzero(counts).squeeze(1)  # [Q]
    slot = torch.repeat_interleave(torch.arange(len(cov_pix), device=dev), counts.index_select(0, cov_pix))  # [P]
    x = cov_pix % width
    y = (cov_pix // width) % height
    return _Pairs(
        gid=gid, pix=cov_pix.index_select(0, slot), slot=slot, cov_pix=cov_pix,
        cov_first=crow_pix.index_select(0, cov_pix), cov_last=crow_pix.index_select(0, cov_pix + 1) - 1,
        px=(x.to(means2d.dtype) + 0.5).index_select(0, slot), py=(y.to(means2d.dtype) + 0.5).index_select(0, slot),
        crow_pix=crow_pix, crow_g=crow_g, row_gid=flat, pix_pre=pix_pre, perm=perm, n_pix=n_pix,
        n_rows_g=len(flat), width=width, height=height,
    )


# ---------------------------------------------------------------------------- per-pair maths
# Plain tensor functions (no autograd inside). Eager by default; with STEINSPLAT_COMPILE=1
# torch.compile fuses each into a loop or two. The forward keeps what the backward needs
# (offsets, conic times offset, Gaussian falloff), so the backward gathers nothing per pair.


def _pair_alpha(attrs: Tensor, gid: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, ...]:
    """Per pair k of Gaussian g and pixel centre p (the 3DGS forward, gsplat's conventions):
         d     = p - mean2d_g                      (dx, dy)
         cd    = conic_g d                         (cdx, cdy): the conic is the inverse 2D covariance
         sigma = d^T conic_g d / 2
         alpha = min(0.99, o_g exp(-sigma)), 0 where o exp(-sigma) < 1/255 or sigma < 0
    Returns alpha, log(1 - alpha) (float64), dx, dy, cdx, cdy, exp(-sigma), o exp(-sigma)."""
    A = attrs.index_select(0, gid)  # [P, 6] = mean x, mean y, conic a, b, c, opacity
    dx = px - A[:, 0]
    dy = py - A[:, 1]
    cdx = A[:, 2] * dx + A[:, 3] * dy
    cdy = A[:, 3] * dx + A[:, 4] * dy
    sig = 0.5 * (dx * cdx + dy * cdy)
    gauss = torch.exp(-sig)
    raw = A[:, 5] * gauss
    alpha = torch.where((raw >= ALPHA_MIN) & (sig >= 0), raw.clamp_max(ALPHA_MAX), torch.zeros_like(raw))
    return alpha, torch.log1p(-alpha.double()), dx, dy, cdx, cdy, gauss, raw


def _pair_weight(alpha: Tensor, la: Tensor, cs: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
    """T_k = prod_{j<k} (1 - alpha_j) within the pixel, from the batch-wide inclusive cumulative sum
    `cs` of log(1 - alpha) and `base`, its value before the pair's pixel's first pair; and
    w_k = alpha_k T_k while the transmittance after the pair stays above 1e-4 (0 after)."""
    log_after = cs - base  # log T after the pair
    T = torch.exp(log_after - la).to(alpha.dtype)
    return T, torch.where(log_after > LOG_T_MIN, alpha * T, torch.zeros_like(alpha))


def _pair_dot(g_cov: Tensor, feats: Tensor, slot: Tensor, gid: Tensor) -> Tensor:
    """s_k = dL/dw_k = g[pix_k] . f[gid_k], with g_cov the image gradient of the covered pixels
    (feats carry a ones column, for the alpha image)."""
    return (g_cov.index_select(0, slot) * feats.index_select(0, gid)).sum(1)


def _pair_dattrs(
    s: Tensor, T: Tensor, w: Tensor, alpha: Tensor, cs_ws: Tensor, tail: Tensor,
    dx: Tensor, dy: Tensor, cdx: Tensor, cdy: Tensor, gauss: Tensor, raw: Tensor,
) -> tuple[Tensor, ...]:
    """d loss / d (mean x, mean y, conic a, b, c, opacity) for each pair: six [P] tensors.

    The 3DGS backward, back to front, as a suffix sum within each pixel:
        dL/dalpha_k = T_k s_k - (sum_{j>k} w_j s_j) / (1 - alpha_k)
    where cs_ws is the inclusive cumulative sum of w_j s_j (float64) and `tail` its value at
    each pair's pixel's last pair. Then alpha = o exp(-sigma) (unclamped, contributing pairs only):
        dalpha/dsigma = -o exp(-sigma),  dsigma/dmean = -conic d,
        dsigma/d(a, b, c) = (dx^2 / 2, dx dy, dy^2 / 2),  dalpha/do = exp(-sigma).
    """
    after = (tail - cs_ws).to(w.dtype)
    live = (w > 0) & (raw < ALPHA_MAX)
    dalpha = torch.where(live, T * s - after / (1.0 - alpha), torch.zeros_like(alpha))
    dsig = -dalpha * raw
    return -dsig * cdx, -dsig * cdy, dsig * 0.5 * dx * dx, dsig * dx * dy, dsig * 0.5 * dy * dy, dalpha * gauss


_KERNELS = {"alpha": _pair_alpha, "weight": _pair_weight, "dot": _pair_dot, "dattrs": _pair_dattrs}
_COMPILED: dict[str, object] = {}


def _compile_mode() -> bool:
    """STEINSPLAT_COMPILE=1 fuses the per-pair kernels with torch.compile (pays ~20-60 s of
    compilation per process and per image size, worth it for long runs); default: eager."""
    return os.environ.get("STEINSPLAT_COMPILE", "0").lower() in ("1", "true", "yes", "on")


def set_compile(enabled: bool) -> None:
    """Turn kernel compilation on or off for this process (overrides STEINSPLAT_COMPILE)."""
    os.environ["STEINSPLAT_COMPILE"] = "1" if enabled else "0"
    _COMPILED.clear()


def _kernel(name: str):
    """The compiled version of a per-pair kernel, or the eager one if compiling is off or fails."""
    fn = _KERNELS[name]
    if not _compile_mode():
        return fn
    if name not in _COMPILED:
        try:
            _COMPILED[name] = torch.compile(fn, dynamic=True)
        except Exception as exc:  # pragma: no cover - depends on the toolchain
            warnings.warn(f"torch.compile unavailable ({exc}); the CPU rasteriser runs eagerly (slower)")
            _COMPILED[name] = fn
    return _COMPILED[name]


def _call(name: str, *args):
    try:
        return _kernel(name)(*args)
    except Exception as exc:  # a missing C++ compiler shows up only on the first call
        if _COMPILED.get(name) is _KERNELS[name]:
            raise
        warnings.warn(
            f"torch.compile failed for the CPU rasteriser ({type(exc).__name__}: {str(exc)[:200]}); "
            "falling back to eager PyTorch (slower). Set STEINSPLAT_COMPILE=0 to skip compiling."
        )
        for k in _KERNELS:
            _COMPILED[k] = _KERNELS[k]
        return _KERNELS[name](*args)


def _csr(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False)


class _Composite(torch.autograd.Function):
    """Front-to-back alpha compositing of pixel-sorted pairs with a closed-form backward.

    The per-pixel sums are sparse matrix products: with Wmat [pixels x Gaussians] holding w_k,
    image = Wmat @ feats, and d feats = Wmat^T @ d image. Wmat^T is stored as a second CSR
    matrix whose rows are Gaussians, from the pairs' generation order (grouped by Gaussian).
    """

    @staticmethod
    def forward(ctx, attrs: Tensor, feats: Tensor, pairs: "_Pairs"):  # type: ignore[override]
        # attrs [G, 6]; feats [G, F+1] (last column ones: it yields the alpha image)
        attrs, feats = attrs.detach(), feats.detach()  # one compiled graph whatever the grad mode
        alpha, la, *keep = _call("alpha", attrs, pairs.gid, pairs.px, pairs.py)  # [P] each
        cs = torch.cumsum(la, 0)  # inclusive, across the whole batch
        base = (cs.index_select(0, pairs.cov_first) - la.index_select(0, pairs.cov_first)).index_select(0, pairs.slot)
        T, w = _call("weight", alpha, la, cs, base)
        img = _csr(pairs.crow_pix, pairs.gid, w, (pairs.n_pix, attrs.shape[0])) @ feats  # [n_pix, F+1]
        ctx.save_for_backward(feats, alpha, T, w, *keep)
        ctx.pairs, ctx.n_gauss = pairs, attrs.shape[0]
        return img

    @staticmethod
    def backward(ctx, g_img: Tensor):  # type: ignore[override]
        feats, alpha, T, w, *keep = ctx.saved_tensors
        pr: _Pairs = ctx.pairs
        g_img = g_img.contiguous()
        # only the channels the loss actually touches (often rgb and alpha: the rest is detached)
        active = torch.nonzero(g_img.abs().amax(0) > 0).squeeze(1)
        g_cov = g_img.index_select(0, pr.cov_pix).index_select(1, active)  # [Q, F']
        s = _call("dot", g_cov, feats.index_select(1, active), pr.slot, pr.gid)  # [P]
        cs = torch.cumsum((w * s).double(), 0)
        tail = cs.index_select(0, pr.cov_last).index_select(0, pr.slot)
        dA = _call("dattrs", s, T, w, alpha, cs, tail, *keep)  # six [P]
        d_attrs = torch.zeros(6, ctx.n_gauss, dtype=w.dtype, device=w.device)
        for c in range(6):
            d_attrs[c].index_add_(0, pr.gid, dA[c])
        # d feats = Wmat^T @ d image, with Wmat^T as a CSR over Gaussians (generation order)
        w_pre = torch.empty_like(w).index_copy_(0, pr.perm, w)
        d_feats_rows = _csr(pr.crow_g, pr.pix_pre, w_pre, (pr.n_rows_g, pr.n_pix)) @ g_img  # [Rg, F+1]
        d_feats = torch.zeros(ctx.n_gauss, feats.shape[1], dtype=feats.dtype, device=feats.device)
        d_feats.index_copy_(0, pr.row_gid, d_feats_rows)
        return d_attrs.T, d_feats, None


def rasterize_torch(
    gaussians: Gaussians,
    cameras: Cameras,
    feats: Tensor,  # [B, N, F]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    B, W, H = len(cameras), cameras.width, cameras.height
    N, F = feats.shape[1], feats.shape[2]
    opac = gaussians.opacities  # [N]
    proj = project(gaussians.means, gaussians.quats, gaussians.scales, opac, cameras, near_plane, far_plane)
    info = {
        "means2d": proj.means2d,  # [B, N, 2]
        "radii": proj.radii,  # [B, N, 2]
        "depths": proj.depths,  # [B, N]
        "conics": proj.conics,  # [B, N, 3]
        "width": W,
        "height": H,
        "n_cameras": B,
        "gaussian_ids": None,
        "backend": "torch",
    }
    if N == 0 or not bool(proj.valid.any()):
        zero = feats.sum() * 0  # keeps the graph connected for callers that backpropagate
        img = zero + torch.zeros(B, H, W, F, dtype=feats.dtype, device=feats.device)
        return split_features(img, torch.zeros(B, H, W, 1, dtype=feats.dtype, device=feats.device), info)

    with torch.no_grad():
        pairs = _make_pairs(proj.means2d, proj.conics, proj.extent, opac, proj.depths, proj.valid, W, H)
    info["n_pairs"] = len(pairs.gid)
    attrs = torch.cat([proj.means2d, proj.conics, opac[None, :, None].expand(B, N, 1)], dim=-1).reshape(B * N, 6)
    ones = torch.ones(B * N, 1, dtype=feats.dtype, device=feats.device)
    img = _Composite.apply(attrs, torch.cat([feats.reshape(B * N, F), ones], 1), pairs)  # [n_pix, F+1]
    img = img.reshape(B, H, W, F + 1)
    return split_features(img[..., :F], img[..., F:], info)
