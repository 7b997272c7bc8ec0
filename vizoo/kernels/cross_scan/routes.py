"""Scan routes beyond VMamba's four: unidirectional, bidirectional and atrous (EfficientVMamba's ES2D).

Each route is a pair: ``<route>_scan`` reads a map (or a sequence) into K route-ordered sequences, (b, K, c, L), and
``<route>_merge`` puts K route outputs back at their pixels and sums them. The merge is the adjoint of the scan,
``<scan(x), y> == <x, merge(y)>``, so each is the other's backward and autograd needs no custom function.

- unidirectional (K=1): row-major order. Takes a (b, c, h, w) map or a (b, c, l) sequence.
- bidirectional (K=2): row-major and its reverse (Vim's forward/backward Mamba; MobileMamba's two-route SS2D).
  Takes a map or a sequence.
- atrous (K=4, EfficientVMamba's ES2D): the map is zero-padded to even height and width, then each of the four phases
  of the stride-2 lattice is one route of length ceil(h/2)·ceil(w/2): phase (row 0, col 0) row-major, (1, 0)
  column-major, (0, 1) row-major, (1, 1) column-major. No reversals. The merge scatters each phase back and crops the
  padding, so every pixel gets exactly one route's output.

Backends: ``"reference"`` (explicit index lists, the specification) and ``"torch"`` (slices, flips, transposes,
``column_major`` reads and reshapes: exportable, no scatter). The routes move data only; they cost no MACs and are not
counted. Triton is not used: each route is one strided copy that the torch path already does at memory speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vizoo.kernels.backend import pick_backend
from vizoo.kernels.cross_scan.torch_ops import column_major, from_column_major

__all__ = [
    "atrous_merge",
    "atrous_routes",
    "atrous_scan",
    "bidirectional_merge",
    "bidirectional_scan",
    "unidirectional_merge",
    "unidirectional_scan",
]


# ---------------------------------------------------------------------------------------------------------------------
# Specification: index lists


def linear_routes(length: int, reverse: bool, device: torch.device | str | None = None) -> torch.Tensor:
    """(K, length) long: entry [k, t] is the row-major index read at step t of route k (K=2 with the reverse)."""
    order = torch.arange(length, device=device)
    return torch.stack([order, order.flip(0)]) if reverse else order[None]


def atrous_routes(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(4, ceil(h/2)·ceil(w/2)) long: entry [k, t] is the row-major index, in the map padded to even size, of step t
    of atrous route k. Routes: phase (0,0) row-major, (1,0) column-major, (0,1) row-major, (1,1) column-major."""
    hp, wp = height + height % 2, width + width % 2
    grid = torch.arange(hp * wp, device=device).view(hp, wp)
    return torch.stack(
        [
            grid[0::2, 0::2].reshape(-1),
            grid[1::2, 0::2].t().reshape(-1),
            grid[0::2, 1::2].reshape(-1),
            grid[1::2, 1::2].t().reshape(-1),
        ]
    )


def _linear_scan_reference(x: torch.Tensor, reverse: bool) -> torch.Tensor:
    x = x.flatten(2)
    return x[:, :, linear_routes(x.shape[-1], reverse, x.device)].transpose(1, 2)


def _linear_merge_reference(y: torch.Tensor, reverse: bool) -> torch.Tensor:
    b, k, c, length = y.shape
    routes = linear_routes(length, reverse, y.device)
    out = y.new_zeros(b, c, length)
    for route in range(k):
        out = out.index_add(-1, routes[route], y[:, route])
    return out


def _atrous_scan_reference(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, w % 2, 0, h % 2)).flatten(2)
    return padded[:, :, atrous_routes(h, w, x.device)].transpose(1, 2)


