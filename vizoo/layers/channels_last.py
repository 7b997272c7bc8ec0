"""Convolutions inside channel-last (B, H, W, C) models."""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_nhwc(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (a Conv2d or a stack of them, NCHW in and out) applied to a channel-last map: (B, H, W, C) -> (B, H',
    W', C').

    The channel-last map seen as NCHW (a permuted view) makes torch run the convolution in channels-last memory format,
    which converts every weight stored in NCHW to that format again on each call. The input is made contiguous NCHW
    instead when it holds fewer numbers than the weights (late stages at small batch: a downsample's 3x3 weights
    outweigh its 14 x 14 input many times); otherwise the weights are converted, and early, large maps keep the faster
    channels-last convolution. The result is the same either way.
    """
    weights = sum(p.numel() for p in conv.parameters() if p.dim() == 4)
    x = x.permute(0, 3, 1, 2)
    if x.numel() < weights:
        x = x.contiguous()
    return conv(x).permute(0, 2, 3, 1)
