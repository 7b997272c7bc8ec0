"""``cross_scan`` / ``cross_merge``: VMamba's four routes over a 2D map, in channel-first or channel-last layout.

``cross_merge`` is the adjoint of ``cross_scan`` (each is the other's backward), so
``<cross_scan(x), y> == <x, cross_merge(y)>``.
"""

from __future__ import annotations

import torch

from vizoo.kernels.backend import pick_backend
from vizoo.kernels.cross_scan.reference import cross_merge_reference, cross_scan_reference
from vizoo.kernels.cross_scan.torch_ops import cross_merge_torch, cross_scan_torch

SCAN_BACKENDS = {"reference": cross_scan_reference, "torch": cross_scan_torch}
MERGE_BACKENDS = {"reference": cross_merge_reference, "torch": cross_merge_torch}


def cross_scan(
    x: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Read a map along the four routes (row-major, column-major, and both reversed).

    Args:
        x: (b, c, h, w) if ``in_channel_first`` else (b, h, w, c).
        out_channel_first: return (b, 4, c, h·w) if True, else (b, h·w, 4, c).
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan: expected a 4-D map, got shape {tuple(x.shape)}")
    impl = pick_backend("cross_scan", SCAN_BACKENDS, backend, x.device)
    xs = impl(x if in_channel_first else x.permute(0, 3, 1, 2))
    return xs if out_channel_first else xs.permute(0, 3, 1, 2)


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
    out = impl(y if in_channel_first else y.permute(0, 3, 4, 1, 2))
    return out if out_channel_first else out.transpose(1, 2)
