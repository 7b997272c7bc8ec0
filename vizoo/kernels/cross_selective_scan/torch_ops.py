"""The fused cross-selective-scan as the torch kernels composed: exportable, any device."""

from __future__ import annotations

import torch

from vizoo.kernels.cross_scan.reference import NUM_ROUTES
from vizoo.kernels.cross_scan.torch_ops import cross_merge_torch, cross_scan_torch
from vizoo.kernels.selective_scan.chunked import selective_scan_chunked


def cross_selective_scan_torch(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    out_fp32: bool = False,
    out_channel_first: bool = True,
) -> torch.Tensor:
    """Same contract as ``cross_selective_scan_reference``."""
    d, h, w = x.shape[1:]
    xs = cross_scan_torch(x.float() if out_fp32 else x)  # (b, 4, d, l)
    ys = selective_scan_chunked(xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, delta_bias, delta_softplus)
    return cross_merge_torch(ys.unflatten(1, (NUM_ROUTES, d)).unflatten(-1, (h, w)), out_channel_first)
