"""SSD's step 3b: control variates that are fixed linear maps of the noise, modulated by the render.

    CV_(j, c', dy, dx)[c] = m_j ⊙ eps[(c + c') mod C] shifted by (dy, dx)      (zero outside the image)

m_j is a map of the *detached* render (1, its alpha, the channels x_c of x and their products
x_c x_c'); none depends on eps, so every CV has E[CV] = 0 by itself. With one mu per output
channel c, sum_k mu_k ⊙ CV_k is a content-dependent k x k filter M(x) applied to eps (see the
derivation in ssd.py's docstring). K_noise = len(maps) x len(shifts) CVs, CV_0 = eps first.

Two implementations that must agree (tests/test_guidance.py checks it):
  * `modulated_noises`: the obvious one, materialises every CV as [B, K_noise, C, h, w];
  * `NoiseFeatures`: what SSD runs. The CVs of every output channel are one set of features
    Phi [B, F, hw] (F = len(maps) x C x k^2, labelled by the *absolute* input channel), built
    with one `unfold`; channel c reads them through an index table idx[c] (offset labelling).
    So the least-squares moments need one Gram matrix Phi w^2 Phi^T for all channels, and
    sum_k mu_k ⊙ CV_k is one batched matrix product; the noise-noise moments are exact
    expectations (`moments`).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..render.common import RenderOutput

NoiseMaps = Literal["none", "alpha", "poly2"]


def noise_shifts(kernel: int, mix_channels: bool, channels: int) -> list[tuple[int, int, int]]:
    """The (channel offset c', dy, dx) of step 3b, (0, 0, 0) first."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"noise_kernel must be an odd number >= 1, got {kernel}")
    r = kernel // 2
    offsets = range(channels) if mix_channels else range(1)
    out = [(c, dy, dx) for c in offsets for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    out.remove((0, 0, 0))
    return [(0, 0, 0)] + out


def num_noise_maps(kind: NoiseMaps, channels: int) -> int:
    """How many maps m_j step 3b uses (the constant map 1 first)."""
    if kind == "none":
        return 1
    if kind == "alpha":
        return 2
    if kind == "poly2":
        return 2 + channels + channels * (channels + 1) // 2
    raise ValueError(f"unknown noise_maps {kind!r}: use 'none', 'alpha' or 'poly2'")


def noise_maps(kind: NoiseMaps, x: Tensor, render: Optional[RenderOutput]) -> list[Tensor]:
    """The maps m_j [B, 1, h, w] of the detached render: 1, alpha, x_c, x_c x_c' (as `kind` asks).
    Without a render the alpha map is 0 (its CVs vanish and the ridge keeps their mu at 0)."""
    num_noise_maps(kind, x.shape[1])  # an unknown kind fails here, with the choices
    x = x.detach().float()  # [B, C, h, w]
    one = torch.ones_like(x[:, :1])
    maps = [one]
    if kind in ("alpha", "poly2"):
        if render is None:
            maps.append(torch.zeros_like(one))
        else:
            a = render.alpha.detach().permute(0, 3, 1, 2).float()  # [B, 1, H, W]
            maps.append(F.interpolate(a, size=x.shape[-2:], mode="area") if a.shape[-2:] != x.shape[-2:] else a)
    if kind == "poly2":
        C = x.shape[1]
        maps += [x[:, c : c + 1] for c in range(C)]
        maps += [x[:, c : c + 1] * x[:, d : d + 1] for c in range(C) for d in range(c, C)]
    return maps


# ---------------------------------------------------------------------------- the reference
def shift_noise(eps: Tensor, c: int, dy: int, dx: int) -> Tensor:
    """out[:, k, i, j] = eps[:, (k + c) % C, i + dy, j + dx], zero where (i + dy, j + dx) leaves the image.

    eps [B, C, h, w] -> [B, C, h, w]. A fixed linear map of eps, so E[out] = 0."""
    if c:
        eps = torch.roll(eps, shifts=-c, dims=1)
    if dy == 0 and dx == 0:
        return eps
    h, w = eps.shape[-2:]
    out = torch.zeros_like(eps)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd] = eps[..., ys, xs]
    return out


def modulated_noises(eps: Tensor, maps: Sequence[Tensor], shifts: Sequence[tuple[int, int, int]]) -> Tensor:
    """Every step-3b CV, materialised: eps [B, C, h, w] -> [B, len(maps) * len(shifts), C, h, w],
    index j * len(shifts) + s for map j and shift s (so index 0 = eps = CV_0)."""
    shifted = torch.stack([shift_noise(eps, *sh) for sh in shifts], 1)  # [B, S, C, h, w]
    return torch.cat([m.unsqueeze(1) * shifted for m in maps], 1)  # maps [B, 1, h, w]


# ---------------------------------------------------------------------------- what SSD runs
class NoiseFeatures:
    """Step 3b's CVs of one step, without materialising them (module docstring).

    eps [B, C, h, w]; maps: the m_j [B, 1, h, w]; shifts from `noise_shifts(kernel, ...)`."""

    def __init__(self, eps: Tensor, maps: Sequence[Tensor], shifts: Sequence[tuple[int, int, int]], kernel: int) -> None:
        B, C, h, w = eps.shape
        P, r = kernel * kernel, kernel // 2
        U = F.unfold(eps, kernel, padding=r)  # [B, C * P, hw]: row c_in * P + (dy + r) * k + (dx + r)
        self.phi = torch.cat([m.reshape(B, 1, h * w) * U for m in maps], 1)  # [B, F, hw], F = len(maps) * C * P
        nF = C * P
        idx = [[j * nF + ((c + cc) % C) * P + (dy + r) * kernel + (dx + r) for j in range(len(maps))
                for (cc, dy, dx) in shifts] for c in range(C)]
        self.idx = torch.tensor(idx, device=eps.device)  # [C, K_noise]: channel c's CV k is feature idx[c, k]
        self.shape = (B, C, h, w)
        self.maps = torch.cat(list(maps), 1)  # [B, J, h, w]
        self.kernel = kernel
        self.eps = eps  # [B, C, h, w] = CV_0

    @property
    def K(self) -> int:
        return self.idx.shape[1]

    def combine(self, mu: Tensor) -> Tensor:
        """sum_k mu_k ⊙ CV_k for mu [B, K_noise, C] (one mu per output channel) -> [B, C, h, w]."""
        B, C, h, w = self.shape
        W = torch.zeros(B, C, self.phi.shape[1], dtype=self.phi.dtype, device=self.phi.device)  # [B, C, F]
        W.scatter_(2, self.idx.unsqueeze(0).expand(B, -1, -1), mu.permute(0, 2, 1).to(W.dtype))
        return torch.bmm(W, self.phi).view(B, C, h, w)

    def moments(self, eps_hat: Tensor, others: Optional[Tensor], w2: Tensor,
                residual: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Per-sample, per-channel least-squares moments over pixels, for the K_noise CVs followed by
        `others` (the baselines' CVs, [B, Kb, C, h, w] or None):
            A [B, K, K, C] ~ mean_p w^2 CV_i CV_j,   b [B, K, C] ~ mean_p w^2 eps_hat CV_i.
        eps_hat [B, C, h, w]; w2 [B] (w(t)^2).

        The noise-noise block of A is taken in expectation over eps, exactly: two shifted noises
        are uncorrelated unless they are the same (input channel, shift), and then
        E[U_(a, q)(p)^2] = 1 where pixel p + shift q lies inside the image, else 0. So
            E[A]_((j, a, q), (j', a', q')) = [a = a'] [q = q'] mean_p w^2 m_j(p) m_j'(p) inside_q(p),
        one small [maps x maps] Gram matrix per shift: no noise in it, and no F x F product over
        pixels (the cost that would otherwise dominate).
        b is split the same way. eps = CV_0, so
            E[w^2 eps_hat CV_i] = E[w^2 CV_0 CV_i] + E[w^2 (eps_hat - eps) CV_i] = E[A]_(i, 0) + b^r_i:
        the first term is exact (taken from the Gram above) and only SDS's residual r = eps_hat - eps
        is sampled. The sampled eps CV_i products carry noise of order 1 / sqrt(pixels) whatever t
        is, while r CV_i, the signal, is small where the denoiser is good (high t): sampling only r
        keeps that noise out of mu (with eps_hat = eps, mu is exactly SDS's (1, 0, ..., 0)).
        The baselines' mu are fitted in a second stage, to what the noise terms leave: their
        block is sampled with b = mean_p w^2 residual CV (residual [B, C, h, w] = eps_hat minus
        the noise terms' current estimate) and the cross block is 0. (A joint fit would mix an
        exact block with sampled ones, and such a matrix need not be positive definite.)"""
        B, C, h, w = self.shape
        n = h * w
        P = self.kernel * self.kernel
        M = self.maps.reshape(B, -1, n)  # [B, J, hw]
        J = M.shape[1]
        inside = F.unfold(torch.ones(1, 1, h, w, device=M.device, dtype=M.dtype), self.kernel,
                          padding=self.kernel // 2)[0]  # [P, hw]
        H = torch.einsum("bjp,bkp,qp->bqjk", M * (w2.view(B, 1, 1) / n), M, inside)  # [B, P, J, J]
        G = torch.einsum("bqjk,ac,qr->bjaqkcr", H, torch.eye(C, device=M.device, dtype=M.dtype),
                         torch.eye(P, device=M.device, dtype=M.dtype)).reshape(B, J * C * P, J * C * P)  # [B, F, F]
        wphi = self.phi * (w2.view(B, 1, 1) / n)  # [B, F, hw]
        r = (eps_hat - self.eps).reshape(B, C, n)  # [B, C, hw] SDS's residual
        g = torch.bmm(wphi, r.transpose(1, 2))  # [B, F, C]
        idx = self.idx  # [C, Kn]
        cidx = torch.arange(C, device=idx.device)
        A_nn = G[:, idx[:, :, None], idx[:, None, :]]  # [B, C, Kn, Kn]
        b_n = A_nn[..., 0] + g[:, idx, cidx[:, None]]  # [B, C, Kn]  E[w^2 CV_0 CV_k] exactly + sampled w^2 r CV_k
        if others is None:
            return A_nn.permute(0, 2, 3, 1), b_n.permute(0, 2, 1)
        if residual is None:
            raise ValueError("pass residual = eps_hat - (the noise terms' estimate) with the baselines' CVs")
        Kb = others.shape[1]
        V = others.reshape(B, Kb, C, n)  # [B, Kb, C, hw]
        wV = V * (w2.view(B, 1, 1, 1) / n)
        A_bb = torch.einsum("bkcn,bjcn->bckj", wV, V)  # [B, C, Kb, Kb]
        b_b = torch.einsum("bkcn,bcn->bck", wV, residual.reshape(B, C, n))  # [B, C, Kb]
        zero = A_nn.new_zeros(B, C, A_nn.shape[2], Kb)
        A = torch.cat([torch.cat([A_nn, zero], 3), torch.cat([zero.transpose(2, 3), A_bb], 3)], 2)  # [B, C, K, K]
        b = torch.cat([b_n, b_b], 2)  # [B, C, K]
        return A.permute(0, 2, 3, 1), b.permute(0, 2, 1)
