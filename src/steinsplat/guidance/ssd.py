"""Stein Score Distillation (SteinDreamer, Wang et al. 2023): SDS with a Stein control variate.

Stein's identity. For x_t | x ~ N(alpha_t x, sigma_t^2 I) and any differentiable scalar phi of
x_t (it may also depend on t, the camera and the *detached* render, but not on eps except
through x_t), Gaussian integration by parts gives E[eps phi(x_t)] = sigma_t E[grad_{x_t} phi(x_t)],
so the control variate
    CV = eps * phi(x_t) - sigma_t * grad_{x_t} phi(x_t)                      [B, C, h, w]
has E_eps[CV] = 0. (The form "eps * phi + grad phi" printed on the project page is NOT zero-mean;
tests/test_guidance.py checks both by Monte Carlo.)

The estimator, step by step:
    1. t ~ U{t_min..t_max} [B],  eps ~ N(0, I),  x_t = alpha_t x + sigma_t eps
    2. eps_hat = CFG noise prediction at x_t                             (no grad through the UNet)
    3. control variates CV_k, k = 0, ..., K-1:
         a. CV_0 = eps            (phi_0 = 1: the constant term; grad phi_0 = 0)
         b. (noise_kernel k > 1 or noise_maps != "none") CV_(j, c', dy, dx) = m_j ⊙ S_(c', dy, dx) eps:
            the noise shifted by (dy, dx) within a k x k window (zero outside the image), taken from
            channel c + c' (mod C) when mixing channels, and multiplied by a map m_j of the
            *detached* render: 1, the rendered alpha, the channels x_c of x and their products
            x_c x_c' ("poly2"). m_j does not depend on eps, so each CV is zero-mean by itself
            (E[m ⊙ S eps] = m ⊙ S E[eps] = 0); with mu per channel, sum mu ⊙ CV over them is a
            content-dependent k x k filter M(x) applied to eps. This is Stein's identity with a
            constant vector field per output element (E[eps g^T] = sigma E[grad g] = 0 for g
            constant in x_t), the matrix-valued generalisation of phi_0's scalar mu_0.
            Why it helps: to first order in eps, eps_hat(x_t) - eps = (sigma_t J - I) eps + const,
            J = d eps_hat / d x_t the denoiser's Jacobian at alpha_t x; the optimal M is
            sigma_t E[J] (Stein again), which is local, mixes channels and changes with the image
            content, while a diagonal mu_0 can only cancel its diagonal. On a Gaussian data
            distribution eps_hat is exactly linear in x_t and a wide enough M removes all the
            eps-variance.
            (noise_cv.py builds these CVs as one set of features and never materialises them.)
         c. CV_k = eps phi_k(x_t) - sigma_t grad phi_k(x_t)   for each baseline (depth, normal, ...);
            per-pixel baselines (stein_pixel.py): CV_k = eps ⊙ g_k(x_t) - sigma_t diag(d g_k / d x_t)
    4. grad = w(t) (eps_hat - sum_k mu_k ⊙ CV_k)                          (descent gradient on x)
    5. the guard: per timestep bin, SDS's grad instead for the first updates and wherever the fitted
       mu has shown a larger second moment than SDS's on later steps (see `_guarded`)
With mu_0 = 1 and mu_k = 0 this is exactly SDS. Whatever mu (as long as it does not depend on
this step's eps), E[grad] = E[w eps_hat]: only the variance changes. mu is element-wise (per
channel by default; "pixel" = per element of x, "scalar" = one number per CV), kept per
timestep bin, and chosen to minimise E||grad||^2 (which, the mean being fixed, is the variance):
    (a) "least_squares": the running optimum of the normal equations
            sum_j E[w^2 CV_i ⊙ CV_j] mu_j = E[w^2 eps_hat ⊙ CV_i]
        (for one CV: mu* = E[eps_hat ⊙ CV] / E[CV ⊙ CV]) from EMA moments. With step 3b's CVs
        (hundreds of them) the noise block of E[CV_i CV_j] is taken in closed form, and so is the
        eps part of E[eps_hat ⊙ CV_i] (eps = CV_0): only SDS's residual eps_hat - eps is sampled;
        the baselines' mu are fitted in a second stage to what the noise terms leave, and each bin
        is re-solved after each of its first updates, then every `solve_every` (noise_cv.py).
        A bin is solved from its nearest bins' moments as well until `pool_updates` updates are
        pooled (`_pooled_moments`: wide early, narrow later): the optimum changes slowly with t;
    (b) "optimizer": a few Adam steps per iteration on ||grad||^2 (the paper's family only).
Both are *lagged*: the mu used at a step comes from earlier steps only, so the estimator stays
exactly unbiased. On the Gaussian toy (tests/test_guidance.py) (a) wins clearly (variance vs SDS
at random t 0.87x against 1.14x; at t = 200 0.001x against 0.05x; at t = 500 0.03x against 2.5x):
it is the default.

Baselines (the paper's): depth, phi = 1 - Pearson(rendered depth, estimator depth of x_t), and
normals, phi = 1 - mean cos(rendered normal, estimator normal). The rendered maps are detached;
grad phi is autograd through the estimator (and what maps x_t to its input), never through the
UNet. Depth is compared like with like: when the estimator returns disparity the rendered depth
is inverted first.

Defaults. `SSDConfig()` is the paper's family (steps 3a + 3c). steinsplat's generation uses
steps 3a + 3b (noise_kernel=3, noise_mix_channels=True, noise_maps="poly2") and, for scenes, the
depth baseline: measured on ShapeWorld, the estimator baselines add no variance reduction on top
of step 3b at ~1.3-1.6x the cost of an SDS step (README, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..estimators.base import GeometryEstimator, GeometryPrediction
from ..priors.base import DiffusionPrior, PromptEmbeds
from ..render.common import RenderOutput
from .base import Estimate, Guidance, GuidanceConfig, weighting
from .noise_cv import NoiseFeatures, NoiseMaps, noise_maps, noise_shifts, num_noise_maps

Phi = Callable[[Tensor], Tensor]  # x_t [B, C, h, w] -> [B]


# ---------------------------------------------------------------------------- the control variate
def _cv_and_phi(phi: Phi, x_t: Tensor, eps: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    x = x_t.detach().requires_grad_(True)  # phi sees x_t only; eps never enters its graph
    with torch.enable_grad():
        val = phi(x)  # [B]
        if val.shape != (x.shape[0],):
            raise ValueError(f"phi must map x_t [B, ...] to [B], got {tuple(val.shape)} for B={x.shape[0]}")
        if val.requires_grad:
            # sum over the batch: d/dx_b sum_j phi(x_j) = d phi(x_b)/dx_b as long as phi treats
            # samples independently (no batch statistics inside phi).
            (g,) = torch.autograd.grad(val.sum(), x, allow_unused=True)
            g = torch.zeros_like(x) if g is None else g
        else:  # a constant phi: grad phi = 0
            g = torch.zeros_like(x)
    sigma_b = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma_b.dim() == 1:
        sigma_b = sigma_b.view(-1, 1, 1, 1)  # [B] -> [B, 1, 1, 1]
    v = val.detach().to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # [B, 1, 1, 1]
    cv = eps * v - sigma_b * g.detach()  # [B, C, h, w]
    return cv, val.detach()


def stein_control_variate(phi: Phi, x_t: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
    """CV = eps * phi(x_t) - sigma * grad_{x_t} phi(x_t), the shape of x_t [B, C, h, w].

    phi: x_t [B, C, h, w] -> [B] (one scalar per sample, samples treated independently);
    sigma: a float, [B] or [B, 1, 1, 1] (sigma_t). Autograd runs through phi only; the result is
    detached. E_eps[CV] = 0 when x_t = alpha_t x + sigma eps with eps ~ N(0, I).
    """
    return _cv_and_phi(phi, x_t, eps, sigma)[0]


# ---------------------------------------------------------------------------- baselines
@dataclass
class BaselineContext:
    """Everything a baseline may depend on besides x_t (never eps)."""

    t: Tensor  # [B] timesteps
    alpha: Tensor  # [B, 1, 1, 1]
    sigma: Tensor  # [B, 1, 1, 1]
    cameras: Cameras
    render: Optional[RenderOutput]  # the render x came from (read detached)
    prior: DiffusionPrior


class Baseline(Protocol):
    """Builds phi for one step."""

    name: str

    def build(self, ctx: BaselineContext) -> Phi:
        ...


class FunctionBaseline:
    """phi(x_t) = fn(x_t, t): any differentiable function, e.g. an analytic one in tests."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "function") -> None:
        self.fn = fn
        self.name = name

    def build(self, ctx: BaselineContext) -> Phi:
        return lambda x_t: self.fn(x_t, ctx.t)


