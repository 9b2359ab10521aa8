"""The `steinsplat` command: one explicit mapping from subcommand names to entry points.

    steinsplat export IN.ply --to OUT.splat|OUT.spz|OUT.ply|OUT.splats.glb|OUT.viser [--sh-degree 3] [--up z|y|-y] [--html DIR]
    steinsplat info FILE.ply|FILE.splat|FILE.spz|FILE.glb
    steinsplat view FILE.ply|FILE.splat|FILE.spz [--port 8080] [--host 127.0.0.1]
    steinsplat fit-demo [--out runs/demo] [--steps 600]

A first argument that is not a subcommand is a prompt: `steinsplat "a red cube" --out cube.ply`
(text-to-3D generation; see `generate`). Every subcommand parses its own dataclass with tyro,
optionally seeded by `--config NAME` (configs/NAME.yaml). Errors the user can fix end with one
red line and exit code 2, never a traceback.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from tyro.conf import Positional

console = Console(stderr=True)


class UserError(Exception):
    """An error with a message meant for the user (no traceback)."""


def require_memory(need_bytes: float, what: str, lower: str) -> None:
    """Refuse sizes whose lower-bound memory need exceeds this machine's RAM (as generation does), before
    any allocation; `lower` says which options to lower."""
    from .pipeline import memory_available_bytes

    have = memory_available_bytes("cpu")
    if have is not None and need_bytes > have:
        raise UserError(f"{what} needs at least {need_bytes / 2**30:,.1f} GiB, more than this machine's "
                        f"{have / 2**30:,.1f} GiB; lower {lower}")


# ---------------------------------------------------------------------------- export / info
@dataclass
class ExportArgs:
    """Convert splats between formats (by extension: .ply, .splat, .spz, .splats.glb, .viser) or write a web view."""

    input: Positional[Path]  # a 3DGS .ply, .splat or .spz file, or a .glb with KHR_gaussian_splatting
    to: Optional[Path] = None  # output file; the extension picks the format (.splats.glb: glTF KHR_gaussian_splatting; .viser: a viser scene recording)
    html: Optional[Path] = None  # also/instead write a folder that shows the splats in a browser, no Python needed
    sh_degree: Optional[int] = None  # PLY and .splats.glb: write this SH degree (0 or 3 for most viewers); default: as stored
    display_filter: Optional[int] = None  # bake the 0.3 px low-pass of training renders this many pixels high (steinsplat's object runs: 64) into the output, so it looks at display size as in training (export/display_filter.py)
    up: Optional[Literal["z", "y", "-y"]] = None  # the output's up axis: z (steinsplat's, the default), y (three.js, Babylon, Unity), -y (3DGS captures, SuperSplat); .splats.glb is always y


def cmd_export(argv: Sequence[str]) -> int:
    from . import config
    from .export import export_gaussians, load_gaussians

    args = config.parse(ExportArgs, argv, prog="steinsplat export", description=ExportArgs.__doc__)
    if args.to is None and args.html is None:
        raise UserError("say where to write: --to OUT.ply|OUT.splat|OUT.spz|OUT.splats.glb|OUT.viser and/or --html FOLDER")
    viser_out = args.to is not None and args.to.suffix.lower() == ".viser"
    kw = {"sh_degree": args.sh_degree} if args.sh_degree is not None else {}
    if kw and (args.to is None or not (args.to.suffix.lower() == ".ply" or args.to.name.lower().endswith(".splats.glb"))):
        raise UserError("--sh-degree applies to .splats.glb and .ply output only")
    if args.up is not None and (args.to is None or viser_out):
        raise UserError("--up applies to --to OUT.ply|OUT.splat|OUT.spz|OUT.splats.glb (the web views are +Z up as steinsplat)")
    if args.up is not None:
        kw["up"] = args.up
    if args.html is not None and args.html.exists() and not args.html.is_dir():
        raise UserError(f"--html '{args.html}' is a file; give a folder (created if missing)")
    if viser_out or args.html is not None:
        from .viewer import ViewerError
        from .viewer.server import require_viser

        try:
            require_viser()
        except ViewerError as exc:
            raise UserError(str(exc)) from None
    if args.display_filter is not None and (args.display_filter < 8 or args.to is None):
        raise UserError("--display-filter RES: the training resolution in pixels (>= 8; 64 for steinsplat's object "
                        "runs), with --to OUT")
    g = load_gaussians(args.input)
    if args.display_filter is not None:
        from .export.display_filter import DisplayFilterConfig, bake_display_filter

        g = bake_display_filter(g, DisplayFilterConfig(resolution=args.display_filter, fovy=40.0))
    if args.to is not None:
        if viser_out:
            from .viewer import write_viser

            n = write_viser(args.to, g)
        else:
            n = export_gaussians(args.to, g, **kw)
        console.print(f"wrote {n:,} splats to {args.to}")
    if args.html is not None:
        from .viewer import write_html_bundle

        files = write_html_bundle(args.html, g)
        console.print(f"wrote an offline view of {len(g):,} splats to {args.html}/ ({', '.join(f.name for f in files)}); "
                      f"open {files[0]} in a browser or put the folder on any static web host")
    return 0


# ---------------------------------------------------------------------------- view
@dataclass
class ViewArgs:
    """Show splats in the browser (viser): open the printed address; Ctrl-C stops the server."""

    file: Positional[Path]  # a 3DGS .ply, .splat or .spz file
    port: int = 8080  # TCP port; if taken, the next free one is used (the address is printed)
    host: str = "127.0.0.1"  # interface to listen on; 0.0.0.0 exposes the viewer to the network (with a warning)
    allow_origin: tuple[str, ...] = ()  # other web page origins allowed to connect (http://host:port); its own page always is
    share: bool = False  # also open viser's public share link (a tunnel through share.viser.studio; anyone with the link sees the scene)


def cmd_view(argv: Sequence[str]) -> int:
    from . import config
    from .viewer import ViewerConfig, ViewerError, view_file

    args = config.parse(ViewArgs, argv, prog="steinsplat view", description=ViewArgs.__doc__)
    if not args.file.is_file():
        raise UserError(f"'{args.file}': no such file (give a .ply, .splat or .spz)")
    try:
        view_file(args.file, ViewerConfig(host=args.host, port=args.port, allow_origin=args.allow_origin,
                                                share=args.share), say=lambda m: console.print(m, markup=False),
                  warn=lambda m: console.print(f"[yellow]warning:[/yellow] {escape(m)}"))
    except ViewerError as exc:
        raise UserError(str(exc)) from None
    return 0


@dataclass
class InfoArgs:
    """Show what a splat file holds: count, up axis, bounds (in steinsplat's +Z-up frame), SH degree, opacity and
    scale statistics."""

    file: Positional[Path]  # a 3DGS .ply, .splat or .spz file, or a .glb with KHR_gaussian_splatting


def cmd_info(argv: Sequence[str]) -> int:
    from rich.table import Table

    from . import config
    from .export import file_up_axis, load_gaussians

    args = config.parse(InfoArgs, argv, prog="steinsplat info", description=InfoArgs.__doc__)
    g = load_gaussians(args.file)
    t = Table(title=str(args.file), show_header=False)
    t.add_row("splats", f"{len(g):,}")
    t.add_row("SH degree", str(g.sh_degree))
    t.add_row("up axis in the file", file_up_axis(args.file))
    if len(g):
        m, o, s = g.means.detach(), g.opacities.detach(), g.scales.detach().max(-1).values
        lo, hi = m.min(0).values.tolist(), m.max(0).values.tolist()
        t.add_row("bounds min", " ".join(f"{v:.3f}" for v in lo))
        t.add_row("bounds max", " ".join(f"{v:.3f}" for v in hi))
        q = [0.0, 0.5, 1.0]
        t.add_row("opacity min/median/max", " / ".join(f"{float(o.quantile(x)):.3f}" for x in q))
        t.add_row("opacity mean", f"{float(o.mean()):.3f}")
        t.add_row("largest scale min/median/max", " / ".join(f"{float(s.quantile(x)):.4f}" for x in q))
    Console().print(t)
    return 0


# ---------------------------------------------------------------------------- fit-demo
@dataclass
class FitDemoArgs:
    """Fit Gaussians to 16 views of a demo object (rendered by the dense reference rasteriser), report
    the PSNR on 8 held-out views, and export PLY, .splat and a preview image."""

    out: Path = Path("runs/demo")  # output folder
    steps: int = 600  # optimisation steps
    seed: int = 0  # seeds the init and the view order
    resolution: int = 64  # training and evaluation image size (square)


def cmd_fit_demo(argv: Sequence[str]) -> int:
    import json

    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import config
    from .export import atomic_write_bytes, write_ply, write_splat
    from .export.image import image_row, write_png
    from .fit import FitConfig, demo_target, demo_views, fit_views, held_out_psnr, reference_images
    from .render import render

    args = config.parse(FitDemoArgs, argv, prog="steinsplat fit-demo", description=FitDemoArgs.__doc__)
    if args.steps <= 0 or args.resolution < 8:
        raise UserError("--steps must be positive and --resolution at least 8")
    # the dense reference renders 2 views at a time with every one of the target's 1200 Gaussians per
    # pixel (4 bytes each), and 24 views of images are kept
    require_memory(2 * args.resolution ** 2 * 1200 * 4 + 24 * args.resolution ** 2 * 96,
                   f"fit-demo --resolution {args.resolution}", "--resolution (64 is the default)")
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = demo_views(args.resolution, args.resolution)
    target = demo_target()
    console.print(f"rendering {len(train)} training and {len(test)} held-out views with the dense reference ...")
    train_img, test_img = reference_images(target, train), reference_images(target, test)
    cfg = FitConfig(steps=args.steps, seed=args.seed)
    with Progress(
        TextColumn("fit"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[n]:,} Gaussians"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    ) as bar:
        task = bar.add_task("fit", total=args.steps, loss=float("nan"), n=cfg.init_gaussians)

        def cb(step: int, loss: float, n: int) -> None:
            bar.update(task, completed=step + 1, loss=loss, n=n)

        res = fit_views(train_img, train, cfg, callback=cb)
    score = held_out_psnr(res.gaussians, test, test_img)
    ply, splat = args.out / "demo.ply", args.out / "demo.splat"
    write_ply(ply, res.gaussians)
    write_splat(splat, res.gaussians)
    with torch.no_grad():
        pred = render(res.gaussians, test[:4], background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
    write_png(args.out / "preview.png", torch.cat([image_row(pred), image_row(test_img[:4])], 0))  # [2H, 4W, 3]
    report = {"held_out_psnr_db": score, "seconds": res.seconds, "gaussians": len(res.gaussians),
              "steps": args.steps, "seed": args.seed, "history": res.history}
    atomic_write_bytes(args.out / "fit.json", json.dumps(report, indent=2).encode())
    console.print(f"held-out PSNR {score:.2f} dB after {args.steps} steps, {res.seconds:.0f} s, "
                  f"{len(res.gaussians):,} Gaussians")
    console.print(f"wrote {ply}, {splat}, {args.out / 'preview.png'} (top: fit, bottom: target), {args.out / 'fit.json'}")
    return 0


# ---------------------------------------------------------------------------- shapeworld
@dataclass
class ShapeWorldView:
    """A ShapeWorld prompt and one camera (orbit for objects, inside-out for rooms)."""

    prompt: Positional[str]  # "a red cube", or "a room with blue walls and a gray floor"
    out: Path = Path("gt.png")  # PNG output
    elevation: float = 20.0  # objects: degrees above the XY plane; rooms: pitch
    azimuth: float = 0.0  # objects: degrees from +X towards +Y; rooms: yaw
    distance: float = 1.8  # objects: metres from the origin

    def cameras(self, n: int = 1, resolution: int = 64):
        from .cameras import inside_out_cameras, orbit_cameras
        from .shapeworld.vocab import RoomPrompt, parse_prompt

        r = resolution
        if isinstance(parse_prompt(self.prompt), RoomPrompt):
            return inside_out_cameras([self.azimuth] * n, [self.elevation] * n, width=r, height=r)
        return orbit_cameras([self.elevation] * n, [self.azimuth] * n, [self.distance] * n, width=r, height=r)


@dataclass
class ShapeWorldRenderArgs(ShapeWorldView):
    """Render the ShapeWorld ground truth of a prompt (exact geometry, ray cast, 4x4 supersampled)."""

    resolution: int = 64  # square image size


@dataclass
class ShapeWorldSampleArgs(ShapeWorldView):
    """What the embedded ShapeWorld prior imagines for a prompt from one camera (DDIM sampling)."""

    out: Path = Path("sample.png")  # PNG output
    steps: int = 50  # DDIM steps
    guidance_scale: Optional[float] = None  # classifier-free guidance; default: the one stored with the weights
    seed: int = 0  # seeds the initial noise
    num: int = 1  # samples side by side
    upscale: int = 4  # nearest-neighbour enlargement of the (32x32) samples in the PNG


def cmd_shapeworld(argv: Sequence[str]) -> int:
    from . import config
    from .export.image import write_png
    from .shapeworld.groundtruth import render_gt
    from .shapeworld.vocab import PromptError, parse_prompt

    actions = {"render": ShapeWorldRenderArgs, "sample": ShapeWorldSampleArgs}
    if not argv or argv[0] not in actions:
        raise UserError(f"usage: steinsplat shapeworld {{{'|'.join(actions)}}} PROMPT [options]")
    args = config.parse(actions[argv[0]], argv[1:], prog=f"steinsplat shapeworld {argv[0]}",
                        description=actions[argv[0]].__doc__)
    try:
        prompt = parse_prompt(args.prompt)
    except PromptError as exc:
        raise UserError(str(exc)) from exc
    if argv[0] == "sample":
        return _shapeworld_sample(args)
    if args.resolution < 4:
        raise UserError("--resolution must be at least 4")
    # 4x4 rays per pixel, each with an origin, a direction and its hit (~16 floats) at the least
    require_memory(args.resolution ** 2 * 16 * 64, f"--resolution {args.resolution}", "--resolution (64 is the default)")
    striped = getattr(prompt, "texture", None) is not None  # the text leaves the stripe phase open: show phase 0
    gt = render_gt(prompt, args.cameras(1, args.resolution), phase=0.0 if striped else None)
    write_png(args.out, gt.rgb[0])
    console.print(f"wrote {args.out}" + (" (stripe phase 0: the prompt leaves the phase open)" if striped else ""))
    return 0


def _shapeworld_sample(args: ShapeWorldSampleArgs) -> int:
    import torch

    from .export.image import image_row, write_png
    from .shapeworld.prior import ShapeWorldPrior

    if args.steps <= 0 or args.num <= 0 or args.upscale <= 0:
        raise UserError("--steps, --num and --upscale must be positive")
    # per sample: the prior's 32x32 activations (~1 MB at the least) and the enlarged float image, twice
    require_memory(args.num * (2**20 + 2 * (32 * args.upscale) ** 2 * 3 * 4), f"--num {args.num} with --upscale "
                   f"{args.upscale}", "--num or --upscale")
    try:
        prior = ShapeWorldPrior.from_pretrained(None)
    except FileNotFoundError as exc:
        raise UserError(f"{exc}") from None
    cams = args.cameras(args.num)
    with torch.no_grad():
        imgs = prior.sample(args.prompt, cams, steps=args.steps, guidance_scale=args.guidance_scale,
                            generator=torch.Generator().manual_seed(args.seed))  # [n, R, R, 3]
    row = image_row(imgs)  # [R, n*R, 3]
    row = row.repeat_interleave(args.upscale, 0).repeat_interleave(args.upscale, 1)
    write_png(args.out, row)
    console.print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- generate
DEFAULT_VIEWER_PORT = 8080


def expand_viewer_flag(argv: Sequence[str]) -> list[str]:
    """`--viewer [PORT]`: a bare `--viewer` (no port after it) means the default port."""
    out, argv = [], list(argv)
    for i, a in enumerate(argv):
        out.append(a)
        if a == "--viewer" and (i + 1 == len(argv) or not re.fullmatch(r"-?\d+", argv[i + 1])):
            out.append(str(DEFAULT_VIEWER_PORT))
    return out


# The short `generate --help`: the options people use (defaults read from GenerateFlags, the command
# line's form of GenerateConfig, so they never drift); everything else is tyro's full help under --help-all.
GENERATE_HELP = [  # (flag with its value, field for the default or None, what it does)
    ("--out FILE", "out", ".ply, .splat, .spz or NAME.splats.glb; default outputs/<prompt>/<prompt>.ply"),
    ("--mesh FILE", "mesh", "also write a mesh: .ply, .obj or .glb"),
    ("--video FILE", "video", "also write a turntable: .mp4 or .gif"),
    ("--steps N", "steps", "optimisation steps"),
    ("--seed N", "seed", "seeds the init, the cameras and the noise"),
    ("--guidance ssd|sds|vsd", "guidance", "the score distillation estimator"),
    ("--prior auto|shapeworld|sd", "prior", "auto: Stable Diffusion with CUDA, else ShapeWorld"),
    ("--guidance-scale X", "guidance_scale", "classifier-free guidance; default: the prior's"),
    ("--negative TEXT", "negative", "negative prompt (Stable Diffusion)"),
    ("--mode object|scene", "mode", "default: the prompt decides (a ShapeWorld room is a scene), else object"),
    ("--config NAME", None, "a preset ({presets}) or a YAML file"),
    ("--resolution N", "resolution", "render size (square)"),
    ("--views N", "views", "cameras per step"),
    ("--device DEV", "device", "auto, cpu, cuda, cuda:1 ..."),
    ("--resume PATH", "resume", "go on from a checkpoint file or a run folder"),
    ("--viewer [PORT]", "viewer", f"watch the run in the browser (port {DEFAULT_VIEWER_PORT}); needs steinsplat[viewer]"),
    ("--allow-download", "allow_download", "let Stable Diffusion and the depth model download weights"),
    ("--quiet", "quiet", "only the result line and warnings"),
]


def generate_help() -> str:
    import dataclasses

    from . import config
    from .pipeline import GenerateConfig, GenerateFlags

    defaults = {f.name: f.default for f in dataclasses.fields(GenerateFlags) if f.default is not dataclasses.MISSING}
    presets = []
    for q in sorted(config.REPO_PRESETS.glob("*.yaml")):
        if any(q.stem.startswith(other) for other in COMMANDS if other != "generate"):  # fit-demo-quick
            continue
        try:
            config.load_preset(GenerateConfig, q.stem)
            presets.append(q.stem)
        except config.ConfigError:  # a preset of another command (fit-demo-quick)
            pass
    lines = ["usage: steinsplat PROMPT [options]", "",
             "Text to 3D Gaussians by score distillation. PROMPT: 'a red cube', 'a room with blue walls and a gray",
             "floor' (ShapeWorld, the CPU default) or any text with the Stable Diffusion prior (--prior sd).", "",
             "options:"]
    for flag, name, text in GENERATE_HELP:
        d = defaults.get(name) if name else None
        shown = "" if d is None or d is False or d in ("", ()) or name == "mode" else f" (default: {d})"
        lines.append(f"  {flag:<28} {text.format(presets=', '.join(presets))}{shown}")
    lines.append(f"  {'-h, --help':<28} this help")
    lines += ["", f"All {len(dataclasses.fields(GenerateFlags))} options (Stable Diffusion memory switches, SSD's estimator and "
              "baseline,", "learning rates, densification ...): steinsplat generate --help-all"]
    return "\n".join(lines)


def full_generate_help(argv: Sequence[str]) -> int:
    """tyro's complete help of GenerateConfig, its usage line naming the prompt PROMPT (tyro says STR)."""
    import contextlib
    import io

    from . import config
    from .pipeline import GenerateConfig

    box = io.StringIO()
    try:
        with contextlib.redirect_stdout(box):
            name, _ = config.split_config_flag(argv)  # a preset's values show as the defaults
            config.parse(GenerateConfig, (["--config", name] if name else []) + ["--help"], prog="steinsplat",
                         description=GenerateConfig.__doc__)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    text = box.getvalue()
    first, _, rest = text.partition("\n")
    print(re.sub(r"\bSTR$", "PROMPT", first) + "\n" + rest, end="")
    return 0


def decide_mode(cfg, argv: Sequence[str], say=None):
    """cfg with its mode decided as generate's check stage decides it (prompt_mode.resolve_mode): a mode the
    command line (or its --config preset) did not set is taken from a ShapeWorld prompt, object otherwise."""
    import dataclasses

    from .pipeline import GenerationError, pick_device, pick_prior_name
    from .prompt_mode import mode_source, resolve_mode

    source = mode_source(argv)
    if source is None:
        cfg = dataclasses.replace(cfg, mode="auto")
    try:
        prior_name = pick_prior_name(cfg, pick_device(cfg.device))
    except GenerationError as exc:
        raise UserError(as_flags(str(exc))) from None
    return resolve_mode(cfg, prior_name, say=say, given_by=source or "--mode")


def result_summary(m: dict) -> str:
    """The result line's metrics: the headline (a room's PSNR with its colour error, an object's mask IoU)."""
    h = m.get("headline") or ({"name": "mask_iou", "value": m["mask_iou"]} if m.get("mask_iou") is not None else None)
    if h is None or h.get("value") is None:
        return ""
    if h["name"] == "psnr":
        ce = m.get("colour_error")
        return f", PSNR {h['value']:.1f} dB" + (f", colour error {ce:.3f}" if ce is not None and ce == ce else "")
    label = {"mask_iou": "mask IoU", "iou_3d": "3D IoU"}.get(h["name"], h["name"])
    return f", {label} {h['value']:.3f}"


# A library error's GenerateConfig field (and value) -> the flag that sets it: GenerateConfig.init_gaussians
# -> --init-gaussians, GenerateConfig.optim.lr_means -> --optim.lr-means, GenerateConfig.device="cpu" -> --device cpu.
CONFIG_FIELD = re.compile(r'GenerateConfig\.(\w+(?:\.\w+)*)(?:="([^"]*)"|=(\d+(?:\.\d+)?))?')


# GenerateConfig.guidance=SDSSpec() -> --guidance sds; GenerateConfig.guidance.noise -> --ssd-noise (guidance_spec.GUIDANCE_FLAGS)
GUIDANCE_SPEC = re.compile(r"GenerateConfig\.guidance=(\w+)Spec\(\)")


def as_flags(message: str) -> str:
    """A library message (pipeline.GenerationError) in the command line's words."""
    from .guidance_spec import GUIDANCE_FLAGS

    nested = {f"guidance.{field}": flag for flag, (_, field) in GUIDANCE_FLAGS.items()}

    def flag(m: re.Match) -> str:
        value = m.group(2) if m.group(2) is not None else m.group(3)
        return "--" + nested.get(m.group(1), m.group(1)).replace("_", "-") + (f" {value}" if value is not None else "")

    message = GUIDANCE_SPEC.sub(lambda m: f"--guidance {m.group(1).lower()}", message)
    return CONFIG_FIELD.sub(flag, message)


def cmd_generate(argv: Sequence[str]) -> int:
    from . import config
    from .pipeline import GenerateConfig, GenerationError, Interrupted, generate

    argv = list(argv)
    if "--help-all" in argv:
        return full_generate_help(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(generate_help())
        return 0
    argv = expand_viewer_flag(argv)
    cfg = config.parse(GenerateConfig, argv, prog="steinsplat", description=GenerateConfig.__doc__)
    cfg = decide_mode(cfg, argv, say=None if cfg.quiet else lambda m: console.print(m, markup=False, highlight=False))
    try:
        rec = generate(cfg, console=console)
    except GenerationError as exc:
        raise UserError(as_flags(str(exc))) from None
    except Interrupted as exc:
        console.print(f"[yellow]interrupted[/yellow] ({exc.signal_name}): checkpoint saved to {escape(str(exc.checkpoint))}; "
                      f"continue with the same command and --resume {escape(str(exc.checkpoint))}", soft_wrap=True)
        return 130
    m = rec.metrics or {}
    extra = result_summary(m)
    extra += f", nearest mode {m['mode']}" if m.get("mode") else ""  # an open prompt ("a cube"): set_metrics
    console.print(f"wrote {', '.join(rec.outputs.values())} ({rec.gaussians:,} Gaussians, "
                  f"{rec.timings.total_s:.0f} s{extra})")
    return 0


# ---------------------------------------------------------------------------- batch
BATCH_USAGE = """usage: steinsplat batch PROMPTS.txt [--out-dir results] [--format ply|splat|spz] [--ray [ADDRESS]]
                        [generation options ...]

One prompt per line; blank lines and # comments are skipped; `a red cube | --seed 3` adds options
for that line. Generation options given here apply to every line (a line's own options win).
Every line is checked before the first runs (the prompt for the prior, the options, the output files):
bad lines are listed at once, as PROMPTS.txt:LINE: reason, and then nothing runs.
Finished prompts are skipped on a re-run; a failing prompt does not stop the others; a summary
table and OUT_DIR/summary.json close the run. --format picks the splat file of every prompt
(OUT_DIR/<name>/<name>.ply by default; .spz is about 5x smaller). --ray spreads the prompts over a Ray cluster
(ADDRESS: "auto", "ray://host:10001"; none: a local instance)."""


class BatchGenerate:
    """Runs one batch job through `generate` (picklable, for Ray workers); models are cached per process.
    `check` is the batch's pre-flight of a line (batch.check_jobs): everything generate refuses before it
    loads a model, so that a bad line is found before the first prompt's minutes, not after them."""

    _models: dict = {}
    PER_BATCH = {  # set by the batch for every line, never by a line
        "--out": "outputs go to --out-dir/<prompt name>/ (--format picks the splat format)",
        "--resume": "a rerun of the batch resumes an interrupted line by itself",
        "--viewer": "it follows a single prompt: steinsplat PROMPT --viewer",
    }

    def __init__(self, base_options: Sequence[str], suffix: str = ".ply") -> None:
        self.base_options = list(base_options)
        self.suffix = suffix  # the splat format of every output: .ply, .splat or .spz

    def argv(self, job) -> list[str]:
        """The line's own command line: its prompt, the batch's shared options, then the line's options."""
        return [job.prompt, *self.base_options, *job.options]

    def config(self, job, folder: Path, say=None):
        """The line's GenerateConfig, its mode decided as `steinsplat PROMPT` decides it; UserError if it has none.
        What the batch sets for every line (the output file, quiet, resuming an interrupted run) is set on
        the parsed config, not written into its argv."""
        import contextlib
        import dataclasses
        import io

        from . import config
        from .pipeline import GenerateConfig

        for a in job.options:
            flag = a.split("=", 1)[0]
            if flag in self.PER_BATCH:
                raise UserError(f"{flag} is not an option of a line: {self.PER_BATCH[flag]}")
        argv = self.argv(job)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # tyro's box: the one line below says it
                cfg = config.parse(GenerateConfig, argv, prog="steinsplat")
        except (SystemExit, config.ConfigError) as exc:
            raise UserError(f"bad options on this line: {' '.join(job.options)} ({exc})") from None
        resume = folder / "checkpoints" if any((folder / "checkpoints").glob("step_*.safetensors")) else None  # an interrupted or killed earlier run
        cfg = dataclasses.replace(cfg, out=folder / f"{job.name}{self.suffix}", quiet=True, resume=resume)
        return decide_mode(cfg, argv, say=say)

    def check(self, job, folder: Path, say) -> dict[str, Path]:
        """Refuse the line as generate would before loading anything; returns the files it will write."""
        from .pipeline import GenerationError, check_prompt, pick_device, pick_prior_name, validate_numbers, validate_outputs

        cfg = self.config(job, folder, say=say)
        try:
            validate_numbers(cfg)
            check_prompt(pick_prior_name(cfg, pick_device(cfg.device)), cfg.prompt)
            out = validate_outputs(cfg)
        except GenerationError as exc:
            raise UserError(as_flags(str(exc))) from None
        files = {"the splat file": out, "--mesh": cfg.mesh, "--video": cfg.video}
        return {k: v for k, v in files.items() if v is not None}

    def __call__(self, job, folder: Path) -> dict:
        from .pipeline import generate

        from .pipeline import GenerationError

        try:
            rec = generate(self.config(job, folder), console=None, models=BatchGenerate._models)
        except GenerationError as exc:  # in the command line's words, as the summary shows it
            raise GenerationError(as_flags(str(exc))) from None
        return {"outputs": rec.outputs, "metrics": rec.metrics}


def cmd_batch(argv: Sequence[str]) -> int:
    from rich.console import Console as RichConsole

    from . import config
    from .batch import BatchError, check_jobs, parse_prompt_file, run_batch, run_batch_ray, summary_table
    from .pipeline import GenerateConfig

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        if argv:
            print(BATCH_USAGE)
            return 0
        console.print(BATCH_USAGE, markup=False, highlight=False)
        console.print("[red]error:[/red] give the prompt file: steinsplat batch PROMPTS.txt", soft_wrap=True)
        return 2
    prompts, rest = Path(argv[0]), argv[1:]
    out_dir, ray_address, use_ray, base, fmt = Path("results"), None, False, [], "ply"
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--out-dir" and i + 1 < len(rest):
            out_dir, i = Path(rest[i + 1]), i + 2
        elif a.startswith("--out-dir="):
            out_dir, i = Path(a.split("=", 1)[1]), i + 1
        elif a == "--format" and i + 1 < len(rest):
            fmt, i = rest[i + 1].lower().lstrip("."), i + 2
        elif a.startswith("--format="):
            fmt, i = a.split("=", 1)[1].lower().lstrip("."), i + 1
        elif a == "--ray":
            use_ray = True
            if i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                ray_address, i = rest[i + 1], i + 2
            else:
                i += 1
        elif a == "--viewer" or a.startswith("--viewer"):
            raise UserError("--viewer follows a single prompt; run `steinsplat PROMPT --viewer` for the one to watch")
        elif a in ("--out", "--resume") or a.startswith(("--out=", "--resume=")):
            raise UserError(f"{a.split('=')[0]} is per prompt in a batch: outputs go to --out-dir/<prompt name>/")
        else:
            base.append(a)
            i += 1
    try:
        jobs = parse_prompt_file(prompts)
    except BatchError as exc:
        raise UserError(str(exc)) from None
    try:  # the shared options must parse before anything runs
        config.parse(GenerateConfig, ["check", *base], prog="steinsplat batch")
    except (SystemExit, config.ConfigError) as exc:
        raise UserError(f"the generation options are not valid: {exc}") from None
    if fmt not in ("ply", "splat", "spz"):
        raise UserError(f"--format {fmt}: use ply, splat or spz (the splat file written for every prompt)")
    gen = BatchGenerate(base, suffix=f".{fmt}")
    try:  # every line, before the first runs: all bad lines at once, and nothing runs
        notes = check_jobs(jobs, out_dir, gen.check, prompts)
    except BatchError as exc:
        raise UserError(str(exc)) from None
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)

    def report(res, k: int, n: int) -> None:
        colour = {"ok": "green", "failed": "red", "skipped": "dim"}[res.status]
        console.print(f"[{k}/{n}] [{colour}]{res.status}[/{colour}] {res.name}" + (f": {res.error}" if res.error else ""))

    from .interrupts import restore, terminate_as_interrupt

    previous = terminate_as_interrupt()  # SIGTERM between prompts stops the batch like Ctrl-C
    try:
        if use_ray:
            results = run_batch_ray(jobs, out_dir, gen, address=ray_address, on_result=report)
        else:
            results = run_batch(jobs, out_dir, gen, on_result=report)
    except BatchError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt as exc:
        where = f" (checkpoint {exc.checkpoint})" if getattr(exc, "checkpoint", None) else ""
        console.print(f"[yellow]interrupted[/yellow]{escape(where)}: run the same command again to go on "
                      "(finished prompts are skipped, the interrupted one resumes from its checkpoint)", soft_wrap=True)
        return 130
    finally:
        restore(previous)
    RichConsole().print(summary_table(results))
    console.print(f"summary: {out_dir / 'summary.json'}")
    return 1 if any(r.status == "failed" for r in results) else 0


# ---------------------------------------------------------------------------- bench
def require_output_folder(argv: Sequence[str], default: str, what: str) -> None:
    """The report folder `--out` of bench/study must be a folder this process can write, found now rather
    than after minutes of measuring (an existing file there, a read-only file system)."""
    out = Path(default)
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            out = Path(argv[i + 1])
        elif a.startswith("--out="):
            out = Path(a.split("=", 1)[1])
    if any(a in ("-h", "--help") for a in argv):
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; {what} writes a folder (report.json, report.md ...): give a folder")
    from .atomic import ensure_writable_folder

    try:
        ensure_writable_folder(out)
    except OSError as exc:
        raise UserError(f"--out '{out}': cannot write there ({exc.strerror or exc}); choose a writable folder") from None


def cmd_bench(argv: Sequence[str]) -> int:
    from .bench import main as bench_main

    require_output_folder(argv, "runs/bench", "bench")
    return bench_main(argv)


def cmd_study(argv: Sequence[str]) -> int:
    from .bench.study import main as study_main

    require_output_folder(argv, "docs/bench/study", "study")
    return study_main(argv)


# ---------------------------------------------------------------------------- doctor
def cmd_doctor(argv: Sequence[str]) -> int:
    from . import config
    from .doctor import DoctorConfig, run_doctor

    args = config.parse(DoctorConfig, argv, prog="steinsplat doctor", description=DoctorConfig.__doc__)
    code, _ = run_doctor(args, say=lambda m: console.print(m, markup=False, soft_wrap=True))
    return code


# ---------------------------------------------------------------------------- dispatch
@dataclass
class Command:
    run: Callable[[Sequence[str]], int]
    help: str = field(default="")


COMMANDS: dict[str, Command] = {
    "generate": Command(cmd_generate, "text to 3D (the default: `steinsplat PROMPT --out FILE`)"),
    "batch": Command(cmd_batch, "a prompt list, models loaded once, resumable; --ray for a cluster"),
    "export": Command(cmd_export, "convert splats: .ply <-> .splat <-> .spz <-> .splats.glb (glTF), SH degree, --up; .viser / --html DIR web views"),
    "info": Command(cmd_info, "count, up axis, bounds, SH degree and opacity statistics of a splat file"),
    "view": Command(cmd_view, "show a splat file in the browser (viser); export --html for an offline copy"),
    "fit-demo": Command(cmd_fit_demo, "fit Gaussians to views of a demo object (engine self-test), export it"),
    "bench": Command(cmd_bench, "measure SDS / VSD / SSD: variance, convergence, cost; report (JSON, Markdown, plots)"),
    "study": Command(cmd_study, "does SSD converge faster? tuned learning rates, step budgets, bootstrap intervals (resumable)"),
    "doctor": Command(cmd_doctor, "check this machine for the GPU path (versions, CUDA, gsplat, parity, weights; --gpu: timings)"),
    "shapeworld": Command(cmd_shapeworld, "the embedded world: `shapeworld render|sample PROMPT` (ground truth / prior)"),
}


def usage() -> str:
    lines = ["usage: steinsplat PROMPT [options]    text to 3D (steinsplat generate --help for the options)",
             "       steinsplat COMMAND [options]   (steinsplat COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {c.help}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


class OutputClosed(Exception):
    """Writing the standard output failed: a closed pipe (`| head -1`), a closed or full stdout."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))


class _GuardedStdout:
    """sys.stdout, whose write/flush errors become OutputClosed (told apart from an output file's OSError)."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        if self._inner is None:  # started with stdout closed (`>&-`): Python sets sys.stdout to None
            raise OutputClosed(OSError(9, "it is closed"))
        try:
            return self._inner.write(text)
        except OSError as exc:
            raise OutputClosed(exc) from None

    def flush(self) -> None:
        if self._inner is None:
            return
        try:
            self._inner.flush()
        except OSError as exc:
            raise OutputClosed(exc) from None

    def isatty(self) -> bool:
        return self._inner is not None and self._inner.isatty()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # not the source line Python shows after it by default


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: `_run` with SIGTERM/SIGHUP as Ctrl-C (every atomic write under way removes its
    temporary), one-line warnings, and a closed or full standard output reported in one line (exit 2)."""
    import warnings

    from .interrupts import restore, terminate_as_interrupt

    previous = terminate_as_interrupt()
    old_format, old_stdout = warnings.formatwarning, sys.stdout
    warnings.formatwarning = _one_line_warning
    sys.stdout = _GuardedStdout(old_stdout)
    try:
        try:
            code = _run(argv)
            sys.stdout.flush()
            return code
        except OutputClosed as exc:
            _silence_stdout(old_stdout)
            console.print(f"[red]error:[/red] cannot write to the standard output ({escape(str(exc))}); "
                          "give the output a file or a pipe that reads it all", soft_wrap=True)
            return 2
        except KeyboardInterrupt:  # SIGTERM / SIGHUP outside a command's own handling
            console.print("[yellow]interrupted[/yellow]")
            return 130
    finally:
        sys.stdout = old_stdout
        warnings.formatwarning = old_format
        restore(previous)


def _silence_stdout(stdout) -> None:
    """Point the file descriptor of a broken stdout at /dev/null, so that the interpreter's final flush
    of what is still buffered does not print a second error."""
    import os

    try:
        fd = stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (AttributeError, OSError, ValueError):
        pass


def _run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"steinsplat {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        if name.startswith("-"):
            console.print(usage(), markup=False, highlight=False)
            console.print(f"[red]error:[/red] unknown option {escape(repr(name))} before a command or prompt; the prompt "
                          "comes first: steinsplat \"a red cube\" --out cube.ply", soft_wrap=True)
            return 2
        name, argv = "generate", ["generate"] + argv  # a bare prompt
    from .atomic import WriteError
    from .config import ConfigError
    from .export.errors import ExportError

    try:
        return COMMANDS[name].run(argv[1:])
    except (UserError, ConfigError, ExportError, WriteError, OSError, MemoryError) as exc:
        if isinstance(exc, MemoryError):
            exc = UserError("out of memory: the sizes asked for do not fit in this machine's memory; lower them "
                            "(--resolution, --views, --num, --upscale ...)")
        # soft_wrap: the message is one line whatever the terminal width (no newline inside a path or a word pair).
        # A message with details (the ways to get a model ...) shows them first: the last line is the error.
        first, *details = str(exc).strip().splitlines() or [type(exc).__name__]
        for line in details:
            console.print(escape(line), soft_wrap=True, highlight=False)
        console.print(f"[red]error:[/red] {escape(first)}", soft_wrap=True)  # messages hold paths and "steinsplat[viewer]"
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
