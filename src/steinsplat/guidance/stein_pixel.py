"""Per-pixel (vector-valued) Stein control variates from the estimator's depth and normals.

Why. The paper's baseline is one scalar phi per view (1 - Pearson of depths, 1 - mean cosine of
normals), an average over P pixels, so its Stein term sigma_t grad phi is O(1/P) per pixel and the
control variate eps phi - sigma_t grad phi is essentially phi_bar eps, a copy of the constant
term (measured: rms(sigma grad phi) / rms(eps phi) ~ 1e-3). Here the baseline is a *field*
g: x_t [B, C, h, w] -> [B, Cg, h, w] (Cg = 1, broadcast over the C channels of x_t, or Cg = C),
whose per-pixel average is the paper's phi, so its Stein term is O(1) per pixel.

Stein's identity, per element. The code's forward process (priors/base.py `NoiseSchedule`) is
    x_t = alpha_t x + sigma_t eps,  eps ~ N(0, I),  alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t),
so x_t | x ~ N(alpha_t x, sigma_t^2 I) and dx_t / deps = sigma_t I. For one element e = (c, i),
Gaussian integration by parts in eps_e (eps_e ~ N(0, 1): E[eps_e f(eps)] = E[df/deps_e]) and the
chain rule d g_e / d eps_e = sigma_t d g_e / d x_{t,e} give
    E[eps_e g_e(x_t)] = sigma_t E[d g_e / d x_{t,e}],
so, element by element,
    CV_e = eps_e g_e(x_t) - sigma_t (d g_e / d x_{t,e})                                  [B, C, h, w]
has E_eps[CV_e] = 0 for any differentiable g (of x_t, t, the camera and the *detached* render;
never of eps except through x_t). Only the Jacobian's **diagonal** enters. Sign: minus, scale:
sigma_t (not sigma_t^2, not 1/sigma_t); tests/test_guidance.py checks that the flipped sign and
the wrong scale are caught by a Monte-Carlo test where the Stein term is large. For a field
broadcast over channels (g_(c, i) = s_i for every c) the diagonal is d s_i / d x_{t, c, i}.

The diagonal, step by step (`stein_field_control_variate`):
    1. g = field(x_t)                              [B, Cg, h, w], with its graph to x_t (never through the UNet)
    2. the diagonal D_e = d g_e / d x_{t,e}        [B, C, h, w], either
         a. "exact": one reverse pass per output element (autograd), for small cases and tests; or
         b. "hutchinson" (what SSD runs): D ~ v ⊙ (J^T v) averaged over `probes` Rademacher probes
            v [B, Cg, h, w] (v_e = +-1, independent of eps and of each other; one reverse pass each).
            E_v[v_e (J^T v)_e] = sum_j J_je E[v_j v_e] = J_ee, so the estimate is unbiased for the
            diagonal, and because v is independent of eps,
                E_{eps, v}[eps_e g_e - sigma_t v_e (J^T v)_e] = E_eps[eps_e g_e] - sigma_t E_eps[J_ee] = 0:
            the control variate stays exactly zero-mean. The price: the off-diagonal terms
            sigma_t sum_{j != e} J_je v_j v_e add variance uncorrelated with eps_hat (more probes: less).
            The exact diagonal of a convolutional estimator would cost C h w reverse passes per step.
    3. CV = eps ⊙ g - sigma_t D                    [B, C, h, w]   (g broadcast over channels when Cg = 1)
mu is fitted by SSD exactly as for the scalar baselines (least squares per channel and timestep bin).

Baselines (the per-pixel decompositions of the paper's two, same masks and like-with-like rules):
    depth-pixel:  g_i = 0.5 m_i (z(r)_i - z(d)_i)^2, z the standardisation over the covered pixels
                  (mean 0, population std 1), d the estimator's depth of x_t, r the rendered depth;
                  then mean_i g_i = 1 - Pearson(r, d) (over the covered pixels), the paper's phi;
    normal-pixel: g_i = m_i (1 - cos(n_i, r_i)), whose mean over covered pixels is the paper's phi.
m is the mask of covered pixels (rendered alpha > 0.5 / a rendered normal); g = 0 elsewhere, so
its CV is 0 there. The estimator's output is resized to x_t's size (bilinear, differentiable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .baselines import BaselineContext, EstimatorBaseline, alpha_mask, area_resize, like_with_like

Field = Callable[[Tensor], Tensor]  # x_t [B, C, h, w] -> g [B, Cg, h, w], Cg in {1, C}
Divergence = Literal["hutchinson", "exact"]


@dataclass
class FieldCV:
    """One per-pixel control variate and its two terms (for diagnostics)."""

    cv: Tensor  # [B, C, h, w] eps ⊙ g - sigma_t D
    value: Tensor  # [B] mean of g over its elements (the paper's phi for the baselines below)
    eps_term: Tensor  # [B, C, h, w] eps ⊙ g
    stein_term: Tensor  # [B, C, h, w] sigma_t D (subtracted)


def jacobian_diagonal_exact(g: Tensor, x: Tensor) -> Tensor:
    """D [B, C, h, w] with D_(b, c, i) = d g_(b, c', i) / d x_(b, c, i) (c' = c, or 0 when g has one channel).

    g [B, Cg, h, w] must carry its graph to x [B, C, h, w] and treat samples independently. One
    reverse pass per element of g[0] (the batch is summed: samples do not interact): for tests."""
    B, C, h, w = x.shape
    Cg = g.shape[1]
    D = torch.zeros_like(x)
    for cg in range(Cg):
        for i in range(h):
            for j in range(w):
                (row,) = torch.autograd.grad(g[:, cg, i, j].sum(), x, retain_graph=True, allow_unused=True)
                if row is None:
                    continue
                if Cg == 1:
                    D[:, :, i, j] = row[:, :, i, j]  # the broadcast field: every channel's own pixel
                else:
                    D[:, cg, i, j] = row[:, cg, i, j]
    return D


def rademacher(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """A tensor of independent +-1 (probability 1/2 each), drawn on the CPU from `generator`."""
    return (torch.randint(0, 2, shape, generator=generator, dtype=torch.int64) * 2 - 1).float().to(device)


def jacobian_diagonal_hutchinson(g: Tensor, x: Tensor, probes: int, generator: torch.Generator) -> Tensor:
    """Unbiased estimate of `jacobian_diagonal_exact(g, x)`: mean over probes of v ⊙ (J^T v), v Rademacher
    [B, Cg, h, w] (broadcast over x's channels when Cg = 1). One reverse pass per probe."""
    if probes < 1:
        raise ValueError(f"the Hutchinson estimate needs probes >= 1, got {probes}")
    D = torch.zeros_like(x)
    for _ in range(probes):
        v = rademacher(tuple(g.shape), generator, g.device).to(g.dtype)  # [B, Cg, h, w]
        (u,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, allow_unused=True)  # [B, C, h, w] J^T v
        if u is not None:
            D += v * u  # v broadcasts over channels when Cg = 1
    return D / probes


def stein_field_control_variate(field: Field, x_t: Tensor, eps: Tensor, sigma: Tensor | float,
                                divergence: Divergence = "hutchinson", probes: int = 1,
                                generator: Optional[torch.Generator] = None) -> FieldCV:
    """CV = eps ⊙ g(x_t) - sigma_t diag(dg/dx_t), steps 1-3 of the module docstring. Detached.

    x_t, eps [B, C, h, w]; sigma a float, [B] or [B, 1, 1, 1]; field: x_t -> [B, 1 or C, h, w]
    treating samples independently. divergence "exact" (tests, small cases) or "hutchinson"
    (`probes` Rademacher probes from `generator`, independent of eps: zero mean kept)."""
    x = x_t.detach().requires_grad_(True)  # eps never enters the graph
    B, C, h, w = x.shape
    with torch.enable_grad():
        g = field(x)  # [B, Cg, h, w]  step 1
        if g.dim() != 4 or g.shape[0] != B or g.shape[1] not in (1, C) or g.shape[-2:] != (h, w):
            raise ValueError(f"a field baseline must map x_t {tuple(x.shape)} to [B, 1 or {C}, {h}, {w}], "
                             f"got {tuple(g.shape)}")
        if not g.requires_grad:  # does not depend on x_t: the Stein term is 0
            D = torch.zeros_like(x)
        elif divergence == "exact":  # step 2a
            D = jacobian_diagonal_exact(g, x)
        elif divergence == "hutchinson":  # step 2b
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            D = jacobian_diagonal_hutchinson(g, x, probes, gen)
        else:
            raise ValueError(f"unknown divergence {divergence!r}: use 'hutchinson' or 'exact'")
    sigma_b = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma_b.dim() == 1:
        sigma_b = sigma_b.view(-1, 1, 1, 1)  # [B] -> [B, 1, 1, 1]
    g = g.detach()
    eps_term = eps * g  # [B, C, h, w] (g broadcast over channels when Cg = 1)
    stein = sigma_b * D.detach()  # [B, C, h, w]
    return FieldCV(cv=eps_term - stein, value=g.flatten(1).mean(1), eps_term=eps_term, stein_term=stein)


# ---------------------------------------------------------------------------- the baselines
class FieldBaseline:
    """Base of the per-pixel baselines: builds the field of one step, runs the divergence estimate with
    its own probe generator (state: saved and restored for an exact resume)."""

    name = "field"

    def __init__(self, divergence: Divergence = "hutchinson", probes: int = 1, seed: int = 0) -> None:
        if divergence not in ("hutchinson", "exact"):
            raise ValueError(f"unknown divergence {divergence!r}: use 'hutchinson' or 'exact'")
        if probes < 1:
            raise ValueError(f"probes must be at least 1, got {probes}")
        self.divergence = divergence  # how the Jacobian's diagonal is taken (module docstring, step 2)
        self.probes = probes  # Hutchinson probes per step (one reverse pass through the estimator each)
        self.generator = torch.Generator().manual_seed(seed)  # the probes' (CPU) generator, independent of eps
        self.last: Optional[FieldCV] = None  # the last step's terms (diagnostics: rms of the two terms)

    def build_field(self, ctx: BaselineContext) -> Field:
        raise NotImplementedError

    def control_variate(self, ctx: BaselineContext, x_t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(CV [B, C, h, w], mean of g [B]) for one step (what SSD's step 3c calls)."""
        out = stein_field_control_variate(self.build_field(ctx), x_t, eps, ctx.sigma, self.divergence, self.probes,
                                          self.generator)
        self.last = out
        return out.cv, out.value

    def state_tensors(self) -> dict[str, Tensor]:
        return {"rng": self.generator.get_state()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "rng" in tensors:
            self.generator.set_state(tensors["rng"].to(torch.uint8).cpu().clone())


class FunctionFieldBaseline(FieldBaseline):
    """g = fn(x_t, t) for any differentiable fn -> [B, 1 or C, h, w] (analytic fields in tests)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "function-field", **kw) -> None:
        super().__init__(**kw)
        self.fn = fn
        self.name = name

    def build_field(self, ctx: BaselineContext) -> Field:
        return lambda x_t: self.fn(x_t, ctx.t)


def _to_size(a: Tensor, size: tuple[int, int]) -> Tensor:
    return a if a.shape[-2:] == size else F.interpolate(a, size=size, mode="bilinear", align_corners=False)


def _standardise(a: Tensor, m: Tensor, eps: float = 1e-8) -> Tensor:
    """(a - mean) / std over the pixels where m [B, 1, h, w] is 1 (population std), per sample; a [B, 1, h, w]."""
    n = m.flatten(1).sum(1).clamp_min(1.0).view(-1, 1, 1, 1)
    mean = (a * m).flatten(1).sum(1).view(-1, 1, 1, 1) / n
    var = (((a - mean) * m) ** 2).flatten(1).sum(1).view(-1, 1, 1, 1) / n
    return (a - mean) / (var + eps).sqrt()


class DepthPixelBaseline(EstimatorBaseline, FieldBaseline):
    """g_i = 0.5 m_i (z(rendered depth)_i - z(estimator depth of x_t)_i)^2 [B, 1, h, w]: the per-pixel
    decomposition of the paper's 1 - Pearson (its mean over the covered pixels), like with like.
    EstimatorBaseline's options (estimator, mask_by_alpha, input_scale), then FieldBaseline's."""

    name = "depth-pixel"
    needs = "depth"
    instead = "normal-pixel"

    def build_field(self, ctx: BaselineContext) -> Field:
        ref = self.rendered_depth(ctx)  # [B, 1, H, W], 0 where empty

        def field(x_t: Tensor) -> Tensor:
            size = tuple(x_t.shape[-2:])
            pred = self.predict(x_t, ctx)
            d = _to_size(pred.depth, size)  # [B, 1, h, w]
            r = like_with_like(ref, size, pred.depth_kind)
            m = alpha_mask(ctx.render, size) if self.mask_by_alpha else torch.ones_like(r)  # [B, 1, h, w]
            return 0.5 * m * (_standardise(r, m) - _standardise(d, m)) ** 2

        return field


class NormalPixelBaseline(EstimatorBaseline, FieldBaseline):
    """g_i = m_i (1 - cos(rendered normal_i, estimator normal_i)) [B, 1, h, w], both in the camera frame;
    its mean over the covered pixels (`mask_by_alpha` False: all pixels) is the paper's normal phi."""

    name = "normal-pixel"
    needs = "normal"
    instead = "depth-pixel"

    def build_field(self, ctx: BaselineContext) -> Field:
        ref = self.rendered_normal(ctx)  # [B, 3, H, W] camera frame

        def field(x_t: Tensor) -> Tensor:
            size = tuple(x_t.shape[-2:])
            n = F.normalize(_to_size(self.predict(x_t, ctx).normal, size), dim=1)  # [B, 3, h, w]
            r = area_resize(ref, size)
            m = (r.norm(dim=1, keepdim=True) > 0.5).to(n.dtype) if self.mask_by_alpha else torch.ones_like(n[:, :1])
            cos = (n * F.normalize(r, dim=1)).sum(1, keepdim=True)  # [B, 1, h, w]
            return m * (1.0 - cos)

        return field
