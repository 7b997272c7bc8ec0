"""MSVMamba's multi-scale route (Shi et al., "Multi-Scale VMamba", NeurIPS 2024, arXiv 2405.14174).

One route reads the full-resolution map row by row; three routes read a half-resolution map (row-major reversed,
column-major, column-major reversed). The four are concatenated into one sequence of length ``H·W + 3·h·w``:

    [ full row-major (H·W) | low row-major reversed (h·w) | low column-major (h·w) | low column-major reversed (h·w) ]

``multiscale_merge`` is the adjoint (and the backward) of ``multiscale_scan``: it puts every position of a sequence
back at its pixel and sums the three low-resolution routes, so ``<scan(x, x_low), y> == <x, m> + <x_low, m_low>``
for ``(m, m_low) = merge(y, ...)``. Upsampling the low-resolution result is the layer's business.

``reference`` gathers with explicit index lists (the specification); ``torch`` uses flips and ``column_major``
(exportable).
"""

from __future__ import annotations

import torch

from vizoo.kernels.backend import pick_backend
from vizoo.kernels.cross_scan.torch_ops import column_major, from_column_major

NUM_LOW_ROUTES = 3


def multiscale_routes(
    height: int, width: int, low_height: int, low_width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(H·W + 3·h·w,) long tensor: entry t is the index, in ``cat([x.flatten(), x_low.flatten()])``, visited at t."""
    full = torch.arange(height * width, device=device)
    low = torch.arange(low_height * low_width, device=device) + height * width
    low_cols = low.view(low_height, low_width).t().reshape(-1)
    return torch.cat([full, low.flip(0), low_cols, low_cols.flip(0)])


def _check_scan(x: torch.Tensor, x_low: torch.Tensor) -> None:
    if x.dim() != 4 or x_low.dim() != 4 or x.shape[:2] != x_low.shape[:2]:
        raise ValueError(
            "multiscale_scan: expected two (b, c, h, w) maps with the same batch and channels, got "
            f"{tuple(x.shape)} and {tuple(x_low.shape)}"
        )


def _check_merge(y: torch.Tensor, size: tuple[int, int], low_size: tuple[int, int]) -> None:
    expected = size[0] * size[1] + NUM_LOW_ROUTES * low_size[0] * low_size[1]
    if y.dim() != 3 or y.shape[-1] != expected:
        raise ValueError(
            f"multiscale_merge: expected (b, c, H·W + 3·h·w = {expected}) for size {tuple(size)} and low_size "
            f"{tuple(low_size)}, got {tuple(y.shape)}"
        )


def multiscale_scan_reference(x: torch.Tensor, x_low: torch.Tensor) -> torch.Tensor:
    routes = multiscale_routes(*x.shape[2:], *x_low.shape[2:], device=x.device)
    return torch.cat([x.flatten(2), x_low.flatten(2)], dim=-1)[..., routes]


def multiscale_merge_reference(
    y: torch.Tensor, size: tuple[int, int], low_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    full = size[0] * size[1]
    routes = multiscale_routes(*size, *low_size, device=y.device)
    out = y.new_zeros(*y.shape[:2], full + low_size[0] * low_size[1]).index_add(-1, routes, y)
    return out[..., :full].unflatten(-1, size), out[..., full:].unflatten(-1, low_size)


def multiscale_scan_torch(x: torch.Tensor, x_low: torch.Tensor) -> torch.Tensor:
    rows = x_low.flatten(2)
    cols = column_major(x_low)
    return torch.cat([x.flatten(2), rows.flip(-1), cols, cols.flip(-1)], dim=-1)


def multiscale_merge_torch(
    y: torch.Tensor, size: tuple[int, int], low_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    lh, lw = low_size
    full, low = h * w, lh * lw
    rows_rev = y[..., full : full + low]
    cols = y[..., full + low : full + 2 * low] + y[..., full + 2 * low :].flip(-1)
    y_low = rows_rev.flip(-1).unflatten(-1, (lh, lw)) + from_column_major(cols, lh, lw)
    return y[..., :full].unflatten(-1, (h, w)), y_low


# Pure data movement: the torch path also serves "triton" (a kernel would not beat one cat of four views).
SCAN_BACKENDS = {
    "reference": multiscale_scan_reference,
    "torch": multiscale_scan_torch,
    "triton": multiscale_scan_torch,
}
MERGE_BACKENDS = {
    "reference": multiscale_merge_reference,
    "torch": multiscale_merge_torch,
    "triton": multiscale_merge_torch,
}


def multiscale_scan(x: torch.Tensor, x_low: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(b, c, H, W) full map and (b, c, h, w) low-resolution map -> (b, c, H·W + 3·h·w) one sequence.

    Route 0 reads x row-major; routes 1-3 read x_low row-major reversed, column-major, column-major reversed.
    backend: "reference", "torch", "triton" (same as torch) or None.
    """
    _check_scan(x, x_low)
    return pick_backend("multiscale_scan", SCAN_BACKENDS, backend, x.device)(x, x_low)


def multiscale_merge(
    y: torch.Tensor, size: tuple[int, int], low_size: tuple[int, int], backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, c, H·W + 3·h·w) -> ((b, c, H, W), (b, c, h, w)): the full route put back on its map, the three
    low-resolution routes put back and summed. The adjoint of ``multiscale_scan``."""
    _check_merge(y, size, low_size)
    return pick_backend("multiscale_merge", MERGE_BACKENDS, backend, y.device)(y, size, low_size)
