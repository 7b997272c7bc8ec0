"""Cross-scan with flips and transposes: the fast, exportable torch path."""

from __future__ import annotations

import torch


def cross_scan_torch(x: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, 4, c, h·w)."""
    rows_cols = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    return torch.cat([rows_cols, rows_cols.flip(-1)], dim=1)


def cross_merge_torch(y: torch.Tensor) -> torch.Tensor:
    """(b, 4, c, h, w) -> (b, c, h·w)."""
    b, _, c, h, w = y.shape
    y = y.flatten(3)
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)  # column-major order
    return rows + cols.view(b, c, w, h).transpose(2, 3).flatten(2)
