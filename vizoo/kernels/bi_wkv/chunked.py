"""Bi-WKV in plain torch ops: exportable (no loops, no data-dependent control flow), O(B·T·C·L) work and memory.

Each direction is an exclusive decayed sum over the tokens, ``h_t = Σ_{i<t} e^{k_i - (t-1-i)·w} (v_i, 1)`` (and its
mirror over i > t), computed by chunks of L items:

1. inside a chunk, as an (L, L) lower-triangular block with exact row maxima;
2. across chunks: an item i = cL + q seen from the next chunk's start has exponent ``k_i - (L-1-q)·w``; each chunk
   is summed once into a summary (its maximum and the sums scaled by it), the summaries are themselves an exclusive
   decayed sum with step L·w (the same function, one level up, until a single block holds them all), and the token
   at position p of its chunk reads its chunk's result with the extra exponent ``-p·w``.

Every sum is kept as (offset, sums scaled by exp(-offset)), the offset being the largest exponent it holds, so exp()
only sees non-positive arguments; large k and negative w (weights growing with distance) stay finite. The token divides
after rescaling its before part, its after part and its own term ``e^{u + k_t} v_t`` to their common maximum (the
largest exponent of its sum, to which ``EPS`` is relative, as in the reference). Offsets are detached (a shift
cancels in the ratio), so autograd differentiates only the true exponents. Work and memory are O(B·T·C·L) with L = 4:
autograd keeps the (L, L) blocks of every level.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from vizoo.kernels.bi_wkv.reference import EPS

# Exponent of padded items and of the pairs a block does not read: exp(_NEG - anything finite) is exactly 0 in fp32
# and, unlike -inf, never gives NaN in a subtraction or a gradient. A sum with nothing to read (the first item) gets an
# offset of about _NEG and finite sums, which the final combination scales by exp(_NEG - finite) = 0.
_NEG = -1e30


def chunk_length(n: int) -> int:
    """Items per chunk at each level (a function so tests can shrink it and cross chunk boundaries on short inputs)."""
    return 4


def _block(exps: Tensor, values: list[Tensor | None], step: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Exclusive decayed sums of n items (dim -2) as one (n, n) block: exps (..., n, C) exponents, values (..., n, C)
    each (None: ones), step (C,) the decay of one item. Returns the offsets (..., n, C) and the scaled sums."""
    n = exps.shape[-2]
    pos = torch.arange(n, device=exps.device)
    gap = (pos[:, None] - pos[None, :] - 1)[..., None]  # reader j, source j': items strictly between
    # (n, n, C): _NEG where j' is not read, added rather than selected (a constant: no Where node in an export)
    unread = (gap < 0).to(exps.dtype) * _NEG
    decay = unread - gap.clamp_min(0).to(exps.dtype) * step
    seen = exps.unsqueeze(-3) + decay  # (..., n reader, n source, C)
    offset = _max_items(seen.detach())
    weights = torch.exp(seen - offset.unsqueeze(-2))
    return offset, [_sum_items(weights if x is None else weights * x.unsqueeze(-3)) for x in values]


def _max_items(x: Tensor) -> Tensor:
    """Max over dim -2, whose few items (a chunk) are compared pairwise: NNAPI runs Max but not ReduceMax."""
    return functools.reduce(torch.maximum, [x.narrow(-2, i, 1) for i in range(x.shape[-2])]).squeeze(-2)


def _sum_items(x: Tensor) -> Tensor:
    """Sum over dim -2 as n · mean, n the item count (a power of two except in a last, short block): NNAPI
    runs ReduceMean but has no ReduceSum."""
    return x.mean(-2) * x.shape[-2]


def _exclusive_sums(exps: Tensor, values: list[Tensor | None], step: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``Σ_{j'<j} exp(exps_j' - (j-1-j')·step) values_j'`` for every item j, as (offset, sums scaled by exp(-offset)),
    chunk by chunk and recursively across chunks; shapes as ``_block``."""
    n = exps.shape[-2]
    size = chunk_length(n)
    if n <= size:
        return _block(exps, values, step)
    chunks = -(-n // size)
    pad = (0, 0, 0, chunks * size - n)
    exps = F.pad(exps, pad, value=_NEG).unflatten(-2, (chunks, size))
    values = [None if x is None else F.pad(x, pad).unflatten(-2, (chunks, size)) for x in values]
    inner_offset, inner = _block(exps, values, step)
    pos = torch.arange(size, device=exps.device).to(exps.dtype)[:, None]
    seen = exps - (size - 1 - pos) * step  # each item as the next chunk's first item sees it
    top = _max_items(seen.detach())
    weights = torch.exp(seen - top.unsqueeze(-2))
    summaries = [_sum_items(weights if x is None else weights * x) for x in values]
    outer_offset, outer = _exclusive_sums(top, summaries, size * step)
    outer_offset = outer_offset.unsqueeze(-2) - pos * step  # (..., chunks, size, C): position p reads -p·w more
    offset = torch.maximum(inner_offset, outer_offset.detach())
    inner_scale, outer_scale = torch.exp(inner_offset - offset), torch.exp(outer_offset - offset)
    sums = [a * inner_scale + b.unsqueeze(-2) * outer_scale for a, b in zip(inner, outer)]
    return offset.flatten(-3, -2)[..., :n, :], [s.flatten(-3, -2)[..., :n, :] for s in sums]


def bi_wkv_chunked(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(C,) w, u; (B, T, C) k, v -> (B, T, C) in v's dtype; fp32 inside."""
    wf, kf, vf = w.float(), k.float(), v.float()
    before_offset, (before_num, before_den) = _exclusive_sums(kf, [vf, None], wf)
    after_offset, after = _exclusive_sums(kf.flip(1), [vf.flip(1), None], wf)
    after_offset, (after_num, after_den) = after_offset.flip(1), [x.flip(1) for x in after]
    own = u.float() + kf
    top = torch.maximum(torch.maximum(before_offset, after_offset), own.detach())
    before, after, diag = torch.exp(before_offset - top), torch.exp(after_offset - top), torch.exp(own - top)
    den = before_den * before + after_den * after + diag + EPS
    out = (before_num * before + after_num * after + diag * vf) / den
    return out.to(v.dtype)
