"""Folding eval-mode BatchNorm into the convolution or linear layer next to it, for deployment.

An eval-mode BatchNorm is a per-channel affine map ``y = scale · x + shift``; after a conv it folds into the conv's
weights and bias, before a dense 1x1 conv or a linear layer into that layer's input side. Every function returns a new
layer whose eval output equals the pair's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.efficientvit_msra import ConvNorm

__all__ = [
    "batchnorm_scale_shift",
    "bn_scale_shift",
    "fuse_bn_conv1x1",
    "fuse_bn_linear",
    "fuse_conv_bn",
    "fuse_conv_norms",
]


def batchnorm_scale_shift(
    weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm with these tensors as ``y = scale · x + shift``, per channel."""
    scale = weight / torch.sqrt(running_var + eps)
    return scale, bias - running_mean * scale


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``batchnorm_scale_shift`` of a BatchNorm module."""
    return batchnorm_scale_shift(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to ``bn(conv(x))`` in eval mode."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(conv.weight)
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


@torch.no_grad()
def fuse_bn_conv1x1(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """A 1x1 conv with bias equal to ``conv(bn(x))`` in eval mode (exact: a 1x1 conv has no padding)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("only a dense 1x1 conv can absorb the BatchNorm before it")
    scale, shift = bn_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=True).to(conv.weight)
    fused.weight.copy_(conv.weight * scale[None, :, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels).to(conv.weight)
    fused.bias.copy_(bias + conv.weight.flatten(1) @ shift)
    return fused


@torch.no_grad()
def fuse_bn_linear(bn: nn.modules.batchnorm._BatchNorm, linear: nn.Linear) -> nn.Linear:
    """A linear layer equal to ``linear(bn(x))`` in eval mode; also ``linear(pool(bn(x)))`` for a BatchNorm2d and
    an average pool, which commute with the per-channel affine map."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features).to(linear.weight)
    fused.weight.copy_(linear.weight * scale)
    bias = linear.bias if linear.bias is not None else torch.zeros_like(fused.bias)
    fused.bias.copy_(bias + linear.weight @ shift)
    return fused


@torch.no_grad()
def fuse_conv_norms(module: nn.Module) -> None:
    """Replace, in place, every timm ``ConvNorm`` (conv + BatchNorm) inside ``module`` by its fused conv."""
    for name, child in module.named_children():
        if isinstance(child, ConvNorm):
            setattr(module, name, fuse_conv_bn(child.conv, child.bn))
        else:
            fuse_conv_norms(child)