def pearson(a: Tensor, b: Tensor, mask: Optional[Tensor] = None, eps: float = 1e-8) -> Tensor:
    """Pearson correlation per sample of a, b [B, ...] -> [B], over the pixels where mask [B, ...] is 1."""
    a = a.flatten(1)
    b = b.flatten(1)
    m = torch.ones_like(a) if mask is None else mask.flatten(1).to(a.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    a = (a - (m * a).sum(1, keepdim=True) / n) * m
    b = (b - (m * b).sum(1, keepdim=True) / n) * m
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _alpha_mask(render: RenderOutput, size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """[B, 1, h, w] float mask of covered pixels (rendered alpha > threshold) at the estimator's size."""
    a = render.alpha.detach().permute(0, 3, 1, 2).float()  # [B, 1, H, W]
    if a.shape[-2:] != size:
        a = F.interpolate(a, size=size, mode="area")
    return (a > threshold).float()


def estimator_input(estimator: GeometryEstimator, x_t: Tensor, ctx: BaselineContext,
                    input_scale: float = 1.0) -> GeometryPrediction:
    """Run the estimator on x_t: model-space estimators get x_t and t; RGB estimators get the
    prior's decoding of x_t as [B, 3, H, W] in [0, 1] (differentiable). input_scale < 1 shrinks
    the estimator's input first (area average, differentiable): cheaper, and still a valid phi."""
    if estimator.input_space == "model":
        inp = x_t
    else:
        inp = ctx.prior.decode(x_t).permute(0, 3, 1, 2)  # [B, 3, H, W]
    if input_scale != 1.0:
        size = [max(1, round(s * input_scale)) for s in inp.shape[-2:]]
        inp = F.interpolate(inp, size=size, mode="area")
    return estimator(inp, ctx.t, ctx.cameras)


class DepthBaseline:
    """phi = 1 - Pearson(rendered depth (detached), estimator depth of x_t), like with like,
    over the rendered pixels with alpha > 0.5 (`mask_by_alpha`; the background's depth is 0 in a
    render and unconstrained for most estimators)."""

    name = "depth"

    def __init__(self, estimator: GeometryEstimator, mask_by_alpha: bool = True, input_scale: float = 1.0) -> None:
        self.estimator = estimator
        self.mask_by_alpha = mask_by_alpha
        self.input_scale = input_scale  # the estimator sees x_t resized by this factor

    def build(self, ctx: BaselineContext) -> Phi:
        if ctx.render is None:
            raise ValueError("the depth baseline needs the render: pass render=RenderOutput to guidance.step")
        ref = ctx.render.depth.detach().permute(0, 3, 1, 2).float()  # [B, 1, H, W], 0 where empty

        def phi(x_t: Tensor) -> Tensor:
            pred = estimator_input(self.estimator, x_t, ctx, self.input_scale)
            if pred.depth is None:
                raise ValueError("this estimator predicts no depth; use the normal baseline")
            d = pred.depth  # [B, 1, h, w]
            r = F.interpolate(ref, size=d.shape[-2:], mode="area") if ref.shape[-2:] != d.shape[-2:] else ref
            if pred.depth_kind == "disparity":  # correlate disparity with disparity (empty -> 0 = infinitely far)
                r = torch.where(r > 1e-6, 1.0 / r.clamp_min(1e-6), torch.zeros_like(r))
            mask = _alpha_mask(ctx.render, d.shape[-2:]) if self.mask_by_alpha else None
            return 1.0 - pearson(r, d, mask)

        return phi


class NormalBaseline:
    """phi = 1 - mean cosine(rendered normal, estimator normal) over covered pixels, both in the
    estimator's camera frame (OpenCV axes): world normals are rotated by the viewmat's R."""

    name = "normal"

    def __init__(self, estimator: GeometryEstimator, input_scale: float = 1.0) -> None:
        self.estimator = estimator
        self.input_scale = input_scale  # the estimator sees x_t resized by this factor

    def build(self, ctx: BaselineContext) -> Phi:
        if ctx.render is None:
            raise ValueError("the normal baseline needs the render: pass render=RenderOutput to guidance.step")
        R = ctx.cameras.viewmats[:, :3, :3].to(ctx.render.normal.device).float()  # [B, 3, 3] world -> camera
        n_w = ctx.render.normal.detach().float()  # [B, H, W, 3] world
        ref = torch.einsum("bij,bhwj->bihw", R, n_w)  # [B, 3, H, W] camera frame

        def phi(x_t: Tensor) -> Tensor:
            pred = estimator_input(self.estimator, x_t, ctx, self.input_scale)
            if pred.normal is None:
                raise ValueError("this estimator predicts no normals; use the depth baseline")
            n = pred.normal  # [B, 3, h, w]
            r = ref
            if r.shape[-2:] != n.shape[-2:]:
                r = F.interpolate(r, size=n.shape[-2:], mode="area")
            mask = (r.norm(dim=1) > 0.5).to(n.dtype)  # [B, h, w] covered pixels
            r = F.normalize(r, dim=1)
            cos = (F.normalize(n, dim=1) * r).sum(1)  # [B, h, w]
            return 1.0 - (cos * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)

        return phi


def _moments(cv: Tensor, eps_hat: Tensor, w2: Tensor, granularity: str) -> tuple[Tensor, Tensor]:
    """Per-sample least-squares moments: A = mean(w^2 CV_i CV_j), b = mean(w^2 eps_hat CV_i), the mean
    taken over what one mu is shared by. cv [B, K, C, h, w], eps_hat [B, C, h, w], w2 [B, 1, 1, 1, 1]
    -> A [B, K, K, *s], b [B, K, *s] with s = (1, 1, 1) | (C, 1, 1) | (C, h, w)."""
    B, K, C, h, w = cv.shape
    wcv = w2 * cv  # [B, K, C, h, w]
    if granularity == "pixel":
        return wcv.unsqueeze(2) * cv.unsqueeze(1), (wcv * eps_hat.unsqueeze(1))
    # one batched matrix product instead of a [B, K, K, C, h, w] intermediate
    if granularity == "channel":
        a = wcv.permute(0, 2, 1, 3, 4).reshape(B * C, K, h * w)  # [B*C, K, hw]
        c = cv.permute(0, 2, 1, 3, 4).reshape(B * C, K, h * w)
        A = torch.bmm(a, c.transpose(1, 2)) / (h * w)  # [B*C, K, K]
        b = torch.bmm(a, eps_hat.reshape(B * C, h * w, 1)) / (h * w)  # [B*C, K, 1]
        return A.view(B, C, K, K).permute(0, 2, 3, 1)[..., None, None], b.view(B, C, K).permute(0, 2, 1)[..., None, None]
    if granularity == "scalar":
        a = wcv.reshape(B, K, C * h * w)
        c = cv.reshape(B, K, C * h * w)
        A = torch.bmm(a, c.transpose(1, 2)) / (C * h * w)  # [B, K, K]
        b = torch.bmm(a, eps_hat.reshape(B, C * h * w, 1)) / (C * h * w)  # [B, K, 1]
        return A[..., None, None, None], b[..., None, None]
    raise ValueError(f"unknown mu_granularity {granularity!r}: use 'scalar', 'channel' or 'pixel'")


# ---------------------------------------------------------------------------- mu
def spd_solve(A: Tensor, b: Tensor) -> Tensor:
    """Solve A y = b for many small symmetric positive-definite systems, A [..., K, K], b [..., K].

    Gaussian elimination without pivoting (fine for SPD), in elementwise ops: for the K <= 4 of
    SSD this is far cheaper than a batched LAPACK call, whose threading overhead dominates on
    small CPUs."""
    K = A.shape[-1]
    A = A.clone()
    b = b.clone()
    for i in range(K):  # forward elimination
        piv = A[..., i, i].clamp_min(1e-30)
        for j in range(i + 1, K):
            f = A[..., j, i] / piv
            A[..., j, :] = A[..., j, :] - f[..., None] * A[..., i, :]
            b[..., j] = b[..., j] - f * b[..., i]
    y = torch.zeros_like(b)
    for i in reversed(range(K)):  # back substitution
        acc = b[..., i] - (A[..., i, i + 1 :] * y[..., i + 1 :]).sum(-1)
        y[..., i] = acc / A[..., i, i].clamp_min(1e-30)
    return y


@dataclass
class SSDConfig(GuidanceConfig):
    mu_mode: Literal["least_squares", "optimizer", "fixed"] = "least_squares"  # how mu is chosen (module docstring)
    mu_granularity: Literal["scalar", "channel", "pixel"] = "channel"  # what mu is shared over
    mu_fixed: Optional[Sequence[float]] = None  # "fixed" mode: one mu per CV (constant first); default (1, 0, ..., 0) = SDS
    timestep_bins: int = 10  # separate mu per bin of t (the optimum changes a lot with t)
    ema_decay: float = 0.95  # least squares: EMA decay of the moments (per bin)
    ridge: float = 1e-3  # least squares: ridge (relative to the trace) pulling mu towards SDS's (1, 0, ..., 0)
    opt_lr: float = 0.05  # optimizer: Adam learning rate on mu
    opt_steps: int = 3  # optimizer: Adam steps per iteration
    noise_kernel: int = 1  # step 3b: k x k window of shifted noises (1 with noise_maps "none" = the paper's constant term only)
    noise_mix_channels: bool = False  # step 3b also with the other channels' noise (a C -> C filter)
    noise_maps: NoiseMaps = "none"  # step 3b: modulate the shifted noises by maps of the detached render (none | alpha | poly2)
    solve_every: int = 4  # least squares with K > 4 CVs: re-solve a bin's mu after this many updates of its moments (after each of the first ones)
    pool_updates: int = 32  # least squares: a bin is solved with its nearest bins' moments until their (EMA-capped) updates add up to this (0: its own only)
    constant_term: bool = True  # CV_0 = eps in the family (False, an ablation: SDS is then not inside the family)
    guard: bool = True  # step 5: per timestep bin, SDS's mu wherever the fitted mu has shown a larger second moment out of sample
    guard_min_updates: int = 2  # step 5: updates a bin needs before its fitted mu is used (and measured); SDS before
    guard_decay: float = 0.9  # step 5: EMA decay of the paired differences of second moments (it judges the current fit)
    guard_z: float = 1.0  # step 5: SDS's mu where the fit's excess second moment is above guard_z standard errors
    guard_pool: int = 8  # step 5: the second moments are of the gradient average-pooled over f x f blocks (1: per element)


class SSD(Guidance):
    """Stein Score Distillation with a constant term plus geometric baselines."""

    def __init__(self, prior: DiffusionPrior, baselines: Sequence[Baseline] = (), config: Optional[SSDConfig] = None) -> None:
        super().__init__(prior, config or SSDConfig())
        self.config: SSDConfig
        self.baselines = list(baselines)
        C = prior.model_channels
        self.shifts = noise_shifts(self.config.noise_kernel, self.config.noise_mix_channels, C)  # step 3b
        self.K_noise = len(self.shifts) * num_noise_maps(self.config.noise_maps, C)  # CV_0 and step 3b's
        if not self.config.constant_term:
            if self.K_noise > 1:
                raise ValueError("constant_term=False leaves out CV_0 = eps: use it without noise_kernel > 1 or noise_maps")
            if not self.baselines:
                raise ValueError("constant_term=False needs at least one baseline")
            self.K_noise = 0
        self.K = self.K_noise + len(self.baselines)  # number of control variates (constant first)
        if self.config.guard_pool < 1:
            raise ValueError(f"guard_pool must be at least 1 (1: no pooling), got {self.config.guard_pool}")
        if self.K_noise > 1 and self.config.mu_mode == "optimizer":
            raise ValueError("SSD's shifted-noise control variates (noise_kernel > 1 or noise_maps) need "
                             "mu_mode='least_squares' (or 'fixed')")
        self._mu_shape: Optional[tuple[int, ...]] = None
        self._A: Optional[Tensor] = None  # [bins, K, K, *mu_shape] EMA of E[w^2 CV_i CV_j]
        self._b: Optional[Tensor] = None  # [bins, K, *mu_shape] EMA of E[w^2 eps_hat CV_i]
        self._n: Optional[Tensor] = None  # [bins] updates per bin
        self._mu_table: Optional[Tensor] = None  # least squares: [bins, K, *mu_shape], (1, 0, ...) until a bin has data
        self._mu_param: Optional[torch.nn.Parameter] = None  # optimizer mode: [bins, K, *mu_shape]
        self._opt: Optional[torch.optim.Optimizer] = None

    # ---- mu storage
    def _init_state(self, x: Tensor) -> None:
        C, h, w = x.shape[1:]
        g = self.config.mu_granularity
        self._mu_shape = {"scalar": (1, 1, 1), "channel": (C, 1, 1), "pixel": (C, h, w)}[g]
        if g == "pixel" and self.K_noise > 1:
            raise ValueError(f"mu per pixel with {self.K} control variates needs {self.K}^2 moments per pixel: "
                             "use mu_granularity='channel' (or 'scalar') with noise_kernel > 1 or noise_maps")
        nb, K = self.config.timestep_bins, self.K
        dev = x.device
        self._A = torch.zeros(nb, K, K, *self._mu_shape, device=dev)
        self._b = torch.zeros(nb, K, *self._mu_shape, device=dev)
        self._n = torch.zeros(nb, dtype=torch.long, device=dev)
        self._mu_table = self._initial_mu(dev).expand(nb, K, *self._mu_shape).clone()  # [bins, K, *s] solved mu
        self._mu_param = torch.nn.Parameter(self._mu_table.clone())
        self._guard = torch.zeros(3, nb, device=dev)  # step 5: [EMA of the paired difference D = ||grad_fit||^2 - ||grad_sds||^2, of D^2, measurements] per bin
        self._opt = torch.optim.Adam([self._mu_param], lr=self.config.opt_lr)

    def _initial_mu(self, device: torch.device) -> Tensor:
        """[K, 1, 1, 1]: the fixed values, or (1, 0, ..., 0) = SDS."""
        if self.config.mu_fixed is not None:
            if len(self.config.mu_fixed) != self.K:
                raise ValueError(f"mu_fixed needs {self.K} values (constant first, then one per baseline)")
            mu = torch.tensor([float(m) for m in self.config.mu_fixed], device=device)
        else:
            mu = torch.zeros(self.K, device=device)
            mu[0] = 1.0 if self.config.constant_term else 0.0
        return mu.view(self.K, 1, 1, 1)

    def _bins(self, t: Tensor) -> Tensor:
        T = self.prior.schedule.num_train_timesteps
        return (t.long() * self.config.timestep_bins // T).clamp(0, self.config.timestep_bins - 1)

    def current_mu(self, t: Tensor) -> Tensor:
        """mu for timesteps t [B] -> [B, K, *mu_shape] (from earlier steps only)."""
        assert self._mu_shape is not None and self._mu_table is not None
        bins = self._bins(t)
        if self.config.mu_mode == "fixed":
            init = self._initial_mu(t.device).expand(self.K, *self._mu_shape)
            return init.unsqueeze(0).expand(len(t), *init.shape)
        if self.config.mu_mode == "optimizer":
            return self._mu_param.detach()[bins]
        return self._mu_table[bins]

    def _pooled_moments(self, ks: Tensor) -> tuple[Tensor, Tensor]:
        """The moments bins ks [n] are solved from: a bin's own and its nearest neighbours'
        (k, k-1, k+1, k-2, ...) until their update counts, each capped at the EMA's memory
        1 / (1 - ema_decay), add up to `pool_updates`; a bin whose own count reaches it alone uses
        its own. Each bin enters scaled by 1 / tr A_j (mu is the same for (A, b) and (c A, c b), so
        this only weights the bins alike) times its capped count. A smoothing in t whose width
        adapts: wide early in a run, when every bin has seen a few steps only, narrow later (with
        the defaults, 32 against a memory of 20, a bin always shares with one or two neighbours).
        The optimal filter changes slowly with t, so neighbours' data make a better fit than none.
        -> A [n, K, K, *s], b [n, K, *s]."""
        cfg = self.config
        nb = self._n.shape[0]
        cap = 1.0 / (1.0 - cfg.ema_decay)
        counts = self._n.float().clamp(max=cap)  # [bins]
        traces = self._A.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)  # [bins, *s] tr A_j, once
        A_out, b_out = [], []
        for k in ks.tolist():
            order = sorted(range(nb), key=lambda j: (abs(j - k), j))
            chosen, total = [], 0.0
            for j in order:
                if total >= cfg.pool_updates:
                    break
                if counts[j] > 0:
                    chosen.append(j)
                    total += float(counts[j])
            if chosen == [k] or not chosen:
                A_out.append(self._A[k])
                b_out.append(self._b[k])
                continue
            A_acc, b_acc = torch.zeros_like(self._A[k]), torch.zeros_like(self._b[k])
            for j in chosen:
                c = float(counts[j]) / traces[j]  # [*s]
                A_acc += c * self._A[j]
                b_acc += c * self._b[j]
            A_out.append(A_acc)
            b_out.append(b_acc)
        return torch.stack(A_out), torch.stack(b_out)

    def _solve(self, ks: Tensor) -> None:
        """Least squares for bins ks [n]: sum_j A_ij mu_j = b_i per element, ridge relative to the trace
        (one batched solve per step)."""
        K = self.K
        A_pool, b_pool = self._pooled_moments(ks) if self.config.pool_updates > 0 else (self._A[ks], self._b[ks])
        A_ = A_pool.movedim(1, -1).movedim(1, -1)  # [n, *s, K, K]
        b_ = b_pool.movedim(1, -1).unsqueeze(-1)  # [n, *s, K, 1]
        tr = A_.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]  # [n, *s, 1, 1]
        lam = self.config.ridge * tr / K + 1e-12
        # ridge towards SDS's mu = (1, 0, ..., 0), not towards 0: (A + lam I) mu = b + lam mu_sds,
        # so a poorly determined mu falls back to SDS instead of shrinking the constant term.
        mu_sds = self._initial_mu(A_.device).view(K)
        A_ = A_ + lam * torch.eye(K, device=A_.device)
        rhs = b_.squeeze(-1) + lam.squeeze(-1) * mu_sds
        if K <= 4:
            mu = spd_solve(A_, rhs)  # [n, *s, K]
        else:  # the shifted-noise CVs: hundreds of unknowns, LAPACK's Cholesky pays off
            L, info = torch.linalg.cholesky_ex(A_.double())
            if bool((info != 0).any()):  # not positive definite (should not happen with the ridge): keep the old mu
                return
            mu = torch.cholesky_solve(rhs.double().unsqueeze(-1), L).squeeze(-1).to(A_.dtype)
        self._mu_table[ks] = mu.movedim(-1, 1)  # [n, K, *s]

    def _update(self, eps_hat: Tensor, cv: Optional[Tensor], w: Tensor, t: Tensor,
                noise: Optional[NoiseFeatures] = None, residual: Optional[Tensor] = None) -> None:
        """eps_hat [B, C, h, w], w [B, 1, 1, 1]; the CVs either materialised, cv [B, K, C, h, w], or
        as step 3b's features `noise` followed by the baselines' cv [B, K_b, C, h, w] (or None),
        whose mu are then fitted to `residual` = eps_hat - the noise terms (noise_cv.py)."""
        bins = self._bins(t)
        w2 = (w * w).unsqueeze(1)  # [B, 1, 1, 1, 1]
        if self.config.mu_mode == "least_squares":
            if noise is None:
                A, b = _moments(cv, eps_hat, w2, self.config.mu_granularity)  # [B, K, K, *s], [B, K, *s]
            else:
                A, b = noise.moments(eps_hat, cv, w2.flatten(), residual)  # [B, K, K, C], [B, K, C]
                if self.config.mu_granularity == "scalar":
                    A, b = A.mean(-1, keepdim=True), b.mean(-1, keepdim=True)
                A, b = A[..., None, None], b[..., None, None]  # [B, K, K, *s], [B, K, *s]
            present = bins.unique()
            for k in present.tolist():
                sel = bins == k
                self._n[k] += 1
                r = max(1.0 - self.config.ema_decay, 1.0 / int(self._n[k]))  # bias-free start
                self._A[k].mul_(1 - r).add_(A[sel].mean(0), alpha=r)
                self._b[k].mul_(1 - r).add_(b[sel].mean(0), alpha=r)
            every = 1 if self.K <= 4 else self.config.solve_every
            due = present[(self._n[present] % every == 0) | (self._n[present] <= every)]  # every update at first
            if len(due):
                self._solve(due)
        elif self.config.mu_mode == "optimizer":
            self._n[bins] += 1
            scale = float((w2.squeeze(1) * eps_hat**2).mean().clamp_min(1e-12))
            for _ in range(self.config.opt_steps):
                self._opt.zero_grad(set_to_none=True)
                mu = self._mu_param[bins]  # [B, K, *s]
                g = w * (eps_hat - (mu * cv).sum(1))  # [B, C, h, w]
                loss = (g**2).mean() / scale  # normalised ||grad||^2
                loss.backward()
                self._opt.step()

    # ---- checkpoints
    def state_tensors(self) -> dict[str, Tensor]:
        t = super().state_tensors()
        if self._mu_shape is None:
            return t
        t.update({"ssd.A": self._A, "ssd.b": self._b, "ssd.n": self._n, "ssd.mu_table": self._mu_table,
                  "ssd.mu_param": self._mu_param.detach(), "ssd.guard": self._guard})
        st = self._opt.state.get(self._mu_param, {})
        for k, v in st.items():
            t[f"ssd.opt.{k}"] = torch.as_tensor(v)
        for i, bl in enumerate(self.baselines):  # e.g. the per-pixel baselines' probe generators
            if hasattr(bl, "state_tensors"):
                t.update({f"ssd.baseline{i}.{k}": v for k, v in bl.state_tensors().items()})
        return t

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_state_tensors(tensors)
        if "ssd.mu_table" not in tensors:
            return
        table = tensors["ssd.mu_table"]
        if table.shape[:2] != (self.config.timestep_bins, self.K):
            raise ValueError(f"saved SSD state has {tuple(table.shape[:2])} (bins, control variates), this SSD has "
                             f"({self.config.timestep_bins}, {self.K}): use the same baselines and timestep_bins")
        dev = self.prior.device
        self._mu_shape = tuple(table.shape[2:])
        self._A = tensors["ssd.A"].to(dev).clone()
        self._b = tensors["ssd.b"].to(dev).clone()
        self._n = tensors["ssd.n"].to(dev).clone()
        self._mu_table = table.to(dev).clone()
        self._mu_param = torch.nn.Parameter(tensors["ssd.mu_param"].to(dev).clone())
        self._guard = tensors["ssd.guard"].to(dev).clone() if "ssd.guard" in tensors else torch.zeros(3, len(table), device=dev)
        self._opt = torch.optim.Adam([self._mu_param], lr=self.config.opt_lr)
        st = {k[len("ssd.opt."):]: v.to(dev).clone() for k, v in tensors.items() if k.startswith("ssd.opt.")}
        if st:
            self._opt.state[self._mu_param] = st
        for i, bl in enumerate(self.baselines):
            pre = f"ssd.baseline{i}."
            if hasattr(bl, "load_state_tensors"):
                bl.load_state_tensors({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})

    # ---- the estimator
    def _estimate(self, x: Tensor, t: Tensor, eps: Tensor, embeds: PromptEmbeds, cameras: Cameras,
                  render: Optional[RenderOutput], update_state: bool) -> Estimate:
        prior = self.prior
        if self._mu_shape is None:
            self._init_state(x)
        alpha, sigma = prior.schedule.alpha_t(t), prior.schedule.sigma_t(t)  # [B, 1, 1, 1]
        x_t = alpha * x + sigma * eps  # [B, C, h, w]  step 1
        eps_hat = prior.predict_noise(x_t, t, embeds, cameras, self.config.guidance_scale).float()  # step 2
        ctx = BaselineContext(t=t, alpha=alpha, sigma=sigma, cameras=cameras, render=render, prior=prior)
        phis, bl_cvs = [], []
        for bl in self.baselines:  # step 3c (per-pixel field baselines: stein_pixel.py)
            if hasattr(bl, "control_variate"):
                cv_k, phi_k = bl.control_variate(ctx, x_t, eps)
            else:
                cv_k, phi_k = _cv_and_phi(bl.build(ctx), x_t, eps, sigma)
            bl_cvs.append(cv_k)
            phis.append(phi_k)
        mu = self.current_mu(t)  # [B, K, *s]  (lagged: from earlier steps)
        w = weighting(prior.schedule, t, self.config.weighting)  # [B, 1, 1, 1]
        if self.K_noise <= 1:  # the paper's family: CV_0 = eps (step 3a, unless left out) and the baselines
            cv = torch.stack([eps] * self.K_noise + bl_cvs, dim=1)  # [B, K, C, h, w]
            grad = w * (eps_hat - (mu * cv).sum(1))  # [B, C, h, w]  step 4
            if update_state and self.config.mu_mode != "fixed":
                self._update(eps_hat, cv, w, t)
        else:  # steps 3a + 3b as features, never materialised (noise_cv.py)
            noise = NoiseFeatures(eps.float(), noise_maps(self.config.noise_maps, x, render), self.shifts,
                                  self.config.noise_kernel)
            mu_n = mu[:, : self.K_noise, :, 0, 0].expand(-1, -1, eps.shape[1])  # [B, K_noise, C]
            cv_b = torch.stack(bl_cvs, dim=1) if bl_cvs else None  # [B, K_b, C, h, w]
            residual = eps_hat - noise.combine(mu_n)  # [B, C, h, w]
            est_b = (mu[:, self.K_noise :] * cv_b).sum(1) if cv_b is not None else 0.0
            grad = w * (residual - est_b)  # step 4
            if update_state and self.config.mu_mode != "fixed":
                self._update(eps_hat, cv_b, w, t, noise=noise, residual=residual)
        if self.config.guard and self.config.constant_term and self.config.mu_mode != "fixed":  # step 5
            grad = self._guarded(grad, w * (eps_hat - eps), t, update_state)
        phi = torch.stack(phis, 1) if phis else None
        return Estimate(grad=grad, x_t=x_t, phi=phi, mu=mu.flatten(2).mean((0, 2)).detach())

    def _guarded(self, grad: Tensor, grad_sds: Tensor, t: Tensor, update_state: bool) -> Tensor:
        """Step 5: per timestep bin, serve SDS's gradient (mu = (1, 0, ..., 0)) instead of the fitted mu's
        until the bin has `guard_min_updates` updates, and wherever the fit has shown, on later steps
        than those it was fitted on, a larger second moment than SDS's. grad, grad_sds [B, C, h, w].

        Both gradients have the same mean, so E||grad_fit||^2 - E||grad_sds||^2 is exactly the
        difference of their variances; it is estimated from the paired difference
        D = ||pool(grad_fit)||^2 - ||pool(grad_sds)||^2 of each step (same t, eps, cameras), whose EMA
        mean and spread give a standard error. The fit is refused where mean(D) > guard_z x SE: a
        clearly worse fit (few updates, hundreds of CVs, a tiny residual) is caught within a few
        steps, and a fit that is better, or not clearly worse, is kept. (An earlier guard waited
        for evidence that the fit was better; noisy evidence then kept SDS at steps where the fit
        halved the parameter-space variance.) Decisions use earlier steps only, so the estimator
        stays unbiased.
        The second moments are taken after average pooling over guard_pool x guard_pool blocks: the
        parameters' gradient sums the image gradient over each Gaussian's footprint, so it sees the
        low frequencies first."""
        cfg = self.config
        bins = self._bins(t)
        m, m2, n = self._guard
        n_eff = n.clamp(1.0, (1 + cfg.guard_decay) / (1 - cfg.guard_decay))  # [bins] the EMA's effective sample size
        se = ((m2 - m * m).clamp_min(0.0) / n_eff).sqrt()  # [bins] standard error of mean(D)
        worse = (n >= 2) & (m > cfg.guard_z * se)  # [bins] (lagged: from earlier steps)
        use = (self._n[bins] > cfg.guard_min_updates) & ~worse[bins]  # [B] (_n counts this step's update too)
        if update_state:
            f = min(cfg.guard_pool, grad.shape[-1], grad.shape[-2])
            d = (F.avg_pool2d(grad, f).pow(2) - F.avg_pool2d(grad_sds, f).pow(2)).flatten(1).mean(1)  # [B] D per sample
            for k in bins.unique().tolist():
                if int(self._n[k]) <= cfg.guard_min_updates:  # not fitted yet: nothing to judge
                    continue
                sel = bins == k
                n[k] += 1
                r = max(1.0 - cfg.guard_decay, 1.0 / float(n[k]))
                dk = d[sel].mean()
                m[k] = (1 - r) * m[k] + r * dk
                m2[k] = (1 - r) * m2[k] + r * dk * dk
        return torch.where(use.view(-1, 1, 1, 1), grad, grad_sds)
