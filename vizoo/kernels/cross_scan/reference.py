"""Cross-scan routes as explicit index lists: the specification of VMamba's four 2D scan orders."""

from __future__ import annotations

import torch

NUM_ROUTES = 4


def cross_scan_routes(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(4, H·W) long tensor: entry [k, t] is the row-major pixel index visited at step t of route k.

    Routes: 0 row-major, 1 column-major, 2 row-major reversed, 3 column-major reversed.
    """
    row_major = torch.arange(height * width, device=device)
    col_major = row_major.view(height, width).t().reshape(-1)
    return torch.stack([row_major, col_major, row_major.flip(0), col_major.flip(0)])


def cross_scan_reference(x: torch.Tensor, out_channel_first: bool = True) -> torch.Tensor:
    """(b, c, h, w) -> (b, 4, c, h·w): the image read along each route ((b, h·w, 4, c) if not out_channel_first)."""
    routes = cross_scan_routes(x.shape[2], x.shape[3], x.device)
    xs = x.flatten(2)[:, :, routes].transpose(1, 2)
    return xs if out_channel_first else xs.permute(0, 3, 1, 2)


def cross_merge_reference(y: torch.Tensor, out_channel_first: bool = True) -> torch.Tensor:
    """(b, 4, c, h, w) route-ordered outputs -> (b, c, h·w): each route's output put back at its pixels and summed
    ((b, h·w, c) if not out_channel_first)."""
    b, k, c, h, w = y.shape
    routes = cross_scan_routes(h, w, y.device)
    out = y.new_zeros(b, c, h * w)
    for route in range(k):
        out = out.index_add(-1, routes[route], y[:, route].flatten(-2))
    return out if out_channel_first else out.transpose(1, 2)


def route_order_reference(maps: torch.Tensor) -> torch.Tensor:
    """(b, 4, c, h, w) one map per route -> (b, 4, c, h·w): map k read along route k."""
    routes = cross_scan_routes(maps.shape[-2], maps.shape[-1], maps.device)
    return torch.stack([maps[:, k].flatten(-2)[..., routes[k]] for k in range(NUM_ROUTES)], dim=1)
