"""The fused cross-selective-scan in torch: exportable, any device.

With d_state n = 1 (VMamba v2 and its successors) the routes are scanned in *step-major* order. Every route is cut
into chunks of ``s`` consecutive steps, ``s`` a divisor of both map sides, so a chunk of a row route stays in one row
and a chunk of a column route in one column. Step-major order lists step 0 of every chunk, then step 1, and so on: the
chunked scan's step ``t`` is then one contiguous block, and so is its output. The layout is channel-last,
(b, 2 axes, 2 directions, s, chunks, d), so the step-major reorderings move whole pixels:

- only the two forward routes are made: a row route in step-major order is the channel-last map seen as (h, w/s, s)
  and permuted to (s, h, w/s); a column route is (h/s, s, w) permuted to (s, w, h/s);
- a reversed route reads the same sequence last to first, so it is never made: its decays, inputs and read-out are
  stored in the forward order, and its scan runs backwards over them. Step ``t`` of the scan pairs step t of the
  forward routes with step s-1-t of the reversed ones (one strided view, one Slice in ONNX); over the chunks the
  reversed routes' few chunk-end states are flipped, carried, and flipped back. Only the read-out is flipped once;
- each route's projections (``x_proj``: rank-r step inputs, B, C) are computed from the forward routes it reads,
  already in this order, and the step sizes are projected from rank r to the d channels after that;
- the decays exp(Δ A), the inputs Δ u B and the read-out by C are products over the whole sequence (B and C hold one
  value per step and broadcast over the channels); each chunk's total decay is exp of a sum (s times a mean) of Δ A;
  the skip D u is added once, to the merged map: every route reads the same pixels, so the four D_k u_k sum to
  (sum of the D_k) x.

Making only the forward routes drops the reversed copies of the input, the split of the output and most transposes
of the projections, which onnxruntime runs as separate copies; route order (strided views of (b, 4·d, chunks, s))
would cost a transpose per step instead. With n > 1 the three torch kernels are composed in route order (the
steps' states would need a sixth dim).
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from vizoo.kernels.cross_scan.reference import NUM_ROUTES
from vizoo.kernels.cross_scan.torch_ops import cross_merge_torch, cross_scan_torch
from vizoo.kernels.cross_selective_scan.reference import full_rank_delta
from vizoo.kernels.selective_scan import chunked
from vizoo.kernels.selective_scan.chunked import CHUNK, chunk_start_states, scan_steps, selective_scan_chunked, softplus


def cross_selective_scan_torch(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor | None,
    C: torch.Tensor | None,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    out_fp32: bool = False,
    out_channel_first: bool = True,
    delta_proj: torch.Tensor | None = None,
    x_proj: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``cross_selective_scan_reference``."""
    if A.shape[1] == 1:
        return _step_major_scan(
            x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj, x_proj
        )
    args = (x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj)
    return routed_cross_scan(selective_scan_chunked, *args)


def routed_cross_scan(
    scan, x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj
) -> torch.Tensor:
    """Cross scan, ``scan`` over the four routes' channels (route order), cross merge; the contract of
    ``cross_selective_scan_reference``. ``scan`` is a selective scan: the chunked torch path here, the compiled loop in
    the CPU backend.

    With n > 1 and a gradient wanted only x and the low-rank inputs are kept for the backward: it reruns this function,
    making the four route copies of x and the full-rank step sizes (8·d channels per pixel) again, and the scan keeps
    what its own backward needs (the torch path its inputs, the loop also one state every few steps) only then.
    """
    args = (scan, x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj)
    if chunked.recompute_in_backward(A, x, delta, B, C, D, delta_bias, delta_proj):
        return checkpoint(_routed_scan, *args, use_reentrant=False, preserve_rng_state=False)
    return _routed_scan(*args)


def _routed_scan(scan, x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj):
    d, h, w = x.shape[1:]
    delta = full_rank_delta(delta, delta_proj)
    xs = cross_scan_torch(x.float() if out_fp32 else x)  # (b, 4, d, l)
    ys = scan(xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, delta_bias, delta_softplus)
    return cross_merge_torch(ys.unflatten(1, (NUM_ROUTES, d)).unflatten(-1, (h, w)), out_channel_first)


def steps_per_chunk(height: int, width: int) -> int:
    """The chunk length ``s`` of the step-major scan: the largest divisor of both map sides up to ``CHUNK``."""
    common = math.gcd(height, width)
    return next(size for size in range(CHUNK, 0, -1) if common % size == 0)


