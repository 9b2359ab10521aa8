"""sRGB transfer functions (IEC 61966-2-1). Our colours (renders, SH DC colours, mesh vertex colours) are display
sRGB; glTF's COLOR_0 attributes are linear."""

from __future__ import annotations

import numpy as np


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values (clipped to [0, 1]) -> linear."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear values (clipped to [0, 1]) -> sRGB-encoded: the inverse of `srgb_to_linear`."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
