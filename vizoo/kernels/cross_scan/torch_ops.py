"""Cross-scan with flips and column reads: the fast, exportable torch path; ``column_major`` and its inverse serve
every route that reads a map column by column."""

from __future__ import annotations

import torch

from vizoo.kernels.backend import is_exporting


def cross_scan_torch(x: torch.Tensor, out_channel_first: bool = True) -> torch.Tensor:
    """(b, c, h, w) -> (b, 4, c, h·w), or a (b, h·w, 4, c) view if not out_channel_first."""
    rows_cols = torch.stack([x.flatten(2), column_major(x)], dim=1)
    xs = torch.cat([rows_cols, rows_cols.flip(-1)], dim=1)
    return xs if out_channel_first else xs.permute(0, 3, 1, 2)


def cross_merge_torch(y: torch.Tensor, out_channel_first: bool = True) -> torch.Tensor:
    """(b, 4, c, h, w) -> (b, c, h·w), or (b, h·w, c) if not out_channel_first.

    The sum is formed channel-last: the routes go to (l, c) layout in one transpose, after which flipping a route and
    turning column-major order back into row-major move whole pixels (contiguous runs of c values). onnxruntime runs
    those moves as contiguous copies, while the per-channel [0, 1, 3, 2] Transpose of small (h, w) maps that a
    channel-first sum needs copies value by value; ``tools/benchmark_onnx.py --profile`` shows the time per op type.
    """
    b, _, c, h, w = y.shape
    forward, reverse = y.flatten(3).transpose(2, 3).split(2, dim=1)  # (b, 2, l, c) each: the row and column routes
    rows, cols = (forward + reverse.flip(2)).unbind(1)  # (b, l, c) each, cols in column-major order
    out = rows + cols.unflatten(1, (w, h)).transpose(1, 2).flatten(1, 2)
    return out.transpose(1, 2) if out_channel_first else out


def route_order_torch(maps: torch.Tensor) -> torch.Tensor:
    """(b, 4, c, h, w) one map per route -> (b, 4, c, h·w): map k read along route k."""
    rows = maps[:, 0::2].flatten(-2)  # routes 0 and 2 read rows
    cols = column_major(maps[:, 1::2])  # routes 1 and 3 read columns
    forward, reverse = torch.stack([rows, cols], dim=2).unbind(1)  # each (b, 2, c, l): row route, column route
    return torch.cat([forward, reverse.flip(-1)], dim=1)


def column_major(x: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (..., w·h): the map read column by column.

    Eager PyTorch takes one strided copy, its fastest form. While exporting, the columns are cut off and put end to
    end instead (one Split and one Concat in ONNX): onnxruntime is slow at a Transpose of the last two axes of small
    maps (one small transpose per channel), and the Split/Concat moves whole columns. The two forms give the same
    values; ``tools/benchmark_onnx.py --profile`` shows the time per op type.
    """
    if is_exporting():
        return torch.cat(x.split(1, dim=-1), dim=-2).flatten(-2)
    return x.transpose(-1, -2).flatten(-2)


def from_column_major(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``column_major``: (..., w·h) in column-major order -> (..., h, w). While exporting, the
    column-major read of the (w, h) map that ``y`` holds gives it back row by row."""
    if is_exporting():
        return column_major(y.unflatten(-1, (width, height))).unflatten(-1, (height, width))
    return y.unflatten(-1, (width, height)).transpose(-1, -2)
