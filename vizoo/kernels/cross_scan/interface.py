"""``cross_scan`` / ``cross_merge``: VMamba's four routes over a 2D map, in channel-first or channel-last layout.

``cross_merge`` is the adjoint of ``cross_scan`` (each is the other's backward), so
``<cross_scan(x), y> == <x, cross_merge(y)>``. ``route_order`` reads one map per route, each along its own route.
"""

from __future__ import annotations

import torch

from vizoo.kernels.backend import pick_backend
from vizoo.kernels.cross_scan.reference import cross_merge_reference, cross_scan_reference, route_order_reference
from vizoo.kernels.cross_scan.torch_ops import cross_merge_torch, cross_scan_torch, route_order_torch


def cross_scan_triton(*args, **kwargs):
    """The Triton kernel, imported on first use (the module needs triton)."""
    from vizoo.kernels.cross_scan.triton import cross_scan_triton

    return cross_scan_triton(*args, **kwargs)


def cross_merge_triton(*args, **kwargs):
    """The Triton kernel, imported on first use (the module needs triton)."""
    from vizoo.kernels.cross_scan.triton import cross_merge_triton

    return cross_merge_triton(*args, **kwargs)


# Every backend takes the channel-first view and ``out_channel_first``; Triton writes either layout directly.
SCAN_BACKENDS = {"reference": cross_scan_reference, "torch": cross_scan_torch, "triton": cross_scan_triton}
MERGE_BACKENDS = {"reference": cross_merge_reference, "torch": cross_merge_torch, "triton": cross_merge_triton}
# route_order moves small per-route tensors (SS2D's B, C and step-size ranks); the torch ops serve the Triton backend.
ORDER_BACKENDS = {"reference": route_order_reference, "torch": route_order_torch, "triton": route_order_torch}


def cross_scan(
    x: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Read a map along the four routes (row-major, column-major, and both reversed).

    Args:
        x: (b, c, h, w) if ``in_channel_first`` else (b, h, w, c).
        out_channel_first: return (b, 4, c, h·w) if True, else (b, h·w, 4, c) (Triton writes it contiguous; the
            torch paths return a permuted view).
        backend: "reference", "torch", "triton" or None (see ``vizoo.kernels.backend``).
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan: expected a 4-D map, got shape {tuple(x.shape)}")
    impl = pick_backend("cross_scan", SCAN_BACKENDS, backend, x.device)
    return impl(x if in_channel_first else x.permute(0, 3, 1, 2), out_channel_first)


def cross_merge(
    y: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Sum the four routes' outputs back onto the map.

    Args:
        y: (b, 4, c, h, w) if ``in_channel_first`` else (b, h, w, 4, c); ``y[:, k]`` flattened over (h, w) is route
            k's sequence, whatever the route's own visiting order.
        out_channel_first: return (b, c, h·w) if True, else (b, h·w, c).
    """
    if y.dim() != 5 or y.shape[1 if in_channel_first else 3] != 4:
        raise ValueError(f"cross_merge: expected (b, 4, c, h, w) or (b, h, w, 4, c), got shape {tuple(y.shape)}")
    impl = pick_backend("cross_merge", MERGE_BACKENDS, backend, y.device)
    return impl(y if in_channel_first else y.permute(0, 3, 4, 1, 2), out_channel_first)


def route_order(maps: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(b, 4, c, h, w) one map per route -> (b, 4, c, h·w): map k read along route k (route order).

    SS2D projects the map once per route in pixel order, then puts each route's small projection in its route order.
    """
    if maps.dim() != 5 or maps.shape[1] != 4:
        raise ValueError(f"route_order: expected (b, 4, c, h, w), got shape {tuple(maps.shape)}")
    return pick_backend("route_order", ORDER_BACKENDS, backend, maps.device)(maps)
