"""The optimisation loop of text-to-3D. It only wires the modules; it knows no formula.

Per step:
  1. sample B cameras (orbit for objects, inside-out for scenes), and with `stratify` B stratified
     timesteps (otherwise the guidance draws them independently);
  2. render RGB, alpha, depth, normals (`render`);
  3. encode the RGB into the prior's model space, x [B, C, h, w] (`prior.encode_images`);
  4. ask the guidance (SDS / VSD / SSD) for the descent gradient on x (`guidance.step`);
  5. backpropagate it to the Gaussians (`x.backward(grad)`), skipping the step if anything is
     non-finite (counted, never applied);
  6. Adam step per parameter, learning-rate schedule, densify / prune on schedule.
State that a checkpoint needs to resume exactly: Gaussians, optimiser moments, densifier statistics,
guidance state (SSD's mu statistics, VSD's LoRA), the sampling generator and torch's global RNG.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from torch import Tensor

from .cameras import InsideOutSampler, OrbitSampler
from .densify import Densifier, DensifyConfig, for_mode, per_param_optimizers
from .gaussians import Gaussians
from .guidance.base import stratified_timesteps
from .priors.base import DiffusionPrior, PromptEmbeds
from .render import RenderOutput, render


@dataclass
class OptimConfig:
    steps: int = 500  # optimisation steps
    views: int = 4  # cameras per step
    resolution: int = 64  # render size (square); the prior resizes to its own resolution
    lr_means: float = 2e-3  # Adam learning rates (per parameter, gsplat's convention)
    lr_means_final: float = 2e-4  # means decay exponentially to this
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 2.5e-2
    lr_sh0: float = 1e-2
    lr_shN: float = 5e-4
    lr_mult: float = 1.0  # every learning rate above (lr_means_final too) is multiplied by this: the step size of a short schedule
    colour_average: float = 0.0  # average the colours (sh0, shN) over this last fraction of the run and end on that average (Polyak averaging; 0: off): each step's colours carry the guidance's noise, their mean over the last steps less of it; only steps after the last refinement count (the set of Gaussians must be fixed)
    lr_final: float = 1.0  # scales, quats, opacities, sh0 and shN decay exponentially to this fraction of their rate by the last step (1: constant); a short schedule at a high rate ends at a small one, which settles the colours instead of leaving them speckled
    background: Literal["auto", "white", "black", "random", "white_black"] = "auto"  # behind the splats in training: random = a uniform random colour per view, white_black = white or black at random per view (DreamGaussian's invert_bg_prob 0.5); auto: white for objects, random for scenes (docs/shapeworld.md, Backgrounds)
    orbit_distance: Optional[tuple[float, float]] = None  # objects: camera distance range in metres (None: the sampler's 1.6-2.0, ShapeWorld's training range)
    orbit_fovy: Optional[tuple[float, float]] = None  # objects: vertical field of view range in degrees, uniform per view (None: the sampler's fixed 40)
    stratify: bool = False  # stratify the views of a step: azimuths evenly spaced from one random offset, timesteps one per stratum of the annealed range (each view still uniform: same mean, less spread across the views)
    # densification schedule as fractions of `steps` (at 500 steps: refine at 150, 200, ..., 350; reset_every
    # 6.0: never within the run), so that a shorter run is the same run compressed
    densify: DensifyConfig = field(
        default_factory=lambda: DensifyConfig(start=0.2, stop=0.8, interval=0.1, cap=8_000, grow_grad2d=2e-4,
                                              reset_every=6.0)
    )


@dataclass
class StepLog:
    step: int
    loss: float
    grad_variance: Optional[float]  # guidance's running model-space variance
    gaussians: int
    seconds: float  # since the start of the run (this process)


@dataclass
class LoopState:
    step: int = 0  # next step to run
    skipped: int = 0  # steps skipped because something was non-finite
    history: list[StepLog] = field(default_factory=list)


class Callback:
    """Something that watches the loop (checkpoints, previews, the live viewer, progress): `Trainer.run`
    calls `on_step` after every step; whoever runs the loop calls `on_start` before the first step
    and `close` after the last (also when the run fails or is stopped). Every hook does nothing
    unless a subclass says otherwise."""

    def on_start(self, trainer: "Trainer", should_stop: Callable[[], bool]) -> None:
        """Before the first step; `should_stop()` tells whether a signal asked the run to stop."""

    def on_step(self, log: Optional["StepLog"], trainer: "Trainer") -> None:
        """After each step (`log`: None when the step was skipped, see LoopState.skipped)."""

    def close(self) -> None:
        """After the last step, whatever ended the loop."""


class Trainer:
    """Holds everything one optimisation needs; `run()` loops, `state_tensors()` checkpoints it."""

    def __init__(self, gaussians: Gaussians, prior: DiffusionPrior, guidance, embeds: PromptEmbeds, cfg: OptimConfig,
                 mode: str = "object", seed: int = 0, background: Optional[tuple[float, float, float]] = None,
                 random_background: Optional[bool] = None) -> None:
        self.g, self.prior, self.guidance, self.embeds, self.cfg = gaussians, prior, guidance, embeds, cfg
        self.mode = mode
        # background: behind the splats in previews (and in training unless random_background);
        # objects: white, as the prior saw them. Rooms have no background (docs/shapeworld.md,
        # section Backgrounds), so by default a scene is trained on a fresh random colour per view:
        # a hole in the walls then shows an arbitrary colour that no room image has, and the prior
        # closes it.
        # cfg.background "white" / "black" fix it, "random" / "white_black" draw one per view and step
        # (`training_background`); previews keep the fixed one (white for objects).
        self.background = background if background is not None else ((1.0, 1.0, 1.0) if mode == "object" else (0.0, 0.0, 0.0))
        if random_background is None and cfg.background in ("white", "black"):
            self.background = (1.0, 1.0, 1.0) if cfg.background == "white" else (0.0, 0.0, 0.0)
        if random_background is None:
            random_background = cfg.background in ("random", "white_black") or (cfg.background == "auto" and mode == "scene")
        self.random_background = random_background
        self.background_mode = ("white_black" if cfg.background == "white_black" else "random") if random_background else (
            "white" if self.background == (1.0, 1.0, 1.0) else "fixed " + ",".join(f"{c:g}" for c in self.background))
        if mode == "object":
            framing: dict[str, Any] = {}
            if cfg.orbit_distance is not None:
                framing["distance"] = tuple(cfg.orbit_distance)
            if cfg.orbit_fovy is not None:
                framing["fovy_range"] = tuple(cfg.orbit_fovy)
            self.sampler = OrbitSampler(width=cfg.resolution, height=cfg.resolution, **framing)
        else:
            self.sampler = InsideOutSampler(width=cfg.resolution, height=cfg.resolution)
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # gsplat's split draws its samples from torch's global RNG (torch.randn)
        m = cfg.lr_mult
        lrs = dict(means=cfg.lr_means * m, scales=cfg.lr_scales * m, quats=cfg.lr_quats * m,
                   opacities=cfg.lr_opacities * m, sh0=cfg.lr_sh0 * m, shN=cfg.lr_shN * m)
        self.base_lrs = dict(lrs)  # the rates at step 0; step() applies the schedule to them
        self.optimizers = per_param_optimizers(gaussians, lrs)
        scene_scale = 0.5 if mode == "object" else 2.0
        self.densifier = Densifier(for_mode(cfg.densify, mode), gaussians, self.optimizers, scene_scale=scene_scale,
                                   steps=cfg.steps)
        self.state = LoopState()
        self.colour_sum: dict[str, Tensor] = {}  # running sums of the colours over the averaging window
        self.colour_count = 0  # iterates in those sums
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ one step
    def lr_means(self, step: int) -> float:
        p = step / max(1, self.cfg.steps - 1)
        return self.cfg.lr_means * self.cfg.lr_mult * (self.cfg.lr_means_final / self.cfg.lr_means) ** p

    def lr_other(self, name: str, step: int) -> float:
        """The rate of a parameter other than the means at `step`: base * lr_final ** (step / (steps - 1))."""
        p = step / max(1, self.cfg.steps - 1)
        return self.base_lrs[name] * self.cfg.lr_final ** p

    def training_background(self, views: int) -> Tensor | tuple[float, float, float]:
        """The background of this step's views: the fixed colour, or [B, 3] drawn from the run's generator
        (random: uniform colours; white_black: each view white or black with probability 1/2)."""
        if not self.random_background:
            return self.background
        if self.background_mode == "white_black":
            return (torch.rand(views, 1, generator=self.generator) < 0.5).float().expand(views, 3).clone()  # [B, 3]
        return torch.rand(views, 3, generator=self.generator)  # [B, 3]

    def step(self) -> Optional[StepLog]:
        s, cfg = self.state.step, self.cfg
        lr = self.lr_means(s)
        self.optimizers["means"].param_groups[0]["lr"] = lr
        if self.cfg.lr_final != 1.0:
            for name, o in self.optimizers.items():
                if name != "means":
                    o.param_groups[0]["lr"] = self.lr_other(name, s)
        cams = self.sampler.sample(cfg.views, self.generator, stratified=cfg.stratify).to(self.g.device)  # 1.
        bg = self.training_background(len(cams))  # [B, 3] or a fixed (r, g, b)
        out: RenderOutput = render(self.g, cams, background=bg)  # 2. [B, H, W, 3] ...
        x = self.prior.encode_images(out.rgb)  # 3. [B, C, h, w]
        self.densifier.pre_backward(s, out.info)
        progress = s / max(1, cfg.steps)
        t = None  # unstratified: the guidance draws one t per view
        if cfg.stratify:
            t = stratified_timesteps(len(cams), self.prior.timestep_range(progress), self.generator)  # [B]
        gout = self.guidance.step(x, self.embeds, cams, render=out, progress=progress, t=t,
                                  generator=self.generator)  # 4.
        ok = bool(torch.isfinite(gout.grad).all())
        if ok:
            x.backward(gout.grad.to(x.dtype))  # 5.
            ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.g.splats.values())
        if not ok:
            self.state.skipped += 1
            for o in self.optimizers.values():
                o.zero_grad(set_to_none=True)
            self.state.step += 1
            return None
        for o in self.optimizers.values():  # 6.
            o.step()
            o.zero_grad(set_to_none=True)
        self.densifier.post_backward(s, out.info, lr=lr)
        self.average_colours(s)
        self.state.step += 1
        log = StepLog(s, float(gout.loss), gout.diagnostics.running_variance, len(self.g), time.perf_counter() - self.t0)
        self.state.history.append(log)
        return log

    # ------------------------------------------------------------------ colour averaging
    COLOURS = ("sh0", "shN")

    def colour_window_start(self) -> int:
        """The first step whose colours the average holds: the last colour_average of the run, and not before
        the refinements end (densification changes the set of Gaussians)."""
        cfg = self.cfg
        return max(int(round(cfg.steps * (1.0 - cfg.colour_average))), self.densifier.schedule.stop)

    @torch.no_grad()
    def average_colours(self, s: int) -> None:
        """After step s: add the colours to the window's sums; after the last step, set them to the mean."""
        cfg = self.cfg
        if cfg.colour_average <= 0 or s < self.colour_window_start():
            return
        if self.colour_sum and next(iter(self.colour_sum.values())).shape[0] != len(self.g):
            self.colour_sum, self.colour_count = {}, 0  # the set changed (a late prune): start the window again
        for k in self.COLOURS:
            v = self.g.splats[k].detach()
            self.colour_sum[k] = self.colour_sum[k] + v if k in self.colour_sum else v.clone()
        self.colour_count += 1
        if s == cfg.steps - 1:
            for k in self.COLOURS:
                self.g.splats[k].data.copy_(self.colour_sum[k] / self.colour_count)

    def run(self, on_step: Optional[Callable[[Optional[StepLog], "Trainer"], None]] = None,
            should_stop: Optional[Callable[[], bool]] = None, callbacks: Sequence["Callback"] = ()) -> LoopState:
        """Step until the budget; `should_stop()` is asked between steps (a stop never splits one).
        After each step `on_step(log, trainer)`, then each callback's `on_step`, in order (log: None
        for a skipped step)."""
        while self.state.step < self.cfg.steps:
            if should_stop is not None and should_stop():
                break
            log = self.step()
            if on_step is not None:
                on_step(log, self)
            for cb in callbacks:
                cb.on_step(log, self)
        return self.state

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(tensors, json-able metadata) that restore this trainer exactly."""
        t: dict[str, Tensor] = {f"gaussians.{k}": v for k, v in self.g.state_tensors().items()}
        for name, opt in self.optimizers.items():
            st = opt.state.get(opt.param_groups[0]["params"][0], {})
            for k, v in st.items():
                t[f"optim.{name}.{k}"] = torch.as_tensor(v).detach().cpu().clone()
        for k, v in self.densifier.state.items():
            if isinstance(v, Tensor):
                t[f"densify.{k}"] = v.detach().cpu().clone()
        t["rng.generator"] = self.generator.get_state()
        t["rng.torch"] = torch.get_rng_state()
        guidance_tensors = getattr(self.guidance, "state_tensors", None)
        if guidance_tensors is not None:
            for k, v in guidance_tensors().items():
                t[f"guidance.{k}"] = v.detach().cpu().clone()
        for k, v in self.colour_sum.items():
            t[f"colour_sum.{k}"] = v.detach().cpu().clone()
        meta = {"step": self.state.step, "skipped": self.state.skipped, "colour_count": self.colour_count,
                "history": [vars(h) for h in self.state.history],
                "densify_scalars": {k: v for k, v in self.densifier.state.items() if not isinstance(v, Tensor)},
                "densify_history": self.densifier.history}
        return t, meta

    def load_state_tensors(self, t: dict[str, Tensor], meta: dict[str, Any]) -> None:
        g_state = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("gaussians.")}
        restored = Gaussians.from_state_tensors(g_state).to(self.g.device)
        for k in list(self.g.splats.keys()):
            self.g.splats[k] = restored.splats[k]
        lrs = {k: o.param_groups[0]["lr"] for k, o in self.optimizers.items()}
        self.optimizers.clear()
        self.optimizers.update(per_param_optimizers(self.g, lrs))
        for name, opt in self.optimizers.items():
            p = opt.param_groups[0]["params"][0]
            st = {k.split(".", 2)[2]: v.to(self.g.device) for k, v in t.items() if k.startswith(f"optim.{name}.")}
            if st:
                opt.state[p] = st
        self.densifier.optimizers = self.optimizers
        for k, v in meta.get("densify_scalars", {}).items():
            self.densifier.state[k] = v
        self.colour_sum = {k.split(".", 1)[1]: v.to(self.g.device) for k, v in t.items() if k.startswith("colour_sum.")}
        self.colour_count = int(meta.get("colour_count", 0))
        for k, v in t.items():
            if k.startswith("densify."):
                self.densifier.state[k.split(".", 1)[1]] = v.to(self.g.device)
        self.densifier.history = list(meta.get("densify_history", []))
        self.generator.set_state(t["rng.generator"])
        torch.set_rng_state(t["rng.torch"])
        load_guidance = getattr(self.guidance, "load_state_tensors", None)
        if load_guidance is not None:
            load_guidance({k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("guidance.")})
        self.state = LoopState(step=int(meta["step"]), skipped=int(meta.get("skipped", 0)),
                               history=[StepLog(**h) for h in meta.get("history", [])])


def eta_seconds(state: LoopState, steps: int) -> float:
    if len(state.history) < 2:
        return math.nan
    a, b = state.history[max(0, len(state.history) - 50)], state.history[-1]
    rate = (b.seconds - a.seconds) / max(1, b.step - a.step)
    return rate * (steps - state.step)
