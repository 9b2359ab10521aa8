"""`steinsplat "PROMPT" --out FILE`: text to 3D Gaussians, end to end.

Builds the prior, the geometry estimator and the guidance named by the config (one explicit
mapping each, no registries), initialises Gaussians for the mode, runs `train.Trainer`, and
writes the outputs: splats (.ply / .splat by extension), optional mesh and turntable video, a
`run.json` beside them (prompt, config, seed, versions, timings, final metrics), previews and
checkpoints (every N steps, on Ctrl-C, resumable with --resume).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from tyro.conf import Positional

from .batch import slugify
from .train import OptimConfig, StepLog, Trainer


class GenerationError(Exception):
    """A problem the user can fix (bad prompt for the prior, missing weights, bad path)."""


@dataclass
class GenerateConfig:
    """Generate 3D Gaussians from a text prompt by score distillation."""

    prompt: Positional[str]  # what to make, e.g. "a red cube" (ShapeWorld) or any text (Stable Diffusion)
    out: Optional[Path] = None  # .ply, .splat or .spz; default outputs/<prompt>/<prompt>.ply
    guidance: Literal["ssd", "sds", "vsd"] = "ssd"  # score distillation estimator
    prior: Literal["auto", "shapeworld", "sd"] = "auto"  # auto: Stable Diffusion with CUDA, else ShapeWorld
    model: Optional[str] = None  # Stable Diffusion hub id or local folder (default stabilityai/stable-diffusion-2-1-base)
    allow_download: bool = False  # let the SD prior / depth estimator download from the Hugging Face hub if not cached
    attention_slicing: bool = False  # SD: compute attention in slices (less GPU memory, a little slower)
    perp_neg: float = 0.0  # SD: Perp-Neg weight of the other views' prompts against multi-face (Janus) objects (0: off; try 1-3)
    estimator: Literal["auto", "shapeworld", "transformers", "none"] = "auto"  # SSD's geometry estimator
    estimator_model: Optional[str] = None  # transformers depth model id or folder (Depth Anything, DPT)
    baseline: Literal["auto", "depth", "normal", "none"] = "auto"  # SSD's estimator baseline; auto: none for objects (no measured gain over ssd_noise "filter", +35 % time), depth for scenes
    ssd_noise: Literal["filter", "constant"] = "filter"  # SSD's noise terms: a learned 3x3 content-dependent filter of eps (guidance/noise_cv.py) or the paper's constant term
    mode: Literal["object", "scene"] = "object"  # orbit cameras + ball init, or inside-out cameras + room init
    steps: int = 500  # optimisation steps
    seed: int = 0  # seeds init, cameras and noise
    negative: str = ""  # negative prompt (Stable Diffusion)
    guidance_scale: Optional[float] = None  # classifier-free guidance; default: the prior's
    resolution: int = 64  # render size (square)
    views: int = 4  # cameras per step
    init_gaussians: Optional[int] = None  # initial number of Gaussians; default 1000 for objects (densification grows them), 8000 for scenes (no densification)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1" ...
    resume: Optional[Path] = None  # a checkpoint file or a run folder (its latest checkpoint)
    mesh: Optional[Path] = None  # also write a mesh: .ply, .obj or .glb
    mesh_method: Literal["tsdf", "density"] = "tsdf"  # --mesh by TSDF fusion of rendered views, or density-grid marching cubes
    video: Optional[Path] = None  # also write a turntable: .mp4 or .gif
    checkpoint_every: int = 100  # steps between checkpoints (0: only on Ctrl-C)
    preview_every: int = 100  # steps between preview images (0: none)
    compile: bool = False  # fuse the CPU rasteriser's kernels with torch.compile (pays off on long runs)
    optim: OptimConfig = field(default_factory=OptimConfig)  # learning rates and densification (steps/views/resolution above win)
    quiet: bool = False  # no progress display
    viewer: Optional[int] = None  # watch the run in the browser on this port (`--viewer` alone: 8080); needs steinsplat[viewer]
    viewer_host: str = "127.0.0.1"  # interface the live viewer listens on (other than loopback: with a warning)
    viewer_every: int = 10  # steps between splat updates sent to the live viewer


# ---------------------------------------------------------------------------- building blocks
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def pick_prior_name(cfg: GenerateConfig, device: torch.device) -> str:
    if cfg.prior != "auto":
        return cfg.prior
    return "sd" if device.type == "cuda" else "shapeworld"


def check_prompt(prior_name: str, prompt: str) -> None:
    if prior_name == "shapeworld":
        from .shapeworld.vocab import PromptError, parse_prompt

        try:
            parse_prompt(prompt)
        except PromptError as exc:
            raise GenerationError(str(exc)) from None


def build_prior(cfg: GenerateConfig, prior_name: str, device: torch.device):
    from .priors import PRIORS
    from .priors.base import ModelUnavailableError

    try:
        if prior_name == "sd":
            kw = {"guidance_scale": cfg.guidance_scale} if cfg.guidance_scale is not None else {}
            return PRIORS["sd"].from_pretrained(cfg.model or "stabilityai/stable-diffusion-2-1-base", device=str(device),
                                                allow_download=cfg.allow_download,
                                                attention_slicing=cfg.attention_slicing, perp_neg=cfg.perp_neg, **kw)
        kw = {"guidance_scale": cfg.guidance_scale} if cfg.guidance_scale is not None else {}
        return PRIORS["shapeworld"].from_pretrained(cfg.model, device=device, **kw)
    except ModelUnavailableError as exc:
        raise GenerationError(str(exc)) from None


def build_guidance(cfg: GenerateConfig, prior, prior_name: str, device: torch.device):
    from .guidance import GUIDANCE, DepthBaseline, NormalBaseline, SSDConfig

    if cfg.guidance != "ssd":
        return GUIDANCE[cfg.guidance](prior)
    ssd_cfg = SSDConfig(noise_kernel=3, noise_mix_channels=True, noise_maps="poly2") if cfg.ssd_noise == "filter" else SSDConfig()
    est_name = cfg.estimator
    if est_name == "auto":
        est_name = "shapeworld" if prior_name == "shapeworld" else "transformers"
    kind = cfg.baseline if cfg.baseline != "auto" else ("depth" if cfg.mode == "scene" else "none")
    if est_name == "none" or kind == "none":
        return GUIDANCE["ssd"](prior, config=ssd_cfg)  # the noise control variates only, no estimator
    from .estimators import ESTIMATORS
    from .priors.base import ModelUnavailableError

    try:
        if est_name == "shapeworld":
            est = ESTIMATORS["shapeworld"].from_pretrained(cfg.estimator_model, device=device)
        else:
            est = ESTIMATORS["transformers"].from_pretrained(
                cfg.estimator_model or "depth-anything/Depth-Anything-V2-Small-hf", device=str(device),
                allow_download=cfg.allow_download)
    except ModelUnavailableError as exc:
        raise GenerationError(f"{exc}\n(or run without SSD's baseline: --estimator none, or --guidance sds)") from None
    baseline = DepthBaseline(est) if kind == "depth" else NormalBaseline(est)
    return GUIDANCE["ssd"](prior, baselines=[baseline], config=ssd_cfg)


def init_gaussians(cfg: GenerateConfig, device: torch.device):
    from .gaussians import Gaussians

    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.mode == "object":
        g = Gaussians.random_ball(cfg.init_gaussians or 1000, radius=0.45, opacity=0.1, generator=gen)
    else:
        # The room-scale init: discs lying on the walls of the ShapeWorld room box, half opaque.
        # Every scene camera sits at one point (docs/shapeworld.md, Cameras), so no pair of views gives parallax:
        # the prior can fix colours and coverage but not depth, which the init must get right.
        g = Gaussians.random_box_shell(cfg.init_gaussians or 8000, opacity=0.5, flatness=0.1, generator=gen)
    return g.to(device)


def default_out(prompt: str) -> Path:
    slug = slugify(prompt)
    return Path("outputs") / slug / f"{slug}.ply"


def validate_outputs(cfg: GenerateConfig) -> Path:
    out = cfg.out or default_out(cfg.prompt)
    if out.suffix.lower() not in (".ply", ".splat", ".spz"):
        raise GenerationError(f"--out '{out}': the extension decides the format; use .ply, .splat or .spz")
    if cfg.mesh is not None and cfg.mesh.suffix.lower() not in (".ply", ".obj", ".glb"):
        raise GenerationError(f"--mesh '{cfg.mesh}': use .ply, .obj or .glb")
    if cfg.video is not None and cfg.video.suffix.lower() not in (".mp4", ".gif"):
        raise GenerationError(f"--video '{cfg.video}': use .mp4 or .gif")
    for p, flag in [(out, "--out"), (cfg.mesh, "--mesh"), (cfg.video, "--video")]:
        if p is None:
            continue
        if p.is_dir():  # found now, not after the whole optimisation
            raise GenerationError(f"{flag} '{p}' is an existing folder; give a file name (e.g. {p / ('result' + p.suffix)})")
        folder = p.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".steinsplat-write-test-{time.time_ns()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise GenerationError(f"cannot write to '{folder}': {exc.strerror or exc}; choose another --out") from None
    if cfg.viewer is not None:
        from .viewer import ViewerConfig, ViewerError
        from .viewer.server import check_config, require_viser

        try:
            require_viser()
            check_config(ViewerConfig(host=cfg.viewer_host, port=cfg.viewer))
        except ViewerError as exc:
            raise GenerationError(str(exc).replace("--port", "--viewer").replace("--host", "--viewer-host")) from None
        if cfg.viewer_every <= 0:
            raise GenerationError("--viewer-every must be positive")
    if cfg.steps <= 0 or cfg.views <= 0 or cfg.resolution < 8 or (cfg.init_gaussians is not None and cfg.init_gaussians <= 0):
        raise GenerationError("--steps, --views and --init-gaussians must be positive and --resolution at least 8")
    if not cfg.perp_neg >= 0:
        raise GenerationError(f"--perp-neg must be >= 0 (0 turns Perp-Neg off), got {cfg.perp_neg}")
    return out


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(trainer: Trainer, folder: Path, keep: int = 2) -> Path:
    from safetensors.torch import save_file

    from .export.atomic import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = trainer.state_tensors()
    name = f"step_{trainer.state.step:06d}"
    tmp = folder / f".{name}.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / f"{name}.safetensors")
    atomic_write_bytes(folder / f"{name}.json", json.dumps(meta).encode())
    for old in sorted(folder.glob("step_*.safetensors"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return folder / f"{name}.safetensors"


def find_checkpoint(path: Path) -> Path:
    if path.is_dir():
        cands = sorted(path.glob("step_*.safetensors")) or sorted((path / "checkpoints").glob("step_*.safetensors"))
        if not cands:
            raise GenerationError(f"--resume '{path}': no checkpoint (step_*.safetensors) in that folder")
        return cands[-1]
    if not path.is_file():
        raise GenerationError(f"--resume '{path}': no such checkpoint file or run folder")
    return path


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
    except (SafetensorError, OSError, ValueError) as exc:
        raise GenerationError(f"--resume '{path}': not a readable steinsplat checkpoint ({exc})") from None
    trainer.load_state_tensors(tensors, meta)


# ---------------------------------------------------------------------------- the run
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("steinsplat", "torch", "gsplat", "diffusers", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class Interrupted(Exception):
    def __init__(self, checkpoint: Path) -> None:
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


def generate(cfg: GenerateConfig, console=None, models: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run one prompt end to end; returns the run record (also written as run.json).

    models: a cache {"prior:<name>": prior, "guidance": ...} shared across prompts by `batch`
    (guidance objects hold per-run state, so only priors and estimators are reused).
    """
    from .export import export_gaussians
    from .export.image import image_row, write_png
    from .render import render
    from .render.torch_backend import set_compile

    t_start = time.perf_counter()
    out = validate_outputs(cfg)
    ckpt = find_checkpoint(cfg.resume) if cfg.resume is not None else None  # fail before loading any model
    run_dir = out.parent
    device = pick_device(cfg.device)
    prior_name = pick_prior_name(cfg, device)
    check_prompt(prior_name, cfg.prompt)
    set_compile(cfg.compile)
    models = {} if models is None else models
    key = f"prior:{prior_name}:{cfg.model}:{cfg.guidance_scale}:{device}"
    if key not in models:
        models[key] = build_prior(cfg, prior_name, device)
    prior = models[key]
    guidance = build_guidance(cfg, prior, prior_name, device)
    embeds = prior.encode_prompt(cfg.prompt, cfg.negative)
    g = init_gaussians(cfg, device)
    optim = dataclasses.replace(cfg.optim, steps=cfg.steps, views=cfg.views, resolution=cfg.resolution)
    trainer = Trainer(g, prior, guidance, embeds, optim, mode=cfg.mode, seed=cfg.seed)
    if ckpt is not None:
        load_checkpoint(trainer, ckpt)
    live = server = None  # the live viewer (--viewer); importing viser and starting it count as loading
    say = (lambda m: console.print(m, markup=False)) if console is not None else (lambda _m: None)
    if cfg.viewer is not None:
        from .viewer import LiveConfig, ViewerConfig, ViewerError, start_live_viewer

        try:
            server, live = start_live_viewer(
                ViewerConfig(host=cfg.viewer_host, port=cfg.viewer),
                LiveConfig(push_every=cfg.viewer_every, snapshot_dir=run_dir / "snapshots"), cfg.prompt, say=say,
                warn=lambda m: say(f"warning: {m}"))
        except ViewerError as exc:
            raise GenerationError(str(exc)) from None
        live.push(trainer.g)
    t_loaded = time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"

    def on_step(log: Optional[StepLog], tr: Trainer) -> None:
        s = tr.state.step
        if cfg.checkpoint_every and s % cfg.checkpoint_every == 0 and s < optim.steps:
            save_checkpoint(tr, ckpt_dir)
        if cfg.preview_every and s % cfg.preview_every == 0:
            from .cameras import object_eval_cameras, scene_eval_cameras

            cams = (object_eval_cameras if cfg.mode == "object" else scene_eval_cameras)(cfg.resolution, cfg.resolution)
            with torch.no_grad():
                rgb = render(tr.g, cams[::2].to(device), background=tr.background).rgb
            write_png(run_dir / "previews" / f"step_{s:06d}.png", image_row(rgb))
        if live is not None:
            live.on_step(log, tr)
        if progress is not None:
            fields = {"loss": log.loss if log else float("nan"), "n": len(tr.g),
                      "var": (log.grad_variance if log and log.grad_variance is not None else float("nan")),
                      "skipped": tr.state.skipped}
            progress.update(task, completed=s, **fields)

    progress = task = None
    try:
        if not cfg.quiet and console is not None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("var {task.fields[var]:.3g}"),
                TextColumn("{task.fields[n]:,} G"), TextColumn("skipped {task.fields[skipped]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            )
            progress.start()
            task = progress.add_task(cfg.prompt[:30], total=optim.steps, completed=trainer.state.step,
                                     loss=float("nan"), var=float("nan"), n=len(g), skipped=0)
        try:
            trainer.run(on_step)
        except KeyboardInterrupt:
            raise Interrupted(save_checkpoint(trainer, ckpt_dir)) from None
    finally:
        if progress is not None:
            progress.stop()
        if live is not None:
            from .viewer import stop_live_viewer

            stop_live_viewer(server, live)
            say("live viewer closed")
    t_opt = time.perf_counter()

    outputs = {"splats": str(out)}
    n_written = export_gaussians(out, trainer.g)
    if live is not None:
        say(f"to look at the result again: steinsplat view {out}")
    if cfg.mesh is not None:
        from .export.mesh import MeshConfig, export_mesh

        export_mesh(cfg.mesh, trainer.g, MeshConfig(mode=cfg.mode, method=cfg.mesh_method))
        outputs["mesh"] = str(cfg.mesh)
    if cfg.video is not None:
        from .export.video import VideoConfig, export_video

        export_video(cfg.video, trainer.g, VideoConfig(mode=cfg.mode))
        outputs["video"] = str(cfg.video)
    t_export = time.perf_counter()
    metrics = None
    if prior_name == "shapeworld":
        from .shapeworld.metrics import evaluate

        with torch.no_grad():
            metrics = dataclasses.asdict(evaluate(trainer.g.to("cpu"), cfg.prompt))
    record = {
        "status": "ok",
        "prompt": cfg.prompt,
        "prior": prior_name,
        "seed": cfg.seed,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        "versions": versions(),
        "device": str(device),
        "timings": {"load_s": t_loaded - t_start, "optimise_s": t_opt - t_loaded, "export_s": t_export - t_opt,
                    "total_s": time.perf_counter() - t_start},
        "steps": trainer.state.step,
        "skipped_steps": trainer.state.skipped,
        "gaussians": n_written,
        "outputs": outputs,
        "metrics": metrics,
        "final_loss": trainer.state.history[-1].loss if trainer.state.history else None,
    }
    from .export.atomic import atomic_write_bytes

    atomic_write_bytes(run_dir / "run.json", json.dumps(record, indent=2).encode())
    return record