def _atrous_merge_reference(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, k, c, _ = y.shape
    hp, wp = height + height % 2, width + width % 2
    routes = atrous_routes(height, width, y.device)
    out = y.new_zeros(b, c, hp * wp)
    for route in range(k):
        out = out.index_add(-1, routes[route], y[:, route])
    return out.view(b, c, hp, wp)[:, :, :height, :width].flatten(2)


# ---------------------------------------------------------------------------------------------------------------------
# Torch path: slices and reshapes


def _flip_sequence(x: torch.Tensor) -> torch.Tensor:
    """(b, c, L) reversed along L, the flip taken in (L, c) layout, where it moves whole pixels (runs of c values).

    onnxruntime runs a reversing Slice of the last axis (one value at a time) several times slower than the two 2-D
    transposes and the row flip; for channel-last input the first transpose cancels the caller's.
    """
    return x.transpose(1, 2).flip(1).transpose(1, 2)


def _linear_scan_torch(x: torch.Tensor, reverse: bool) -> torch.Tensor:
    x = x.flatten(2)
    return torch.stack([x, _flip_sequence(x)], dim=1) if reverse else x.unsqueeze(1)


def _linear_merge_torch(y: torch.Tensor, reverse: bool) -> torch.Tensor:
    return y[:, 0] + y[:, 1].flip(-1) if reverse else y[:, 0]


def _atrous_scan_torch(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = F.pad(x, (0, w % 2, 0, h % 2))
    rows = torch.stack([x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]], dim=1).flatten(3)  # phases (0,0), (0,1)
    cols = column_major(torch.stack([x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]], dim=1))  # phases (1,0), (1,1)
    return torch.stack([rows, cols], dim=2).flatten(1, 2)  # route order: (0,0), (1,0), (0,1), (1,1)


