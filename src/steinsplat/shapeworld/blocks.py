"""The convolution blocks of the ShapeWorld classifier and estimator, without timm at run time.

Both networks were written with timm's `ConvNormAct`, `resnet.BasicBlock` and `SelectAdaptivePool2d`
(GroupNorm, SiLU, nothing pretrained). Importing timm costs ~1.5 s on a 2-core CPU (it pulls in
torchvision and torch._dynamo), more than the classifier's whole forward pass, so these are the same
blocks in plain torch: the same parameter names (so the shipped `model.safetensors` load as they are,
strict), the same operations in the same order (tests/test_shapeworld_blocks.py checks the outputs
and input gradients with torch.equal against the timm-built networks), and the same parameter
creation order (so a seeded training run initialises them as the timm blocks did).
Only what the two networks use is implemented: GroupNorm, SiLU, dilation 1, no anti-aliasing,
attention, drop-block or drop-path (all Identity/None in timm for these arguments).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, **kwargs) -> nn.GroupNorm:
    """GroupNorm with 8 groups (or fewer for narrow layers), eps 1e-5, affine: the norm of every block."""
    return nn.GroupNorm(min(8, channels), channels, **kwargs)


class ConvNormAct(nn.Module):
    """conv (no bias, padding ((stride - 1) + (k - 1)) // 2 as timm's default '') -> GroupNorm -> SiLU.

    timm's ConvNormAct(c_in, c_out, k, stride, norm_layer=nn.GroupNorm, act_layer=nn.SiLU,
    norm_kwargs={"num_groups": min(8, c_out)}) with the same names: `conv`, `bn` (timm's GroupNormAct
    keeps BatchNorm's `.bn` name for weight compatibility)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = group_norm(out_channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
        return F.silu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """The ResNet basic block (timm's `resnet.BasicBlock` with act_layer=nn.SiLU, norm_layer=group_norm):
        h = bn2(conv2(silu(bn1(conv1(x)))));  out = silu(h + shortcut(x)),
    conv1 3x3 with the stride, conv2 3x3, shortcut = `downsample` (1x1 conv + GroupNorm, built by the
    caller as for timm) or the identity."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        if downsample is None and (stride != 1 or inplanes != planes):
            raise ValueError(f"a block from {inplanes} to {planes} channels with stride {stride} needs a downsample "
                             f"shortcut: pass downsample=nn.Sequential(nn.Conv2d(..., 1, stride), group_norm(...))")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = group_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = group_norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
        h = F.silu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.silu(h + shortcut)


def resnet_block(c_in: int, c_out: int, stride: int = 1) -> BasicBlock:
    """A BasicBlock with a 1x1-conv + GroupNorm shortcut when the shape changes (built before the
    block, as the timm-built networks did, so seeded initialisation is unchanged)."""
    down = None
    if stride != 1 or c_in != c_out:
        down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), group_norm(c_out))
    return BasicBlock(c_in, c_out, stride=stride, downsample=down)


class GlobalAvgPool(nn.Module):
    """[B, C, H, W] -> [B, C]: timm's SelectAdaptivePool2d(pool_type="avg", flatten=True)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
