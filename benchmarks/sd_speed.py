"""Stable Diffusion path speed and memory: seconds per optimisation step and peak GPU memory per guidance.

    python benchmarks/sd_speed.py [--guidances sds vsd ssd] [--resolution 512] [--views 4]
        [--vae-checkpointing] [--vae-slicing] [--attention-slicing] [--channels-last] [--compile-unet]
        [--sweep] [--json results.json]

Each guidance runs one full step (render with gsplat, VAE encode, guidance, backward, Adam) as a
warm-up, then `--repeats` timed steps; the peak is torch.cuda.max_memory_allocated over the timed
steps (the prior's weights included). The timing code is `steinsplat.doctor.time_guidance_steps`,
the same as `steinsplat doctor --gpu`. `--sweep` also runs every memory/time flag alone against
the run without any, so one command compares them.

Needs CUDA and the weights in the local Hugging Face cache (`hf download MODEL`); without CUDA it
exits with code 2 and one line saying so. `--cpu-tiny MODEL_DIR` runs the same code on the CPU with
a tiny saved model (what the tests do): the numbers then say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

FLAGS = ("attention_slicing", "vae_slicing", "vae_checkpointing", "channels_last", "compile_unet")


def configurations(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(label, GenerateConfig options) to run: the chosen flags, and with --sweep none and each alone."""
    chosen = {k: True for k in FLAGS if getattr(args, k)}
    runs = [("chosen: " + (" ".join("--" + k.replace("_", "-") for k in chosen) or "no flags"), chosen)]
    if args.sweep:
        runs += [("no flags", {})] if chosen else []
        runs += [("--" + k.replace("_", "-"), {k: True}) for k in FLAGS if {k: True} != chosen]
    return runs


def main(argv: list[str] | None = None) -> int:
    from steinsplat.doctor import GUIDANCE_CHOICES, time_guidance_steps
    from steinsplat.pipeline import GenerationError
    from steinsplat.priors.stable_diffusion import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="hub id (looked up in the local cache only) or folder")
    ap.add_argument("--guidances", nargs="+", default=["sds", "vsd", "ssd"], choices=[g for g in GUIDANCE_CHOICES if g != "ssd-depth"])
    ap.add_argument("--resolution", type=int, default=512, help="render size (square)")
    ap.add_argument("--views", type=int, default=4, help="cameras per step")
    ap.add_argument("--gaussians", type=int, default=5000, help="Gaussians in the scene")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per guidance, after one warm-up step")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    for k in FLAGS:
        ap.add_argument("--" + k.replace("_", "-"), dest=k, action="store_true", help=f"the generation option --{k.replace('_', '-')}")
    ap.add_argument("--sweep", action="store_true", help="also run without flags and with each flag alone")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cpu-tiny", type=Path, metavar="MODEL_DIR",
                    help="run on the CPU with this tiny saved SD folder (exercises the script; numbers mean nothing)")
    args = ap.parse_args(argv)

    if args.cpu_tiny is not None:
        device, model = "cpu", str(args.cpu_tiny)
        if not args.cpu_tiny.is_dir():
            print(f"sd_speed: --cpu-tiny '{args.cpu_tiny}' is not a folder (a saved SD model: unet/ vae/ text_encoder/ "
                  "tokenizer/ scheduler/)", file=sys.stderr)
            return 2
    elif not torch.cuda.is_available():
        print("sd_speed: no CUDA GPU on this machine (the benchmark measures GPU time and memory); run it where "
              "`steinsplat doctor` finds CUDA, or add --cpu-tiny MODEL_DIR to exercise it on the CPU", file=sys.stderr)
        return 2
    else:
        device, model = "cuda", args.model

    where = (torch.cuda.get_device_name(0) if device == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, tiny model: not a measurement)")
    print(f"# {where}, torch {torch.__version__}, {model}, {args.views} views of {args.resolution}x{args.resolution}, "
          f"{args.gaussians} Gaussians, dtype {args.dtype}, mean of {args.repeats} steps after a warm-up")
    print(f"{'configuration':<36} {'guidance':>8} {'s/step':>9} {'peak GiB':>9}")
    results = []
    for label, options in configurations(args):
        try:
            res = time_guidance_steps(model, None, device, tuple(args.guidances), args.resolution, args.views,
                                      args.gaussians, dtype=args.dtype, repeats=args.repeats, sd_options=options)
        except GenerationError as exc:  # weights not cached, with the command that fetches them
            print(f"sd_speed: {exc}", file=sys.stderr)
            return 2
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{label:<36} {'all':>8} out of GPU memory ({str(exc).splitlines()[0][:80]})")
            results.append({"configuration": label, "options": options, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        for name, r in res.items():
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
            print(f"{label:<36} {name:>8} {r['seconds']:>9.3f} {peak:>9}")
            results.append({"configuration": label, "options": options, "guidance": name, **r})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": where, "model": model, "resolution": args.resolution,
                                         "views": args.views, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
