"""How broad is the prior's posterior at the ground truth? The spread of x0_hat over eps.

    python benchmarks/posterior_spread.py [--cases "default:a red cube;textured:a red cube;textured:a red striped cube"]
        [--timesteps 100 300 500 700 900] [--draws 16] [--out docs/bench/gates/posterior-spread.json]

For each case (prior "default" or "textured", prompt): the ground truth on the 8 object evaluation
views (striped prompts at stripe phase --phase), pooled to the prior's 32x32 model space x0 in
[-1, 1]; at each t, x_t = alpha_t x0 + sigma_t eps for `draws` eps per view, x0_hat from the prior
(s = 1, camera-aware), and the spread = the per-pixel standard deviation over eps, averaged over
pixels and views (model-space units: x 1/2 for [0, 1] colour). A point posterior gives ~0 at low t;
a nuisance the text leaves open keeps it up where x_t no longer pins the nuisance down.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch


def main() -> None:
    from steinsplat.export.atomic import atomic_write_bytes
    from steinsplat.shapeworld.metrics import eval_cameras, eval_gt
    from steinsplat.shapeworld.phase_metrics import striped_gt
    from steinsplat.shapeworld.prior import ShapeWorldPrior, textured_prior_dir, to_model_space
    from steinsplat.shapeworld.vocab import parse_prompt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="default:a red cube;textured:a red cube;textured:a red striped cube")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--phase", type=float, default=0.0625)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/bench/gates/posterior-spread.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    priors = {"default": None, "textured": textured_prior_dir()}
    loaded: dict[str, ShapeWorldPrior] = {}
    rows = []
    for case in args.cases.split(";"):
        name, text = (s.strip() for s in case.split(":", 1))
        if name not in priors:
            raise SystemExit(f"case {case!r}: the prior is 'default' or 'textured'")
        prior = loaded.setdefault(name, ShapeWorldPrior.from_pretrained(priors[name]))
        p = parse_prompt(text)
        cams = eval_cameras(p)
        gt = striped_gt(p, args.phase) if p.texture is not None else eval_gt(p)
        x0 = to_model_space(gt.rgb, prior.resolution)  # [B, 3, R, R]
        B, E = x0.shape[0], args.draws
        cond = prior.encode_prompt([p.text] * (B * E))
        cam_feats = prior.camera_features(cams).repeat(E, 1)  # [E*B, F], draw-major
        gen = torch.Generator().manual_seed(args.seed)
        spread = {}
        for t in args.timesteps:
            tt = torch.full((B * E,), t, dtype=torch.long)
            a, s = prior.alpha_sigma(tt)
            eps = torch.randn((E * B, *x0.shape[1:]), generator=gen)
            x_t = a * x0.repeat(E, 1, 1, 1) + s * eps
            with torch.no_grad():
                v = prior.guided_v(x_t, tt, cond, cam_feats, 1.0)
                x0_hat = prior.v_to_x0(v, x_t, a, s).reshape(E, B, *x0.shape[1:])
            spread[str(t)] = float(x0_hat.std(0).mean())
        print(f"{name}: {text}: " + ", ".join(f"t {t} {v:.4f}" for t, v in spread.items()), flush=True)
        rows.append({"prior": name, "prompt": text, "phase": args.phase if p.texture else None, "spread": spread})
    doc = {"meta": {"command": "python benchmarks/posterior_spread.py " + " ".join(sys.argv[1:]),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "draws": args.draws, "units": "model space [-1, 1]: std over eps per pixel, mean over pixels and 8 views"},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps(doc, indent=1).encode() + b"\n")


if __name__ == "__main__":
    main()
