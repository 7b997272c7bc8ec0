"""Cross-scan and cross-merge as Triton kernels, registered as the torch custom ops ``vizoo::cross_scan`` and
``vizoo::cross_merge``; each is the other's backward.

One kernel serves both: a program takes a block of channels and a tile of pixels in map order, and for each of the
four routes computes where those pixels sit along the route (``t`` below). ``cross_scan`` reads the tile once and
writes it to the four route positions; ``cross_merge`` reads the four route positions and writes their sum (fp32
accumulation). Tensors are addressed through their strides, so channel-first and channel-last layouts (and views)
are read and written in place. Square pixel tiles keep both the row-major and the column-major side of the
transposition in contiguous runs.

This module imports triton at import time; ``vizoo.kernels.backend`` imports it only when the Triton backend is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vizoo.kernels.selective_scan.triton import _NUM_WARPS, _check_device


@triton.jit
def _route_step(row_major, col_major, length, k: tl.constexpr):
    """Step at which route k (0 row-major, 1 column-major, 2 and 3 their reverses) visits each pixel."""
    t = row_major if k % 2 == 0 else col_major
    return length - 1 - t if k >= 2 else t


@triton.jit
def _cross_kernel(
    map_ptr, sm_b, sm_c, sm_h, sm_w,
    seq_ptr, ss_b, ss_k, ss_c, ss_t,
    channels, height, width,
    MERGE: tl.constexpr, BLOCK_C: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    """map (b, c, h, w) <-> seq (b, 4, c, h·w). MERGE: map = sum of the four routes of seq; else seq = routes of map."""
    pid_b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tiles_w = tl.cdiv(width, TILE)
    r = tl.arange(0, TILE * TILE)
    i = (tl.program_id(2) // tiles_w) * TILE + r // TILE
    j = (tl.program_id(2) % tiles_w) * TILE + r % TILE
    mask = (c < channels)[:, None] & ((i < height) & (j < width))[None, :]
    length = height * width
    row_major, col_major = i * width + j, j * height + i
    map_ptrs = map_ptr + pid_b * sm_b + c[:, None] * sm_c + (i * sm_h + j * sm_w)[None, :]
    seq_base = seq_ptr + pid_b * ss_b + c[:, None] * ss_c
    if MERGE:
        acc = tl.zeros((BLOCK_C, TILE * TILE), dtype=tl.float32)
        for k in tl.static_range(4):
            t = _route_step(row_major, col_major, length, k)
            acc += tl.load(seq_base + k * ss_k + (t * ss_t)[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(map_ptrs, acc.to(map_ptr.dtype.element_ty), mask=mask)
    else:
        x = tl.load(map_ptrs, mask=mask, other=0.0)
        for k in tl.static_range(4):
            t = _route_step(row_major, col_major, length, k)
            tl.store(seq_base + k * ss_k + (t * ss_t)[None, :], x.to(seq_ptr.dtype.element_ty), mask=mask)


def _launch(map_view: Tensor, seq_view: Tensor, merge: bool) -> None:
    """map_view (b, c, h, w) and seq_view (b, 4, c, h·w), any strides."""
    _check_device(map_view)
    b, c, h, w = map_view.shape
    channel_last = map_view.stride(1) == 1 and c > 1
    block_c = min(triton.next_power_of_2(c), 32 if channel_last else 8)
    tile = 8 if channel_last else 16  # BLOCK_C x TILE² = 2048 elements either way
    grid = (b, triton.cdiv(c, block_c), triton.cdiv(h, tile) * triton.cdiv(w, tile))
    _cross_kernel[grid](
        map_view, *map_view.stride(), seq_view, *seq_view.stride(), c, h, w,
        MERGE=merge, BLOCK_C=block_c, TILE=tile, num_warps=_NUM_WARPS,
    )  # fmt: skip


def _map_view(t: Tensor, height: int, width: int, channel_last: bool) -> Tensor:
    """(b, c, l) or (b, l, c) -> (b, c, h, w) view."""
    return t.unflatten(1, (height, width)).permute(0, 3, 1, 2) if channel_last else t.unflatten(2, (height, width))


def _seq_view(t: Tensor, channel_last: bool) -> Tensor:
    """(b, 4, c, l) or (b, l, 4, c) -> (b, 4, c, l) view."""
    return t.permute(0, 2, 3, 1) if channel_last else t


@torch.library.custom_op("vizoo::cross_scan", mutates_args=())
def _cross_scan(x: Tensor, channel_last_out: bool) -> Tensor:
    """x (b, c, h, w) any strides -> (b, 4, c, h·w), or (b, h·w, 4, c) if ``channel_last_out``."""
    b, c, h, w = x.shape
    out = x.new_empty((b, h * w, 4, c) if channel_last_out else (b, 4, c, h * w))
    _launch(x, _seq_view(out, channel_last_out), merge=False)
    return out


@_cross_scan.register_fake
def _(x, channel_last_out):
    b, c, h, w = x.shape
    return x.new_empty((b, h * w, 4, c) if channel_last_out else (b, 4, c, h * w))


@torch.library.custom_op("vizoo::cross_merge", mutates_args=())
def _cross_merge(y: Tensor, channel_last_out: bool) -> Tensor:
    """y (b, 4, c, h, w) any strides -> (b, c, h·w), or (b, h·w, c) if ``channel_last_out``."""
    b, _, c, h, w = y.shape
    out = y.new_empty((b, h * w, c) if channel_last_out else (b, c, h * w))
    _launch(_map_view(out, h, w, channel_last_out), y.flatten(3), merge=True)
    return out


@_cross_merge.register_fake
def _(y, channel_last_out):
    b, _, c, h, w = y.shape
    return y.new_empty((b, h * w, c) if channel_last_out else (b, c, h * w))


def _save_shape(ctx, inputs, output):
    ctx.shape, ctx.channel_last_out = inputs[0].shape, inputs[1]
    ctx.channel_last_in = inputs[0].stride(-3) == 1  # the channel axis of x (b, c, h, w) or y (b, 4, c, h, w)


def _cross_scan_backward(ctx, grad):
    """Gradient of cross_scan: merge the routes' gradients, in x's memory layout."""
    b, c, h, w = ctx.shape
    seq = _seq_view(grad, ctx.channel_last_out).unflatten(-1, (h, w))
    return _map_view(_cross_merge(seq, ctx.channel_last_in), h, w, ctx.channel_last_in), None


def _cross_merge_backward(ctx, grad):
    """Gradient of cross_merge: read the map's gradient along the four routes."""
    b, _, c, h, w = ctx.shape
    return _cross_scan(_map_view(grad, h, w, ctx.channel_last_out), False).unflatten(-1, (h, w)), None


_cross_scan.register_autograd(_cross_scan_backward, setup_context=_save_shape)
_cross_merge.register_autograd(_cross_merge_backward, setup_context=_save_shape)


def cross_scan_triton(x: Tensor, out_channel_first: bool = True) -> Tensor:
    """(b, c, h, w) (any strides) -> (b, 4, c, h·w), or (b, h·w, 4, c) when not ``out_channel_first``."""
    return _cross_scan(x, not out_channel_first)


def cross_merge_triton(y: Tensor, out_channel_first: bool = True) -> Tensor:
    """(b, 4, c, h, w) (any strides) -> (b, c, h·w), or (b, h·w, c) when not ``out_channel_first``."""
    return _cross_merge(y, not out_channel_first)
