"""The fused cross-selective-scan specified as a composition of the reference kernels."""

from __future__ import annotations

import torch

from vizoo.kernels.cross_scan.reference import NUM_ROUTES, cross_merge_reference, cross_scan_reference
from vizoo.kernels.selective_scan.reference import selective_scan_reference


def cross_selective_scan_reference(
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
    delta_proj: torch.Tensor | None = None,
) -> torch.Tensor:
    """cross_scan(x), selective_scan over the 4·d route channels, cross_merge; shapes as ``cross_selective_scan``."""
    d, h, w = x.shape[1:]
    delta = full_rank_delta(delta, delta_proj)
    xs = cross_scan_reference(x.float() if out_fp32 else x)  # (b, 4, d, l)
    ys = selective_scan_reference(xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, delta_bias, delta_softplus)
    return cross_merge_reference(ys.unflatten(1, (NUM_ROUTES, d)).unflatten(-1, (h, w)), out_channel_first)


def full_rank_delta(delta: torch.Tensor, delta_proj: torch.Tensor | None) -> torch.Tensor:
    """Route-ordered step sizes (b, 4, d, l): ``delta_proj @ delta`` for low-rank (b, 4, r, l) input, else ``delta``."""
    return delta if delta_proj is None else torch.matmul(delta_proj, delta)  # (4, d, r) @ (b, 4, r, l)