def _atrous_merge_torch(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, _, c, _ = y.shape
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    rows = y[:, 0::2].unflatten(-1, (h2, w2))  # (b, 2, c, h2, w2): phases (0,0), (0,1)
    cols = from_column_major(y[:, 1::2], h2, w2)  # phases (1,0), (1,1)
    # Interleave columns (phase col 0 / 1) then rows (phase row 0 / 1): (b, c, h2, 2, w2, 2) -> (b, c, 2·h2, 2·w2).
    even_rows = torch.stack([rows[:, 0], rows[:, 1]], dim=-1).flatten(-2)
    odd_rows = torch.stack([cols[:, 0], cols[:, 1]], dim=-1).flatten(-2)
    full = torch.stack([even_rows, odd_rows], dim=-2).reshape(b, c, 2 * h2, 2 * w2)
    return full[:, :, :height, :width].reshape(b, c, height * width)


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def _scan_impls(spec, fast) -> dict:
    return {"reference": spec, "torch": fast}


_UNI_SCAN = _scan_impls(lambda x: _linear_scan_reference(x, False), lambda x: _linear_scan_torch(x, False))
_UNI_MERGE = _scan_impls(lambda y: _linear_merge_reference(y, False), lambda y: _linear_merge_torch(y, False))
_BI_SCAN = _scan_impls(lambda x: _linear_scan_reference(x, True), lambda x: _linear_scan_torch(x, True))
_BI_MERGE = _scan_impls(lambda y: _linear_merge_reference(y, True), lambda y: _linear_merge_torch(y, True))
_ATROUS_SCAN = _scan_impls(_atrous_scan_reference, _atrous_scan_torch)
_ATROUS_MERGE = _scan_impls(_atrous_merge_reference, _atrous_merge_torch)


def _channel_first_input(x: torch.Tensor, op: str, in_channel_first: bool, allow_sequence: bool) -> torch.Tensor:
    dims = (3, 4) if allow_sequence else (4,)
    if x.dim() not in dims:
        what = "a (b, c, h, w) map or a (b, c, l) sequence" if allow_sequence else "a 4-D (b, c, h, w) map"
        raise ValueError(f"{op}: expected {what} (channel-last with in_channel_first=False), got {tuple(x.shape)}")
    return x if in_channel_first else x.movedim(-1, 1)


def _routes_input(y: torch.Tensor, op: str, k: int, in_channel_first: bool) -> torch.Tensor:
    if y.dim() != 4 or y.shape[1 if in_channel_first else 2] != k:
        layout = f"(b, {k}, c, l)" if in_channel_first else f"(b, l, {k}, c)"
        raise ValueError(f"{op}: expected route outputs of shape {layout}, got {tuple(y.shape)}")
    return y if in_channel_first else y.permute(0, 2, 3, 1)


def _out(t: torch.Tensor, out_channel_first: bool) -> torch.Tensor:
    """(b, K, c, l) -> itself or a (b, l, K, c) view; (b, c, l) -> itself or a (b, l, c) view."""
    if out_channel_first:
        return t
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t.transpose(1, 2)


def unidirectional_scan(
    x: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Read a map (b, c, h, w) or sequence (b, c, l) in row-major order: (b, 1, c, L), or (b, L, 1, c) if not
    ``out_channel_first``. Channel-last input ((b, h, w, c) or (b, l, c)) with ``in_channel_first=False``."""
    x = _channel_first_input(x, "unidirectional_scan", in_channel_first, allow_sequence=True)
    return _out(pick_backend("unidirectional_scan", _UNI_SCAN, backend, x.device)(x), out_channel_first)


def unidirectional_merge(
    y: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Adjoint of ``unidirectional_scan``: (b, 1, c, L) (or (b, L, 1, c)) -> (b, c, L) (or (b, L, c))."""
    y = _routes_input(y, "unidirectional_merge", 1, in_channel_first)
    return _out(pick_backend("unidirectional_merge", _UNI_MERGE, backend, y.device)(y), out_channel_first)


def bidirectional_scan(
    x: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Read a map (b, c, h, w) or sequence (b, c, l) row-major and reversed: (b, 2, c, L), route 1 = route 0 flipped
    ((b, L, 2, c) if not ``out_channel_first``; channel-last input with ``in_channel_first=False``)."""
    x = _channel_first_input(x, "bidirectional_scan", in_channel_first, allow_sequence=True)
    return _out(pick_backend("bidirectional_scan", _BI_SCAN, backend, x.device)(x), out_channel_first)


def bidirectional_merge(
    y: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Adjoint of ``bidirectional_scan``: ``y[:, 0] + y[:, 1].flip(-1)``, (b, 2, c, L) -> (b, c, L) (channel-last
    (b, L, 2, c) -> (b, L, c) with the flags)."""
    y = _routes_input(y, "bidirectional_merge", 2, in_channel_first)
    return _out(pick_backend("bidirectional_merge", _BI_MERGE, backend, y.device)(y), out_channel_first)


def atrous_scan(
    x: torch.Tensor, in_channel_first: bool = True, out_channel_first: bool = True, backend: str | None = None
) -> torch.Tensor:
    """EfficientVMamba's ES2D: (b, c, h, w) -> (b, 4, c, ceil(h/2)·ceil(w/2)), one route per stride-2 phase
    (see ``atrous_routes``); odd sizes are zero-padded at the bottom/right. ``in_channel_first=False`` takes
    (b, h, w, c); ``out_channel_first=False`` returns a (b, L, 4, c) view."""
    x = _channel_first_input(x, "atrous_scan", in_channel_first, allow_sequence=False)
    return _out(pick_backend("atrous_scan", _ATROUS_SCAN, backend, x.device)(x), out_channel_first)


def atrous_merge(
    y: torch.Tensor,
    height: int,
    width: int,
    in_channel_first: bool = True,
    out_channel_first: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Adjoint of ``atrous_scan`` for an (height, width) map: (b, 4, c, L) -> (b, c, height·width), each route's
    outputs put back at its phase's pixels and the padding dropped ((b, L, 4, c) -> (b, h·w, c) with the flags)."""
    y = _routes_input(y, "atrous_merge", 4, in_channel_first)
    expected = ((height + 1) // 2) * ((width + 1) // 2)
    if y.shape[-1] != expected:
        raise ValueError(
            f"atrous_merge: a {height}x{width} map has routes of length {expected}, got {y.shape[-1]}; pass the "
            "height and width of the map given to atrous_scan"
        )
    impl = pick_backend("atrous_merge", _ATROUS_MERGE, backend, y.device)
    return _out(impl(y, height, width), out_channel_first)
