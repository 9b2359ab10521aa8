"""A tiny random model-space geometry estimator, for tests and benchmarks (no weights to load).

A few convolutions from (x_t, t) to relative depth (softplus, > 0) and camera-frame unit normals.
Meaningless predictions, but the exact interface and autograd path of a real noise-aware estimator.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from ..priors.base import freeze
from .base import GeometryPrediction


class TinyConvEstimator(nn.Module):
    input_space: Literal["model"] = "model"

    def __init__(self, in_channels: int = 3, hidden: int = 16, num_train_timesteps: int = 1000, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_train_timesteps = num_train_timesteps
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + 1, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, 4, 3, padding=1),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))
        freeze(self)

    def forward(self, image: Tensor, t: Optional[Tensor] = None, cameras: Optional[Cameras] = None) -> GeometryPrediction:
        B, _, H, W = image.shape
        tt = torch.zeros(B, device=image.device) if t is None else t.float().to(image.device) / self.num_train_timesteps
        h = self.net(torch.cat([image, tt.view(B, 1, 1, 1).expand(B, 1, H, W)], 1))  # [B, 4, H, W]
        depth = F.softplus(h[:, :1]) + 0.1  # [B, 1, H, W] relative depth
        normal = F.normalize(h[:, 1:] + torch.tensor([0.0, 0.0, -1.0], device=h.device).view(1, 3, 1, 1), dim=1)
        return GeometryPrediction(depth=depth, normal=normal, depth_kind="depth")
