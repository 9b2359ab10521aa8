"""SSD's baselines (step 3c of ssd.py): what one baseline is, the shared estimator plumbing, and the
paper's two scalar baselines.

Stein's identity. For x_t | x ~ N(alpha_t x, sigma_t^2 I) and any differentiable scalar phi of
x_t (it may also depend on t, the camera and the *detached* render, but not on eps except
through x_t), Gaussian integration by parts gives E[eps phi(x_t)] = sigma_t E[grad_{x_t} phi(x_t)],
so the control variate
    CV = eps * phi(x_t) - sigma_t * grad_{x_t} phi(x_t)                      [B, C, h, w]
has E_eps[CV] = 0. (The form "eps * phi + grad phi" printed on the project page is NOT zero-mean;
tests/test_guidance.py checks both by Monte Carlo.)

The paper's baselines: depth, phi = 1 - Pearson(rendered depth, estimator depth of x_t), and
normals, phi = 1 - mean cos(rendered normal, estimator normal). The rendered maps are detached;
grad phi is autograd through the estimator (and what maps x_t to its input), never through the
UNet. Depth is compared like with like: when the estimator returns disparity the rendered depth
is inverted first. The per-pixel forms (a Stein *field* per pixel) are in stein_pixel.py.

What a baseline is (the `Baseline` protocol): a `name` and
    control_variate(ctx, x_t, eps) -> (CV [B, C, h, w] detached, value [B])
for one step, `ctx` (BaselineContext) holding everything it may read besides x_t. Two forms
build it: `ScalarBaseline` (implement `build(ctx) -> phi`, phi: x_t -> [B]; the CV above) and
stein_pixel.`FieldBaseline` (implement `build_field(ctx) -> g`, g: x_t -> [B, 1 or C, h, w]).
A baseline that reads a geometry estimator also subclasses `EstimatorBaseline`, which holds the
estimator, `mask_by_alpha` and `input_scale`, checks that the render is there and runs the
estimator (`predict`), so a subclass writes only its phi or g. A baseline with state (e.g. a
generator) adds `state_tensors()` / `load_state_tensors()`; SSD saves them with its own.

Adding a baseline: one module under guidance/ with a class such as

    class SilhouetteBaseline(EstimatorBaseline, ScalarBaseline):
        name = "silhouette"
        needs = "depth"  # the prediction it reads (the error if the estimator lacks it)
        instead = "normal"  # the baseline to suggest then
        def build(self, ctx):
            self.require_render(ctx)
            return lambda x_t: ...  # [B], differentiable in x_t

and one entry in guidance/ssd_choices.py's BASELINES (name -> class; the CLI's `--baseline`
choices are the Literal guidance_spec.SSDBaseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..geometry.base import GeometryEstimator, GeometryPrediction
from ..priors.base import DiffusionPrior
from ..render.common import RenderOutput

Phi = Callable[[Tensor], Tensor]  # x_t [B, C, h, w] -> [B]


# ---------------------------------------------------------------------------- the scalar control variate
def scalar_control_variate(phi: Phi, x_t: Tensor, eps: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """(CV [B, C, h, w], phi(x_t) [B]), both detached: `stein_control_variate` and the value it used."""
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
    return scalar_control_variate(phi, x_t, eps, sigma)[0]


# ---------------------------------------------------------------------------- what a baseline is
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
    """One control variate per step (SSD's step 3c)."""

    name: str

    def control_variate(self, ctx: BaselineContext, x_t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(CV [B, C, h, w] with E_eps[CV] = 0, detached; its value [B], for diagnostics)."""
        ...


class ScalarBaseline:
    """The paper's form: one phi per view, CV = eps phi(x_t) - sigma_t grad phi(x_t). Subclasses write `build`."""

    name = "scalar"

    def build(self, ctx: BaselineContext) -> Phi:
        """phi for this step: x_t [B, C, h, w] -> [B], differentiable, samples independent."""
        raise NotImplementedError

    def control_variate(self, ctx: BaselineContext, x_t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        return scalar_control_variate(self.build(ctx), x_t, eps, ctx.sigma)


class FunctionBaseline(ScalarBaseline):
    """phi(x_t) = fn(x_t, t): any differentiable function, e.g. an analytic one in tests."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "function") -> None:
        self.fn = fn
        self.name = name

    def build(self, ctx: BaselineContext) -> Phi:
        return lambda x_t: self.fn(x_t, ctx.t)


# ---------------------------------------------------------------------------- the estimator plumbing
def pearson(a: Tensor, b: Tensor, mask: Optional[Tensor] = None, eps: float = 1e-8) -> Tensor:
    """Pearson correlation per sample of a, b [B, ...] -> [B], over the pixels where mask [B, ...] is 1."""
    a = a.flatten(1)
    b = b.flatten(1)
    m = torch.ones_like(a) if mask is None else mask.flatten(1).to(a.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    a = (a - (m * a).sum(1, keepdim=True) / n) * m
    b = (b - (m * b).sum(1, keepdim=True) / n) * m
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def area_resize(a: Tensor, size: tuple[int, ...]) -> Tensor:
    """a [B, c, H, W] area-averaged to `size` (returned as it is when it already has it)."""
    return a if a.shape[-2:] == size else F.interpolate(a, size=size, mode="area")


def alpha_mask(render: RenderOutput, size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """[B, 1, h, w] float mask of covered pixels (rendered alpha > threshold) at the estimator's size."""
    a = render.alpha.detach().permute(0, 3, 1, 2).float()  # [B, 1, H, W]
    if a.shape[-2:] != size:
        a = F.interpolate(a, size=size, mode="area")
    return (a > threshold).float()


def like_with_like(ref_depth: Tensor, size: tuple[int, ...], depth_kind: str) -> Tensor:
    """The rendered depth ref_depth [B, 1, H, W] (0 where empty) at `size`, as the estimator reports it:
    inverted to disparity when depth_kind is "disparity" (empty -> 0 = infinitely far)."""
    r = area_resize(ref_depth, size)
    if depth_kind == "disparity":
        r = torch.where(r > 1e-6, 1.0 / r.clamp_min(1e-6), torch.zeros_like(r))
    return r


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


class EstimatorBaseline:
    """What every baseline reading a geometry estimator shares (scalar ones and stein_pixel's fields):
    the estimator and its options, the render check, and the estimator call. Combine it with a form:
    `class DepthBaseline(EstimatorBaseline, ScalarBaseline)`; keyword arguments it does not take go
    on to the form (e.g. FieldBaseline's divergence, probes, seed)."""

    name = "estimator"
    needs: Literal["depth", "normal"] = "depth"  # the prediction phi reads
    instead = "normal"  # the baseline to suggest when the estimator does not predict `needs`

    def __init__(self, estimator: GeometryEstimator, mask_by_alpha: bool = True, input_scale: float = 1.0,
                 **form_options) -> None:
        super().__init__(**form_options)
        self.estimator = estimator
        self.mask_by_alpha = mask_by_alpha  # compare over the covered pixels only (else all pixels)
        self.input_scale = input_scale  # the estimator sees x_t resized by this factor

    def require_render(self, ctx: BaselineContext) -> RenderOutput:
        """The render of this step (its depth and normals are the reference), or an error that says how."""
        if ctx.render is None:
            raise ValueError(f"the {self.name} baseline needs the render: pass render=RenderOutput to guidance.step")
        return ctx.render

    def rendered_depth(self, ctx: BaselineContext) -> Tensor:
        """[B, 1, H, W] the detached rendered depth, 0 where empty."""
        return self.require_render(ctx).depth.detach().permute(0, 3, 1, 2).float()

    def rendered_normal(self, ctx: BaselineContext) -> Tensor:
        """[B, 3, H, W] the detached rendered normals in the estimator's camera frame (OpenCV axes):
        world normals rotated by the viewmat's R."""
        render = self.require_render(ctx)
        R = ctx.cameras.viewmats[:, :3, :3].to(render.normal.device).float()  # [B, 3, 3] world -> camera
        return torch.einsum("bij,bhwj->bihw", R, render.normal.detach().float())  # [B, 3, H, W]

    def predict(self, x_t: Tensor, ctx: BaselineContext) -> GeometryPrediction:
        """The estimator's prediction at x_t (differentiable in x_t), checked to hold `needs`."""
        pred = estimator_input(self.estimator, x_t, ctx, self.input_scale)
        if getattr(pred, self.needs) is None:
            what = "normals" if self.needs == "normal" else "depth"
            raise ValueError(f"this estimator predicts no {what}; use the {self.instead} baseline")
        return pred


# ---------------------------------------------------------------------------- the paper's baselines
class DepthBaseline(EstimatorBaseline, ScalarBaseline):
    """phi = 1 - Pearson(rendered depth (detached), estimator depth of x_t), like with like,
    over the rendered pixels with alpha > 0.5 (`mask_by_alpha`; the background's depth is 0 in a
    render and unconstrained for most estimators)."""

    name = "depth"
    needs = "depth"
    instead = "normal"

    def build(self, ctx: BaselineContext) -> Phi:
        ref = self.rendered_depth(ctx)  # [B, 1, H, W], 0 where empty

        def phi(x_t: Tensor) -> Tensor:
            pred = self.predict(x_t, ctx)
            d = pred.depth  # [B, 1, h, w]
            r = like_with_like(ref, d.shape[-2:], pred.depth_kind)
            mask = alpha_mask(ctx.render, d.shape[-2:]) if self.mask_by_alpha else None
            return 1.0 - pearson(r, d, mask)

        return phi


class NormalBaseline(EstimatorBaseline, ScalarBaseline):
    """phi = 1 - mean cosine(rendered normal, estimator normal) over covered pixels (a rendered normal
    of length > 0.5; `mask_by_alpha` False: all pixels), both in the estimator's camera frame."""

    name = "normal"
    needs = "normal"
    instead = "depth"

    def build(self, ctx: BaselineContext) -> Phi:
        ref = self.rendered_normal(ctx)  # [B, 3, H, W] camera frame

        def phi(x_t: Tensor) -> Tensor:
            n = self.predict(x_t, ctx).normal  # [B, 3, h, w]
            r = area_resize(ref, n.shape[-2:])
            mask = (r.norm(dim=1) > 0.5).to(n.dtype) if self.mask_by_alpha else torch.ones_like(n[:, 0])  # [B, h, w]
            r = F.normalize(r, dim=1)
            cos = (F.normalize(n, dim=1) * r).sum(1)  # [B, h, w]
            return 1.0 - (cos * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)

        return phi
