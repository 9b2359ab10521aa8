"""PNG images of renders, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_bytes


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """[..., 3] floats in [0, 1] -> uint8 numpy (clamped, rounded)."""
    return (rgb.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def image_row(rgb: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] -> [H, B*W, 3]: the views side by side."""
    return torch.cat(list(rgb), dim=1)


def write_png(path: str | Path, img: np.ndarray | torch.Tensor) -> None:
    """Write [H, W, 3] uint8 (or floats in [0, 1]) as PNG, atomically."""
    from PIL import Image

    arr = to_uint8(img) if isinstance(img, torch.Tensor) else img
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