def _step_major_scan(x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj, x_proj):
    """The n = 1 scan in step-major channel-last layout (see the module docstring); returns the merged map."""
    d, h, w = x.shape[1:]
    s = steps_per_chunk(h, w)
    x_last = x.float().permute(0, 2, 3, 1)  # (b, h, w, d)
    u = _routes_step_major(x_last, s)  # (b, 2, l, d): the row and the column route
    if x_proj is not None:
        delta, B, C = _project_step_major(u, x_proj.float(), A.shape[1])
    else:
        delta, B, C = (_route_order_to_step_major(t.float(), s) for t in (delta, B, C))  # (b, 2, 2, l, c) each
    if delta_proj is not None:
        delta = torch.matmul(delta, _by_axis_and_direction(delta_proj.float()).transpose(-1, -2))  # (b, 2, 2, l, d)
    if delta_bias is not None:
        delta = delta + _by_axis_and_direction(delta_bias.float().view(NUM_ROUTES, 1, d))
    if delta_softplus:
        delta = softplus(delta)
    log_a = delta * _by_axis_and_direction(A.float().view(NUM_ROUTES, 1, d))
    chunks = log_a.shape[3] // s
    # each chunk's total decay (b, 2, 2, chunks, d) as exp of s times a mean: NNAPI lacks ReduceSum; ranks stay <= 5
    decay = torch.exp(log_a.reshape(-1, s, chunks, d).mean(1) * s).view(-1, 2, 2, chunks, d)
    a, bx = _step_pairs(torch.exp(log_a), s), _step_pairs(delta * u.unsqueeze(2) * B, s)
    # With s = 1 the recurrence over chunks is already the whole scan, but the second pass keeps A in the graph when
    # nothing else does (a 1 x 1 map: A cannot change the output, and DDP wants a zero gradient, not none).
    states = torch.cat(scan_steps(a, bx, _chunk_start_pairs(a, bx, decay)), dim=3)  # (b, 2, 2, l, d), scan order
    C = C.squeeze(-1).unflatten(3, (s, chunks))  # (b, 2, 2, s, chunks)
    C = torch.cat([C[:, :, :1], C[:, :, 1:].flip(3)], dim=2).flatten(3, 4).unsqueeze(-1)  # in scan order too
    forward, reverse = (states * C).unbind(2)
    y = forward + reverse.unflatten(2, (s, chunks)).flip(2).flatten(2, 3)  # the reversed routes' steps back in order
    y = _merge_step_major(y, h, w, s)  # (b, l, d)
    if D is not None:
        y = torch.addcmul(y, D.float().view(NUM_ROUTES, d).sum(0), x_last.flatten(1, 2))
    y = y if out_fp32 else y.to(x.dtype)
    return y.transpose(1, 2) if out_channel_first else y


def _by_axis_and_direction(t: torch.Tensor) -> torch.Tensor:
    """Per-route (4, ...) in route order (rows, columns, reversed rows, reversed columns) -> (2 axes, 2 directions,
    ...)."""
    return t.unflatten(0, (2, 2)).transpose(0, 1)


def _project_step_major(u: torch.Tensor, x_proj: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Each route's projection (4, r + 2n, d) of the routes u (b, 2, l, d) -> step inputs, B and C, (b, 2, 2, l, ·)
    each. Both directions of an axis read the same steps: one matmul per axis gives both."""
    weight = _by_axis_and_direction(x_proj).flatten(1, 2).transpose(1, 2)  # (2, d, 2 (r + 2n))
    projected = torch.matmul(u, weight).unflatten(-1, (2, -1)).transpose(2, 3)  # (b, 2, 2, l, r + 2n)
    return projected.split([x_proj.shape[1] - 2 * n, n, n], dim=-1)


def _route_order_to_step_major(t: torch.Tensor, s: int) -> torch.Tensor:
    """Route-ordered (b, 4, c, l) -> (b, 2, 2, l, c): by axis and direction, in the forward routes' step-major order
    (a reversed route's steps flipped back), channel-last."""
    t = t.unflatten(1, (2, 2)).transpose(1, 2)  # (b, 2, 2, c, l)
    t = torch.stack([t[:, :, 0], t[:, :, 1].flip(-1)], dim=2)
    return t.unflatten(-1, (-1, s)).permute(0, 1, 2, 5, 4, 3).flatten(3, 4)


def _step_pairs(t: torch.Tensor, s: int) -> list[torch.Tensor]:
    """Step-major (b, 2, 2, l, c) -> ``s`` step pairs (b, 2, 2, chunks, c): pair t holds step t of the forward routes
    and step s-1-t of the reversed ones, which is their t-th in their own (backward) order. Strided views in torch,
    one Slice each in ONNX."""
    t = t.flatten(2, 3).unflatten(2, (2 * s, -1))  # (b, 2, 2 s, chunks, c): direction-major steps
    return [t[:, :, i : 2 * s - i : 2 * s - 1 - 2 * i] for i in range(s)]


def _chunk_start_pairs(a: list[torch.Tensor], b: list[torch.Tensor], decay: torch.Tensor) -> torch.Tensor:
    """``chunk_start_states`` of step pairs (b, 2, 2, chunks, c) in scan order, with each chunk's total ``decay``:
    the forward routes carry states over the chunks first to last, the reversed routes last to first."""
    end = scan_steps(a, b)[-1]  # each chunk's end state from a zero start
    starts = chunk_start_states([_reverse_chunks(decay)], [_reverse_chunks(end)], dim=3)
    return _reverse_chunks(starts)


def _reverse_chunks(t: torch.Tensor) -> torch.Tensor:
    """(b, 2, 2, chunks, c) with the reversed routes' chunks (direction 1) flipped; its own inverse."""
    return torch.cat([t[:, :, :1], t[:, :, 1:].flip(3)], dim=2)


def _routes_step_major(x: torch.Tensor, s: int) -> torch.Tensor:
    """Channel-last map (b, h, w, c) -> (b, 2, h·w, c): the row and the column route, each in step-major order."""
    b, h, w, c = x.shape
    rows = x.reshape(b, h, w // s, s, c).permute(0, 3, 1, 2, 4).reshape(b, h * w, c)
    cols = x.reshape(b, h // s, s, w, c).permute(0, 2, 3, 1, 4).reshape(b, h * w, c)
    return torch.stack([rows, cols], dim=1)


def _merge_step_major(y: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    """The adjoint of ``_routes_step_major``: (b, 2, h·w, c) -> (b, h·w, c), both routes put back and summed."""
    b, _, _, c = y.shape
    rows, cols = y.unbind(1)
    rows = rows.reshape(b, s, h, w // s, c).permute(0, 2, 3, 1, 4).reshape(b, h * w, c)
    cols = cols.reshape(b, s, w, h // s, c).permute(0, 3, 1, 2, 4).reshape(b, h * w, c)
    return rows + cols
