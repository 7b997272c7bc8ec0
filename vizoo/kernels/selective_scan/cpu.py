"""The selective scan as one compiled CPU loop (numba): eager CPU inference, any d_state.

The chunked torch path writes every step's decays and inputs in full, (b, d, n) numbers per step, and reads them back
several times; the stepwise path keeps the state small but pays a dozen small ops per step. Here one loop walks the
sequence with the state (n, channels) in a small buffer, and per step computes softplus, exp(Δ A), the update, the
read-out by C, the skip and the SiLU gate, vectorised over channels (``vizoo.kernels.cpu_loops``). Inputs are read in a
time-major copy, (b, L, d), so that each step's channels are contiguous.

No gradient: training takes the torch path's recomputing scan, whose memory does not grow with d_state.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from vizoo.kernels.backend import wants_grad
from vizoo.kernels.cpu_loops import FAST, exp_f32, pieces, run_on_torch_threads, silu_f32, softplus_f32


@numba.njit(parallel=True, fastmath=FAST, cache=True)
def _scan_pieces(u, delta, z, A, B, C, D, bias, y, last, work, softplus):
    """``_scan_piece`` for every (image, c0, c1, block) row of ``work`` (``cpu_loops.pieces``), in parallel."""
    for i in numba.prange(work.shape[0]):
        _scan_piece(u, delta, z, A, B, C, D, bias, y, last, work[i, 0], work[i, 1], work[i, 2], softplus)


@numba.njit(nogil=True, fastmath=FAST, cache=True)
def _scan_piece(u, delta, z, A, B, C, D, bias, y, last, image, c0, c1, softplus):
    """Scan channels c0..c1 of one sequence.

    u, delta (b, L, d) time-major; z (b, L, d) or empty; A (n, d); B, C (b, L, n, g), group j serving channels
    j·d/g .. (j+1)·d/g; D, bias (d,); y (b, L, d) out; last (b, n, d), the final state, out.
    """
    length, channels = u.shape[1], u.shape[2]
    n, groups = A.shape[0], B.shape[3]
    per_group = channels // groups
    width_c = c1 - c0
    gated = z.shape[0] > 0
    step = np.empty(width_c, np.float32)
    out = np.empty(width_c, np.float32)
    b_c, c_c = np.empty(width_c, np.float32), np.empty(width_c, np.float32)  # B and C per channel, one state and step
    group = (np.arange(c0, c1) // per_group).astype(np.int64)
    state = np.zeros((n, width_c), np.float32)
    skip, bias_c = D[c0:c1], bias[c0:c1]
    for t in range(length):
        u_t, delta_t = u[image, t, c0:c1], delta[image, t, c0:c1]
        for i in range(width_c):
            x = delta_t[i] + bias_c[i]
            step[i] = softplus_f32(x) if softplus else x
            out[i] = skip[i] * u_t[i]
        for m in range(n):
            a_m, h_m, b_t, c_t = A[m, c0:c1], state[m], B[image, t, m], C[image, t, m]
            for i in range(width_c):
                b_c[i], c_c[i] = b_t[group[i]], c_t[group[i]]
            for i in range(width_c):
                h = exp_f32(step[i] * a_m[i]) * h_m[i] + step[i] * b_c[i] * u_t[i]
                h_m[i] = h
                out[i] += c_c[i] * h
        y_t = y[image, t, c0:c1]
        if gated:
            z_t = z[image, t, c0:c1]
            for i in range(width_c):
                y_t[i] = out[i] * silu_f32(z_t[i])
        else:
            for i in range(width_c):
                y_t[i] = out[i]
    for m in range(n):
        last_m, h_m = last[image, m, c0:c1], state[m]
        for i in range(width_c):
            last_m[i] = h_m[i]


def _time_major(t: torch.Tensor) -> np.ndarray:
    """(b, d, L) -> a contiguous fp32 (b, L, d) array."""
    return t.detach().float().transpose(1, 2).contiguous().numpy()


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``selective_scan_reference`` (B and C as (b, g, n, L)), without gradients."""
    if wants_grad(u, delta, A, B, C, D, z, delta_bias):
        raise RuntimeError(
            "selective_scan: backend 'cpu' computes no gradients; use backend='torch' (or None) for training, or run "
            "under torch.no_grad()"
        )
    b, d, length = u.shape
    n = A.shape[1]
    y = torch.empty(b, length, d)
    last = torch.empty(b, n, d)
    zeros = np.zeros(d, np.float32)
    args = (
        _time_major(u),
        _time_major(delta),
        _time_major(z) if z is not None else np.empty((0, 0, 0), np.float32),
        A.detach().float().t().contiguous().numpy(),
        B.detach().float().permute(0, 3, 2, 1).contiguous().numpy(),  # (b, L, n, g)
        C.detach().float().permute(0, 3, 2, 1).contiguous().numpy(),
        D.detach().float().contiguous().numpy() if D is not None else zeros,
        delta_bias.detach().float().contiguous().numpy() if delta_bias is not None else zeros,
        y.numpy(),
        last.numpy(),
        pieces(b, d, torch.get_num_threads()),
        delta_softplus,
    )
    run_on_torch_threads(_scan_pieces, *args)
    y = y.transpose(1, 2).contiguous().to(u.dtype)
    return (y, last.transpose(1, 2).contiguous()) if return_last_state else y
