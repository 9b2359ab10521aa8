"""`steinsplat doctor [--gpu]`: what a GPU owner runs first.

Reports, in order, each as ok / warn / fail / skip with the fix when something is missing:
  1. versions: python, torch (and the CUDA it was built for), gsplat, diffusers, transformers;
  2. CUDA: a visible GPU (name, memory) or why not (CPU-only torch build, no driver);
  3. gsplat's kernels: prebuilt in the wheel or compiled on first use (needs nvcc), and, with
     CUDA, whether they load and run (a wheel built for another torch/CUDA fails here);
  4. parity: gsplat's rasteriser against steinsplat's torch rasteriser on a random scene
     (images and gradients) on CUDA; without CUDA it says so and checks the CPU part instead
     (the torch rasteriser against the dense reference);
  5. weights: whether the Stable Diffusion model and the depth estimator are in the local
     Hugging Face cache (never downloads), else the exact command that fetches them;
  6. with --gpu: one optimisation step per guidance (SDS, SSD, ...) at 512x512 with the model,
     timed after a warm-up step, with the peak GPU memory of each.
Exit code 0 when nothing failed, 1 otherwise (--gpu without a GPU or weights is a failure).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch

from .guidance_spec import GuidanceSpec, SDSSpec, SSDSpec, VSDSpec
from .priors.stable_diffusion import DEFAULT_MODEL

DEFAULT_ESTIMATOR = "depth-anything/Depth-Anything-V2-Small-hf"
Status = Literal["ok", "warn", "fail", "skip"]
# doctor --gpu's guidance names -> the GenerateConfig.guidance each is timed with (built by
# pipeline.build_guidance, as in generation; "ssd-depth" needs the depth estimator, its model set at the call)
GUIDANCE_SPECS_TIMED: dict[str, GuidanceSpec] = {
    "sds": SDSSpec(),
    "vsd": VSDSpec(),
    "ssd": SSDSpec(estimator="none", baseline="none"),
    "ssd-depth": SSDSpec(estimator="transformers", baseline="depth"),
}
GUIDANCE_CHOICES = tuple(GUIDANCE_SPECS_TIMED)


@dataclass
class DoctorConfig:
    """Check this machine for steinsplat's GPU path: versions, CUDA, gsplat's kernels, rasteriser
    parity, cached weights; with --gpu, time one step of each guidance at 512x512."""

    gpu: bool = False  # also time one optimisation step per guidance with --model and report peak GPU memory
    model: str = DEFAULT_MODEL  # Stable Diffusion hub id or local folder (looked up in the local cache only)
    estimator_model: str = DEFAULT_ESTIMATOR  # depth estimator of SSD's depth baseline ("ssd-depth")
    guidances: tuple[str, ...] = ("sds", "ssd", "ssd-depth")  # --gpu: which steps to time (sds, vsd, ssd, ssd-depth)
    resolution: int = 512  # --gpu: render size (square), SD 2.1-base's native size
    views: int = 4  # --gpu: cameras per step (the sd-object preset's)
    gaussians: int = 5000  # --gpu: Gaussians in the timed scene (the sd-object preset's init)
    json: Optional[Path] = None  # also write the report here as JSON


@dataclass
class Check:
    name: str  # what was checked
    status: Status  # ok, warn (works, with a caveat), fail (something needed is missing), skip (not applicable here)
    detail: str  # what was found
    fix: str = ""  # what to do about it (empty when nothing is to be done)
    data: dict = field(default_factory=dict)  # numbers behind the detail (versions, errors, timings)


# ---------------------------------------------------------------------------- 1-3: software and hardware
def check_versions() -> Check:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {"python": platform.python_version()}
    missing = []
    for pkg in ("steinsplat", "torch", "gsplat", "diffusers", "transformers"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
            missing.append(pkg)
    found["torch CUDA build"] = str(torch.version.cuda) if torch.version.cuda else "none (CPU-only build)"
    detail = ", ".join(f"{k} {v}" for k, v in found.items())
    if missing:
        return Check("versions", "fail", detail, f"pip install {' '.join(missing)}", found)
    return Check("versions", "ok", detail, data=found)


def check_cuda() -> Check:
    if torch.version.cuda is None:
        return Check("CUDA", "warn", "no GPU: this torch is a CPU-only build, so no CUDA device can be used",
                     "for the GPU path install a CUDA build of torch (see pytorch.org, 'Get started'), then rerun "
                     "`steinsplat doctor --gpu`; on this machine steinsplat runs the ShapeWorld prior on its CPU rasteriser")
    if not torch.cuda.is_available():
        return Check("CUDA", "warn", f"no GPU visible: torch is built for CUDA {torch.version.cuda}, but no device or "
                     "driver was found", "check `nvidia-smi` and CUDA_VISIBLE_DEVICES; on this machine steinsplat "
                     "runs the ShapeWorld prior on its CPU rasteriser")
    n = torch.cuda.device_count()
    p = torch.cuda.get_device_properties(0)
    gib = p.total_memory / 2**30
    return Check("CUDA", "ok", f"{n} GPU(s); cuda:0 = {p.name}, {gib:.1f} GiB, compute capability {p.major}.{p.minor}, "
                 f"torch built for CUDA {torch.version.cuda}", data={"gpu": p.name, "memory_gib": gib, "count": n})


def gsplat_wheel_hint() -> str:
    tv = torch.__version__.split("+")[0].split(".")
    cu = (torch.version.cuda or "").replace(".", "")
    tag = f"pt{tv[0]}{tv[1]}cu{cu}" if cu else "ptXYcuZZZ"
    return (f"install a gsplat wheel built for this torch and CUDA: `pip install gsplat --index-url "
            f"https://docs.gsplat.studio/whl/{tag}` (the prebuilt tags run pt20-pt24; for another torch, install the "
            f"CUDA toolkit {torch.version.cuda or ''} (nvcc) and `pip install --no-binary gsplat gsplat`: it compiles "
            "its kernels on first use, once, in several minutes)")


def check_gsplat_kernels(cuda: bool) -> Check:
    try:
        import gsplat  # noqa: F401
    except Exception as exc:
        return Check("gsplat kernels", "fail", f"gsplat does not import: {type(exc).__name__}: {exc}", "pip install gsplat")
    import importlib.util

    kind, err = "no prebuilt kernels: compiled on first use (needs nvcc)", ""
    if importlib.util.find_spec("gsplat.csrc") is not None:  # the compiled module of prebuilt wheels
        kind = "prebuilt kernels in the wheel"
        try:
            importlib.import_module("gsplat.csrc")
        except Exception as exc:  # built for another torch / CUDA: undefined symbols, missing libcudart
            kind, err = "prebuilt kernels that do not load", f"{type(exc).__name__}: {str(exc)[:200]}"
    nvcc = shutil.which("nvcc")
    if not cuda:
        return Check("gsplat kernels", "skip", f"{kind}; not run: no CUDA GPU (gsplat's kernels are CUDA only; "
                     "steinsplat renders with its own CPU rasteriser here)", data={"kind": kind, "nvcc": nvcc})
    if err:
        return Check("gsplat kernels", "fail", f"{kind}: {err}", gsplat_wheel_hint(), {"kind": kind})
    if "compiled on first use" in kind and nvcc is None:
        return Check("gsplat kernels", "fail", f"{kind}, and no nvcc on PATH", gsplat_wheel_hint(), {"kind": kind})
    try:
        from gsplat import rasterization

        dev = torch.device("cuda")
        img, _, _ = rasterization(torch.zeros(1, 3, device=dev) + torch.tensor([0.0, 0.0, 2.0], device=dev),
                                  torch.tensor([[1.0, 0, 0, 0]], device=dev), torch.full((1, 3), 0.1, device=dev),
                                  torch.ones(1, device=dev) * 0.9, torch.ones(1, 3, device=dev), torch.eye(4, device=dev)[None],
                                  torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]], device=dev), 16, 16)
        torch.cuda.synchronize()
        if not float(img.amax()) > 0.1:
            raise RuntimeError("a one-Gaussian render came out empty")
    except Exception as exc:
        return Check("gsplat kernels", "fail", f"{kind}, but a CUDA render failed: {type(exc).__name__}: {str(exc)[:300]}",
                     gsplat_wheel_hint(), {"kind": kind})
    return Check("gsplat kernels", "ok", f"{kind}; a CUDA render works", data={"kind": kind})


# ---------------------------------------------------------------------------- 4: parity
def _parity_scene(device: torch.device, n: int = 200, seed: int = 0):
    from .cameras import orbit_cameras
    from .gaussians import Gaussians

    gen = torch.Generator().manual_seed(seed)
    g = Gaussians.random_ball(n, radius=0.5, opacity=0.5, sh_degree=1, generator=gen)
    with torch.no_grad():
        g.splats["scales"].add_(0.5 * torch.randn(n, 3, generator=gen))
        g.splats["quats"].copy_(torch.randn(n, 4, generator=gen))
        g.splats["opacities"].copy_((2.0 * torch.randn(n, generator=gen)).clamp(max=3.89))  # o <= 0.98: below both alpha clamps
        g.splats["shN"].copy_(0.3 * torch.randn(g.splats["shN"].shape, generator=gen))
    cams = orbit_cameras([20.0, -5.0, 55.0], [0.0, 200.0, 95.0], [1.8, 1.3, 2.0], fovy=40.0, width=48, height=40)
    return g.to(device), cams.to(device)


def _outputs_and_grads(render_fn, g):
    out = render_fn()
    gen = torch.Generator().manual_seed(3)
    loss = sum(((getattr(out, k) * torch.rand(getattr(out, k).shape, generator=gen).to(out.rgb.device)).sum()
                for k in ("rgb", "alpha", "depth", "normal")))
    params = list(g.splats.values())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return out, [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]


def backend_parity(device: str | torch.device = "cuda", reference: str = "gsplat") -> dict[str, float]:
    """Max |difference| of rgb, alpha, depth, normal and (relative to their max) of every parameter
    gradient between the torch backend and `reference` ("gsplat", or "dense": the dense CPU reference)."""
    from .render import render
    from .render.dense import render_dense

    g, cams = _parity_scene(torch.device(device))
    bg = (1.0, 1.0, 1.0)
    a, ga = _outputs_and_grads(lambda: render(g, cams, background=bg, backend="torch"), g)
    if reference == "gsplat":
        b, gb = _outputs_and_grads(lambda: render(g, cams, background=bg, backend="gsplat"), g)
    else:
        b, gb = _outputs_and_grads(lambda: render_dense(g, cams, background=bg), g)
    errs = {k: float((getattr(a, k) - getattr(b, k)).detach().abs().max()) for k in ("rgb", "alpha", "depth", "normal")}
    errs["gradients"] = max(float((x - y).abs().max()) / (float(y.abs().max()) + 1e-12) for x, y in zip(ga, gb))
    return errs


def check_parity(cuda: bool) -> Check:
    try:
        if cuda:
            errs = backend_parity("cuda", "gsplat")
            what = "gsplat (CUDA) vs steinsplat's torch rasteriser on a random scene (200 Gaussians, 3 views)"
        else:
            errs = backend_parity("cpu", "dense")
            what = ("no CUDA, so gsplat's rasteriser cannot run here; checked the CPU part instead: steinsplat's torch "
                    "rasteriser vs the dense reference (200 Gaussians, 3 views)")
    except Exception as exc:
        return Check("parity", "fail", f"{type(exc).__name__}: {str(exc)[:300]}",
                     "report this with the output of `steinsplat doctor`")
    worst_img = max(errs[k] for k in ("rgb", "alpha", "depth", "normal"))
    ok = worst_img < 2e-3 and errs["gradients"] < 5e-3
    detail = f"{what}: max image error {worst_img:.1e}, max relative gradient error {errs['gradients']:.1e}"
    return Check("parity", "ok" if ok else "fail", detail,
                 "" if ok else "the backends disagree: report this with the output of `steinsplat doctor`", errs)


# ---------------------------------------------------------------------------- 5: weights
def _cached(name: str) -> tuple[bool, str]:
    """(available offline, where): a local folder, or a complete snapshot in the HF cache."""
    p = Path(name).expanduser()
    if p.is_dir():
        return True, str(p)
    try:
        from huggingface_hub import snapshot_download

        return True, snapshot_download(name, local_files_only=True)
    except Exception:
        return False, ""


def check_weights(model: str, estimator_model: str, needed: bool) -> list[Check]:
    from .priors.stable_diffusion import REMOVED_MODELS

    out = []
    for what, name in (("Stable Diffusion weights", model), ("depth estimator weights", estimator_model)):
        ok, where = _cached(name)
        if ok:
            out.append(Check(what, "ok", f"{name}: available offline ({where})"))
            continue
        fix = f"`hf download {name}` once where there is network (or pass a local folder)"
        if name in REMOVED_MODELS:
            fix = f"'{name}' was removed from the Hub: use `--model {REMOVED_MODELS[name]}` and `hf download {REMOVED_MODELS[name]}`"
        status: Status = "fail" if needed and what.startswith("Stable") else "warn"
        extra = " (SSD's depth baseline is then skipped)" if what.startswith("depth") else ""
        out.append(Check(what, status, f"{name}: not in the local Hugging Face cache{extra}", fix))
    return out


# ---------------------------------------------------------------------------- 6: one step per guidance
def time_guidance_steps(model: str, estimator_model: Optional[str], device: str, guidances: tuple[str, ...],
                        resolution: int = 512, views: int = 4, gaussians: int = 5000, dtype: str = "auto",
                        say: Callable[[str], None] = lambda _m: None, repeats: int = 1,
                        sd_options: Optional[dict] = None) -> dict[str, dict]:
    """Per guidance: seconds per optimisation step (render, encode, guidance, backward, Adam; the
    mean of `repeats` steps after one warm-up step) and, on CUDA, the peak memory allocated during
    them (GiB). The prior is built once; its weights count in every peak. sd_options: more
    GenerateConfig fields of the prior (pipeline.SD_PRIOR_OPTIONS, e.g. {"vae_checkpointing": True})."""
    from .pipeline import SD_PRIOR_OPTIONS, GenerateConfig, build_guidance, build_prior, build_trainer

    sd_options = dict(sd_options or {})
    unknown = set(sd_options) - set(SD_PRIOR_OPTIONS)
    if unknown:
        raise ValueError(f"unknown Stable Diffusion option(s) {sorted(unknown)}: choose from {SD_PRIOR_OPTIONS}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    dev = torch.device(device)
    base = GenerateConfig(prompt="a corgi in a spacesuit", prior="sd", model=model, device=device, mode="object",
                          resolution=resolution, views=views, init_gaussians=gaussians, quiet=True, **{"dtype": dtype, **sd_options})  # type: ignore[arg-type]
    prior = build_prior(base, "sd", dev)
    embeds = prior.encode_prompt(base.prompt, "")
    results: dict[str, dict] = {}
    for name in guidances:
        if name not in GUIDANCE_CHOICES:
            raise ValueError(f"unknown guidance {name!r} to time: choose from {GUIDANCE_CHOICES}")
        if name == "ssd-depth" and estimator_model is None:
            continue
        spec = GUIDANCE_SPECS_TIMED[name]
        if isinstance(spec, SSDSpec):
            spec = dataclasses.replace(spec, estimator_model=estimator_model)
        cfg = dataclasses.replace(base, guidance=spec)
        guidance = build_guidance(cfg, prior, "sd", dev)
        trainer = build_trainer(dataclasses.replace(cfg, steps=10 + repeats), prior, guidance, dev, embeds=embeds)
        trainer.step()  # warm-up: kernels, caches, allocator (and the compile with compile_unet)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(repeats):
            trainer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / repeats
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
        results[name] = {"seconds": sec, "peak_gib": peak, "skipped_steps": trainer.state.skipped}
        say(f"  {name}: {sec:.2f} s per step" + (f", peak {peak:.2f} GiB" if peak is not None else ""))
        del trainer, guidance
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return results


def check_gpu_steps(cfg: DoctorConfig, cuda: bool, weights: list[Check], say) -> Check:
    name = f"one step per guidance at {cfg.resolution}x{cfg.resolution}"
    if not cuda:
        return Check(name, "fail", "--gpu asked for, but there is no CUDA GPU on this machine (see CUDA above)",
                     "run `steinsplat doctor --gpu` on a machine with an NVIDIA GPU and a CUDA build of torch")
    missing = [c for c in weights if c.status != "ok" and c.name.startswith("Stable")]
    if missing:
        return Check(name, "fail", "the Stable Diffusion weights are not available offline", missing[0].fix)
    est_ok = all(c.status == "ok" for c in weights if c.name.startswith("depth"))
    try:
        res = time_guidance_steps(cfg.model, cfg.estimator_model if est_ok else None, "cuda", cfg.guidances,
                                  cfg.resolution, cfg.views, cfg.gaussians, say=say)
    except torch.cuda.OutOfMemoryError as exc:
        return Check(name, "fail", f"out of GPU memory: {str(exc).splitlines()[0]}",
                     "try --vae-checkpointing (and --vae-slicing), fewer --views or a smaller --resolution in the "
                     "generation options; `python benchmarks/sd_speed.py` compares them")
    except Exception as exc:
        return Check(name, "fail", f"{type(exc).__name__}: {str(exc)[:300]}", "report this with the output of `steinsplat doctor --gpu`")
    detail = "; ".join(f"{k} {v['seconds']:.2f} s, peak {v['peak_gib']:.2f} GiB" for k, v in res.items())
    note = "" if est_ok else " (ssd-depth skipped: the depth estimator is not cached)"
    return Check(name, "ok", detail + note, data=res)


# ---------------------------------------------------------------------------- the report
def run_doctor(cfg: DoctorConfig, say: Callable[[str], None] = print) -> tuple[int, list[Check]]:
    checks: list[Check] = []

    def add(c: Check) -> None:
        checks.append(c)
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}[c.status]
        say(f"[{mark}] {c.name}: {c.detail}")
        if c.fix:
            say(f"       -> {c.fix}")

    add(check_versions())
    cuda_check = check_cuda()
    add(cuda_check)
    cuda = cuda_check.status == "ok"
    add(check_gsplat_kernels(cuda))
    add(check_parity(cuda))
    weights = check_weights(cfg.model, cfg.estimator_model, needed=cfg.gpu)
    for c in weights:
        add(c)
    if cfg.gpu:
        add(check_gpu_steps(cfg, cuda, weights, say))
    elif cuda:
        say("(add --gpu to time one SDS and one SSD step at 512x512 and see the peak GPU memory)")
    code = 1 if any(c.status == "fail" for c in checks) else 0
    say("all checks passed" if code == 0 else "some checks failed: see the lines marked FAIL and their fixes")
    if cfg.json is not None:
        from .atomic import atomic_write_bytes

        atomic_write_bytes(cfg.json, json.dumps([dataclasses.asdict(c) for c in checks], indent=2, default=str).encode())
    return code, checks
