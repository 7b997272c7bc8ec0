"""VMamba's block, stems and downsamples, channel-last: (B, H, W, C) in and out of every module but the stems' input."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d, Mlp
from timm.models.swin_transformer import PatchMerging

from vizoo.layers.channels_last import conv_nhwc
from vizoo.layers.ss2d import SS2D


class VSSBlock(nn.Module):
    """Pre-norm residual block: ``x + DP(SS2D(LN(x)))``, then ``x + DP(MLP(LN(x)))`` when ``mlp_ratio > 0``."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        **ssm_kwargs,
    ):
        super().__init__()
        self.norm = norm_layer(dim)
        self.op = SS2D(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchStem(nn.Module):
    """VMamba v0 stem: a 4x4 stride-4 conv and LayerNorm. (B, C_in, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class ConvStem(nn.Module):
    """VMamba v2 stem: conv3x3 s2 to C/2, LN, GELU, conv3x3 s2 to C, LN. (B, C_in, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = LayerNorm2d(dim // 2, eps=1e-5)  # the official LayerNorm2d keeps nn.LayerNorm's eps (timm: 1e-6)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.act(self.norm1(self.conv1(x))))
        return self.norm2(x.permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """VMamba v3 downsample: conv3x3 stride 2 and LayerNorm. (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(conv_nhwc(self.conv, x))


def stem_layer(kind: str) -> Callable[[int, int], nn.Module]:
    """VMamba's stride-4 stem by name: "conv" (``ConvStem``; v2, MSVMamba v3) or "patch" (``PatchStem``, 4x4
    patchify; v0, MSVMamba v1). Called with (in_chans, dim); (B, C_in, H, W) -> (B, H/4, W/4, dim)."""
    return _pick("stem", kind, {"conv": ConvStem, "patch": PatchStem}, "'conv' (two conv3x3 stride 2) or 'patch' (4x4)")


def downsample_layer(kind: str) -> Callable[[int, int], nn.Module]:
    """VMamba's downsample between stages by name: "conv" (``ConvDownsample``; v2, MSVMamba v3) or "merge" (Swin's 2x2
    patch merging; v0, MSVMamba v1). Called with (in_dim, out_dim); (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""
    layers = {"conv": ConvDownsample, "merge": PatchMerging}
    return _pick("downsample", kind, layers, "'conv' (conv3x3 stride 2) or 'merge' (2x2 patch merging)")


def _pick(what: str, kind: str, layers: dict[str, Callable], choices: str) -> Callable:
    if kind not in layers:
        raise ValueError(f"unknown {what} {kind!r}; use {choices}")
    return layers[kind]
