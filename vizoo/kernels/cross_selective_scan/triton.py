"""The fused cross-selective-scan in Triton: the selective-scan kernels run with ``ROUTES = 4``, reading the map along
each route and adding every route's output into the merged map, so the four route copies of x (cross_scan's output)
and of y (cross_merge's input) never exist, forward or backward. See ``vizoo.kernels.selective_scan.triton`` for the
kernels; custom ops ``vizoo::cross_selective_scan_fwd`` / ``vizoo::cross_selective_scan_bwd``.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from vizoo.kernels.cross_scan.triton import _map_view
from vizoo.kernels.cross_selective_scan.reference import full_rank_delta
from vizoo.kernels.selective_scan import triton as scan_kernels
from vizoo.kernels.selective_scan.triton import MAX_D_STATE, fake_grads, needs_states, scan_backward, scan_forward


def _merged(x: Tensor, channel_last_out: bool, out_fp32: bool) -> Tensor:
    b, d, h, w = x.shape
    return x.new_empty((b, h * w, d) if channel_last_out else (b, d, h * w), dtype=torch.float32 if out_fp32 else None)


@torch.library.custom_op("vizoo::cross_selective_scan_fwd", mutates_args=())
def _fwd(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    softplus: bool,
    out_fp32: bool,
    channel_last_out: bool,
    save_states: bool,
    block_l: int,
) -> tuple[Tensor, Tensor]:
    y = _merged(x, channel_last_out, out_fp32)
    y_map = _map_view(y, x.shape[2], x.shape[3], channel_last_out)
    _, states = scan_forward(x, delta, A, B, C, D, None, delta_bias, y_map, softplus, save_states, block_l)
    return y, states


@_fwd.register_fake
def _(x, delta, A, B, C, D, delta_bias, softplus, out_fp32, channel_last_out, save_states, block_l):
    b, d, h, w = x.shape
    chunks = triton.cdiv(h * w, block_l)
    states = x.new_empty((b, chunks, 4 * d, A.shape[1]) if save_states else (0,), dtype=torch.float32)
    return _merged(x, channel_last_out, out_fp32), states


@torch.library.custom_op("vizoo::cross_selective_scan_bwd", mutates_args=())
def _bwd(
    dy: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    states: Tensor,
    softplus: bool,
    channel_last_out: bool,
    block_l: int,
) -> list[Tensor]:
    dx, ddelta = torch.empty_like(x), torch.empty_like(delta)
    dy = _map_view(dy, x.shape[2], x.shape[3], channel_last_out)
    grads = scan_backward(dy, x, delta, A, B, C, D, None, delta_bias, states, dx, ddelta, None, softplus, block_l)
    return [g if g is not None else x.new_empty(0) for g in (dx, ddelta, *grads)]


@_bwd.register_fake
def _(dy, x, delta, A, B, C, D, delta_bias, states, softplus, channel_last_out, block_l):
    return fake_grads(x, [x, delta], [A, B, C, D, delta_bias], order=[0, 1, 2, 3, 4, 5, 6])


def _setup_context(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, softplus, _, channel_last_out, _, block_l = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, output[1])
    ctx.softplus, ctx.channel_last_out, ctx.block_l = softplus, channel_last_out, block_l
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the chunk states


def _backward(ctx, dy, _d_states):
    x, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    grads = _bwd(dy, x, delta, A, B, C, D, delta_bias, states, ctx.softplus, ctx.channel_last_out, ctx.block_l)
    present = [True] * 5 + [D is not None, delta_bias is not None]
    return (*[g if keep else None for g, keep in zip(grads, present)], None, None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def cross_selective_scan_triton(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    out_fp32: bool = False,
    out_channel_first: bool = True,
    delta_proj: Tensor | None = None,
) -> Tensor:
    """Same contract as ``cross_selective_scan_reference``; one kernel each way, fp32 accumulation (a low-rank
    delta is projected to its d channels first)."""
    n = A.shape[1]
    delta = full_rank_delta(delta, delta_proj)
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(f"cross_selective_scan (triton): d_state must be in 1..{MAX_D_STATE}, got {n}")
    save = needs_states(x, delta, A, B, C, D, delta_bias)
    args = (D, delta_bias, delta_softplus, out_fp32, not out_channel_first, save, scan_kernels.chunk_length(n))
    return _fwd(x, delta, A, B, C, *args)[0]
