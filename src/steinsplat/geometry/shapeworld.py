"""The embedded ShapeWorld estimator (`steinsplat.shapeworld.estimator.ShapeWorldEstimator`) as a
`GeometryEstimator`.

It reads the prior's model space directly (x_t [B, 3, R, R] in [-1, 1], noisy, with the prior's
integer timestep t), so SSD feeds it x_t itself: grad_{x_t} phi is one backward pass through
this small network, nothing else. Outputs: relative depth (camera z up to scale and shift,
larger = farther: `depth_kind="depth"`, compare by Pearson correlation) and camera-frame
(OpenCV) unit normals facing the camera. Meaningful on the object's pixels only for objects,
which is why SSD's baselines restrict their comparison to rendered pixels with alpha > 0.5.
The estimator must have been trained with the same noise schedule as the prior it is used with
(both use `shapeworld.prior.scheduler_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..priors.base import freeze
from .base import EstimatorUnavailableError, GeometryPrediction


class ShapeWorldEstimatorAdapter(nn.Module):
    input_space: Literal["model"] = "model"

    def __init__(self, estimator) -> None:
        super().__init__()
        self.estimator = freeze(estimator)  # a steinsplat.shapeworld.estimator.ShapeWorldEstimator

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | torch.device = "cpu") -> "ShapeWorldEstimatorAdapter":
        """Load a trained estimator folder (default: the shipped steinsplat/assets/shapeworld/estimator)."""
        from ..shapeworld.estimator import ShapeWorldEstimator

        try:
            est = ShapeWorldEstimator.from_pretrained(folder)
        except FileNotFoundError as e:
            raise EstimatorUnavailableError(
                f"{e}\nTrain it with `python -m steinsplat.shapeworld.train estimator`, or pass the folder of a "
                "trained estimator (set $STEINSPLAT_ASSETS to point at another assets/ folder)."
            ) from e
        return cls(est.to(device))

    def forward(self, image: Tensor, t: Optional[Tensor] = None, cameras: Optional[Cameras] = None) -> GeometryPrediction:
        """image: x_t [B, 3, R, R] in the prior's model space; t [B] its timesteps (None: clean)."""
        out = self.estimator(image, t)
        return GeometryPrediction(depth=out.depth, normal=out.normal, depth_kind="depth")
