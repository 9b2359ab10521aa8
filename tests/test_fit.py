"""Render + optimise + densify together: a short photometric fit must reach a held-out PSNR."""

from __future__ import annotations

from steinsplat.densify import DensifyConfig
from steinsplat.fit import FitConfig, demo_target, demo_views, fit_views, held_out_psnr, reference_images


def test_short_fit_reaches_held_out_psnr():
    train, test = demo_views(32, 32, n_train=12, n_test=4)
    target = demo_target(num=600)
    train_img, test_img = reference_images(target, train), reference_images(target, test)
    cfg = FitConfig(steps=200, init_gaussians=200,
                    densify=DensifyConfig(start=30, stop=150, interval=30, cap=3000, grow_grad2d=2e-4))
    res = fit_views(train_img, train, cfg)
    start = held_out_psnr(fit_views(train_img, train, FitConfig(steps=1, init_gaussians=200)).gaussians, test, test_img)
    end = held_out_psnr(res.gaussians, test, test_img)
    assert len(res.gaussians) > 200  # densification grew the set
    print(f"held-out PSNR {start:.2f} -> {end:.2f} dB, {len(res.gaussians)} Gaussians")
    assert end > 25.0, f"held-out PSNR {end:.2f} dB"
    assert end > start + 10.0
