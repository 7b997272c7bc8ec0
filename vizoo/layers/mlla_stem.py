"""MLLA's conv stem and downsample (Han et al., "Demystify Mamba in Vision: A Linear Attention Perspective", NeurIPS
2024, arXiv 2405.16605), shared by MLLA, Spatial-Mamba and VSSD, which took them over unchanged.

Parameter names follow the official ``ConvLayer`` (``conv``, ``norm``), so the three families' official checkpoints
map by stage prefix only. The stem takes (B, C, H, W) and returns channel-last (B, H, W, C); the downsample is
channel-last in and out.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vizoo.layers.channels_last import conv_nhwc


class ConvNormAct(nn.Module):
    """Conv2d -> optional BatchNorm -> optional ReLU (the official ``ConvLayer``); 'same' padding for odd kernels."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        norm: bool = True,
        act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_chs) if norm else nn.Identity()
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class MllaStem(nn.Module):
    """Stride-4 conv stem: conv3x3 s2 -> residual pair of conv3x3 -> conv3x3 s2 to 4C -> conv1x1 to C, each with BN
    (and ReLU but on the residual pair's second conv and the last projection). (B, C_in, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        half = dim // 2
        self.conv1 = ConvNormAct(in_chans, half, 3, stride=2, bias=False)
        self.conv2 = nn.Sequential(
            ConvNormAct(half, half, 3, bias=False), ConvNormAct(half, half, 3, bias=False, act=False)
        )
        self.conv3 = nn.Sequential(
            ConvNormAct(half, dim * 4, 3, stride=2, bias=False), ConvNormAct(dim * 4, dim, 1, bias=False, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class MllaDownsample(nn.Module):
    """Inverted-bottleneck downsample (the official ``PatchMerging``): 1x1 to ratio·C_out (ReLU) -> DW3x3 s2 (ReLU)
    -> 1x1 to C_out + BN. (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

    def __init__(self, in_dim: int, out_dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(out_dim * ratio)
        self.conv = nn.Sequential(
            ConvNormAct(in_dim, hidden, 1, norm=False),
            ConvNormAct(hidden, hidden, 3, stride=2, groups=hidden, norm=False),
            ConvNormAct(hidden, out_dim, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_nhwc(self.conv, x)
