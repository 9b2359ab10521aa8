"""Fitting benchmark: from a small random init, fit Gaussians to 16 views of the demo object
(rendered by the dense reference) and report the PSNR on 8 held-out views, with wall time.

    python benchmarks/fit_quality.py [--steps 600] [--seeds 0 1 2]

Target (issue "Core engine"): >= 30 dB held-out PSNR within a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse

import torch

from steinsplat.fit import FitConfig, demo_target, demo_views, fit_views, held_out_psnr, reference_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    train, test = demo_views(args.resolution, args.resolution)
    target = demo_target()
    train_img, test_img = reference_images(target, train), reference_images(target, test)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; {len(train)} train / {len(test)} held-out "
          f"views at {args.resolution}x{args.resolution}; target: {len(target)} Gaussians")
    print(f"{'seed':>4} {'steps':>6} {'seconds':>8} {'gaussians':>10} {'held-out PSNR dB':>17} {'train PSNR dB':>14}")
    for seed in args.seeds:
        res = fit_views(train_img, train, FitConfig(steps=args.steps, seed=seed))
        p_test = held_out_psnr(res.gaussians, test, test_img)
        p_train = held_out_psnr(res.gaussians, train, train_img)
        print(f"{seed:>4} {args.steps:>6} {res.seconds:>8.1f} {len(res.gaussians):>10,} {p_test:>17.2f} {p_train:>14.2f}",
              flush=True)


if __name__ == "__main__":
    main()
