"""EfficientVMamba's layers (Pei et al., "EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba",
arXiv 2403.09977): the EVSS block and its channel attention. Channel-last (B, H, W, C).

Attribute names follow the official code (``classification/models/vmamba_efficient.py``: ``op``, ``conv_branch``,
``se``) so that checkpoints map by stage prefix only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath

from vizoo.layers.ss2d import SS2D


class GlobalChannelAttention(nn.Module):
    """The paper's channel attention (official ``BiAttn``, channel half only): ``x · σ(W2 GELU(W1 mean_hw(LN(x))))``.

    (B, H, W, C) -> (B, H, W, C); the reduction width is ``int(C · reduction_ratio)``.
    """

    def __init__(self, dim: int, reduction_ratio: float = 0.125):
        super().__init__()
        hidden = int(dim * reduction_ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.channel_select = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(x).mean((1, 2), keepdim=True)  # (B, 1, 1, C)
        return x * torch.sigmoid(self.channel_select(self.act(self.global_reduce(pooled))))


class EfficientVSSBlock(nn.Module):
    """EVSS block: ``x + DP(se(SS2D_atrous(LN(x))) + se(ConvBranch(LN(x))))``. (B, H, W, C) in and out.

    The global branch is SS2D on EfficientVMamba's atrous routes; the local branch is DW3x3-BN-GELU-1x1. One channel
    attention module (shared weights, as in the official code) re-weights both branches before they are summed.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, **ssm_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, routes="atrous", **ssm_kwargs)
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )
        self.se = GlobalChannelAttention(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        local = self.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.se(self.op(y)) + self.se(local))
