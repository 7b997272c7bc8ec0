"""The selective scan as one compiled CPU loop (numba), forward and backward, any d_state.

The chunked torch path writes every step's decays and inputs in full, (b, d, n) numbers per step, and reads them back
several times; the stepwise path keeps the state small but pays a dozen small ops per step. Here one loop walks the
sequence with the state (n, channels) in a small buffer, and per step computes softplus, exp(Δ A), the update, the
read-out by C, the skip and the SiLU gate, vectorised over channels (``vizoo.kernels.cpu_loops``). Inputs are read in
time-major copies, (b, L, d), so that each step's channels are contiguous.

Training keeps the state only every ``CHUNK`` steps, (b, L / CHUNK, n, d) numbers; the backward loop walks the chunks
last to first, recomputes a chunk's states from its first one, and runs back through them with the state's gradient
in a small buffer. Memory then grows as the inputs do, not n times them.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from vizoo.kernels.backend import wants_grad
from vizoo.kernels.cpu_loops import FAST, FAST_SUMS, exp_f32, f32, pieces, run_on_torch_threads, softplus_f32

CHUNK = 16  # steps between the states that the training forward keeps


@numba.njit(inline="always", fastmath=FAST)
def _step_sizes(step, gate, delta_t, bias, softplus):
    """step = softplus(delta + bias) (or delta + bias), and gate (when it has room) its derivative sigmoid(x)."""
    with_gate = gate.shape[0] > 0
    for i in range(step.shape[0]):
        x = delta_t[i] + bias[i]
        s = softplus_f32(x) if softplus else x
        if with_gate:
            gate[i] = exp_f32(x - s) if softplus else f32(1.0)
        step[i] = s


@numba.njit(inline="always")
def _per_channel(out, row, group):
    """out[i] = row[group[i]]: a group's B or C value for each channel."""
    for i in range(out.shape[0]):
        out[i] = row[group[i]]


@numba.njit(inline="always", fastmath=FAST)
def _update(h_prev, h_new, out, step, a_m, b_c, c_c, u_t):
    """One state's step: h = exp(Δ A) h_prev + Δ B u, and its read-out C h added to out."""
    for i in range(out.shape[0]):
        h = exp_f32(step[i] * a_m[i]) * h_prev[i] + step[i] * b_c[i] * u_t[i]
        h_new[i] = h
        out[i] += c_c[i] * h


@numba.njit(parallel=True, fastmath=FAST, cache=True)
def _forward_pieces(u, delta, z, A, B, C, D, bias, y, last, checkpoints, work, softplus):
    """``_forward_piece`` for every (image, c0, c1, block) row of ``work`` (``cpu_loops.pieces``), in parallel."""
    for i in numba.prange(work.shape[0]):
        _forward_piece(
            u, delta, z, A, B, C, D, bias, y, last, checkpoints, work[i, 0], work[i, 1], work[i, 2], softplus
        )


@numba.njit(nogil=True, fastmath=FAST, cache=True)
def _forward_piece(u, delta, z, A, B, C, D, bias, y, last, checkpoints, image, c0, c1, softplus):
    """Scan channels c0..c1 of one sequence.

    u, delta (b, L, d) time-major; z (b, L, d) or empty; A (n, d); B, C (b, L, n, g), group j serving channels
    j·d/g .. (j+1)·d/g; D, bias (d,); y (b, L, d) out; last (b, n, d), the final state, out; checkpoints
    (b, ceil(L / CHUNK), n, d) out, the state before every CHUNK-th step, or empty.
    """
    length, channels = u.shape[1], u.shape[2]
    n, per_group = A.shape[0], channels // B.shape[3]
    width_c = c1 - c0
    gated, keep = z.shape[0] > 0, checkpoints.shape[0] > 0
    step, out, no_gate = np.empty(width_c, np.float32), np.empty(width_c, np.float32), np.empty(0, np.float32)
    b_c, c_c = np.empty(width_c, np.float32), np.empty(width_c, np.float32)
    group = np.arange(c0, c1) // per_group
    state = np.zeros((n, width_c), np.float32)
    skip, bias_c = D[c0:c1], bias[c0:c1]
    for t in range(length):
        if keep and t % CHUNK == 0:
            checkpoints[image, t // CHUNK, :, c0:c1] = state
        u_t = u[image, t, c0:c1]
        _step_sizes(step, no_gate, delta[image, t, c0:c1], bias_c, softplus)
        for i in range(width_c):
            out[i] = skip[i] * u_t[i]
        for m in range(n):
            _per_channel(b_c, B[image, t, m], group)
            _per_channel(c_c, C[image, t, m], group)
            _update(state[m], state[m], out, step, A[m, c0:c1], b_c, c_c, u_t)
        y_t = y[image, t, c0:c1]
        if gated:
            z_t = z[image, t, c0:c1]
            for i in range(width_c):
                y_t[i] = out[i] * z_t[i] / (f32(1.0) + exp_f32(-z_t[i]))
        else:
            for i in range(width_c):
                y_t[i] = out[i]
    last[image, :, c0:c1] = state


@numba.njit(inline="always", fastmath=FAST_SUMS)
def _group_sums(values, out, c0, c1, per_group):
    """out[j] = the sum of values over the piece's channels in group j, for each group the piece touches."""
    for j in range(c0 // per_group, (c1 - 1) // per_group + 1):
        total = f32(0.0)
        for i in range(max(c0, j * per_group) - c0, min(c1, (j + 1) * per_group) - c0):
            total += values[i]
        out[j] = total


@numba.njit(parallel=True, fastmath=FAST_SUMS, cache=True)
def _backward_pieces(grad_y, u, delta, z, A, B, C, D, bias, checkpoints, work, softplus, grads):
    """``_backward_piece`` for every (image, c0, c1, block) row of ``work``, in parallel."""
    for i in numba.prange(work.shape[0]):
        image, c0, c1, block = work[i, 0], work[i, 1], work[i, 2], work[i, 3]
        _backward_piece(grad_y, u, delta, z, A, B, C, D, bias, checkpoints, image, c0, c1, block, softplus, *grads)


@numba.njit(nogil=True, fastmath=FAST_SUMS, cache=True)
def _backward_piece(
    grad_y, u, delta, z, A, B, C, D, bias, checkpoints, image, c0, c1, block, softplus,
    grad_u, grad_delta, grad_z, grad_A, grad_B, grad_C, grad_D, grad_bias,
):  # fmt: skip
    """The gradients of ``_forward_piece`` for channels c0..c1 of one sequence, chunk by chunk from the last.

    With g_t = dL/dh_t = C_t dy_t + a_(t+1) g_(t+1), h_t = a_t h_(t-1) + Δ_t B_t u_t and a_t = exp(Δ_t A):
    dΔ_t = Σ_n g_t (A a_t h_(t-1) + B_t u_t), dA = Σ_t g_t Δ_t a_t h_(t-1), du_t = D dy_t + Σ_n g_t Δ_t B_t,
    dB_t = Σ_c g_t Δ_t u_t and dC_t = Σ_c dy_t h_t (over the group's channels), then dΔ through softplus. dy is the
    output's gradient times silu(z); dz = dy_out · y · silu'(z). Sums over channels go to this piece's ``block`` of
    grad_B and grad_C (blocks, b, L, n, g); sums over steps to this image's row of grad_A (b, n, d), grad_D and
    grad_bias (b, d); grad_u, grad_delta and grad_z are (b, L, d), time-major.
    """
    length, channels = u.shape[1], u.shape[2]
    n, per_group = A.shape[0], channels // B.shape[3]
    width_c = c1 - c0
    gated = z.shape[0] > 0
    group = np.arange(c0, c1) // per_group
    states = np.empty((CHUNK + 1, n, width_c), np.float32)  # one chunk's states, recomputed
    steps, gates = np.empty((CHUNK, width_c), np.float32), np.empty((CHUNK, width_c), np.float32)
    read_out = np.empty((CHUNK, width_c), np.float32)  # y before the gate
    carry = np.zeros((n, width_c), np.float32)  # a_(t+1) g_(t+1)
    b_c, c_c = np.empty(width_c, np.float32), np.empty(width_c, np.float32)
    g_y, g_step = np.empty(width_c, np.float32), np.empty(width_c, np.float32)
    per_channel = np.empty(width_c, np.float32)
    skip, bias_c, g_D, g_bias = D[c0:c1], bias[c0:c1], grad_D[image, c0:c1], grad_bias[image, c0:c1]
    for chunk in range((length + CHUNK - 1) // CHUNK - 1, -1, -1):
        t0, t1 = chunk * CHUNK, min((chunk + 1) * CHUNK, length)
        states[0] = checkpoints[image, chunk, :, c0:c1]
        for t in range(t0, t1):
            s, u_t = t - t0, u[image, t, c0:c1]
            _step_sizes(steps[s], gates[s], delta[image, t, c0:c1], bias_c, softplus)
            out = read_out[s]
            for i in range(width_c):
                out[i] = skip[i] * u_t[i]
            for m in range(n):
                _per_channel(b_c, B[image, t, m], group)
                _per_channel(c_c, C[image, t, m], group)
                _update(states[s, m], states[s + 1, m], out, steps[s], A[m, c0:c1], b_c, c_c, u_t)
        for t in range(t1 - 1, t0 - 1, -1):
            s, u_t, gy, g_u = t - t0, u[image, t, c0:c1], grad_y[image, t, c0:c1], grad_u[image, t, c0:c1]
            step = steps[s]
            if gated:
                z_t, g_z, out = z[image, t, c0:c1], grad_z[image, t, c0:c1], read_out[s]
                for i in range(width_c):
                    sig = f32(1.0) / (f32(1.0) + exp_f32(-z_t[i]))
                    g_z[i] = gy[i] * out[i] * sig * (f32(1.0) + z_t[i] * (f32(1.0) - sig))
                    g_y[i] = gy[i] * z_t[i] * sig
            else:
                for i in range(width_c):
                    g_y[i] = gy[i]
            for i in range(width_c):
                g_u[i] = g_y[i] * skip[i]
                g_D[i] += g_y[i] * u_t[i]
                g_step[i] = f32(0.0)
            for m in range(n):
                a_m, h_prev, h_t, carry_m, g_A = (
                    A[m, c0:c1],
                    states[s, m],
                    states[s + 1, m],
                    carry[m],
                    grad_A[image, m, c0:c1],
                )
                _per_channel(b_c, B[image, t, m], group)
                _per_channel(c_c, C[image, t, m], group)
                for i in range(width_c):
                    per_channel[i] = g_y[i] * h_t[i]
                _group_sums(per_channel, grad_C[block, image, t, m], c0, c1, per_group)
                for i in range(width_c):
                    g = c_c[i] * g_y[i] + carry_m[i]
                    a = exp_f32(step[i] * a_m[i])
                    g_step[i] += g * (a_m[i] * a * h_prev[i] + b_c[i] * u_t[i])
                    g_A[i] += g * a * step[i] * h_prev[i]
                    g_u[i] += g * step[i] * b_c[i]
                    per_channel[i] = g * step[i] * u_t[i]
                    carry_m[i] = a * g
                _group_sums(per_channel, grad_B[block, image, t, m], c0, c1, per_group)
            g_delta, gate = grad_delta[image, t, c0:c1], gates[s]
            for i in range(width_c):
                g_delta[i] = g_step[i] * gate[i]
                g_bias[i] += g_delta[i]


class _LoopScan(torch.autograd.Function):
    """The loop as an autograd op on fp32 contiguous time-major tensors (shapes as ``_forward_piece``): y and the
    last state (no gradient)."""

    @staticmethod
    def forward(ctx, u, delta, z, A, B, C, D, bias, softplus, keep_states):
        b, length, d = u.shape
        y, last = torch.empty_like(u), u.new_empty(b, A.shape[0], d)
        chunks = -(-length // CHUNK)
        checkpoints = u.new_empty((b, chunks, A.shape[0], d) if keep_states else (0, 0, 0, 0))
        tensors = (u, delta, z, A, B, C, D, bias)
        work = pieces(b, d, torch.get_num_threads())
        run_on_torch_threads(
            _forward_pieces, *(t.detach().numpy() for t in (*tensors, y, last, checkpoints)), work, softplus
        )
        ctx.save_for_backward(*tensors, checkpoints)
        ctx.softplus = softplus
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_last):
        u, delta, z, A, B, C, D, bias, checkpoints = ctx.saved_tensors
        b, _, d = u.shape
        work = pieces(b, d, torch.get_num_threads())
        blocks = int(work[:, 3].max()) + 1
        grads = (
            torch.empty_like(u),
            torch.empty_like(delta),
            torch.empty_like(z),
            u.new_zeros(b, *A.shape),
            u.new_zeros(blocks, *B.shape),
            u.new_zeros(blocks, *C.shape),
            u.new_zeros(b, d),
            u.new_zeros(b, d),
        )
        tensors = (grad_y.contiguous(), u, delta, z, A, B, C, D, bias, checkpoints)
        run_on_torch_threads(
            _backward_pieces,
            *(t.detach().numpy() for t in tensors),
            work,
            ctx.softplus,
            tuple(g.numpy() for g in grads),
        )
        grad_u, grad_delta, grad_z, grad_A, grad_B, grad_C, grad_D, grad_bias = grads
        return (
            grad_u, grad_delta, grad_z, grad_A.sum(0), grad_B.sum(0), grad_C.sum(0), grad_D.sum(0), grad_bias.sum(0),
            None, None,
        )  # fmt: skip


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
    """Same contract as ``selective_scan_reference`` (B and C as (b, g, n, L)), gradients included."""
    d = u.shape[1]
    y, last = _LoopScan.apply(
        u.float().transpose(1, 2).contiguous(),
        delta.float().transpose(1, 2).contiguous(),
        z.float().transpose(1, 2).contiguous() if z is not None else u.new_empty(0, 0, 0, dtype=torch.float32),
        A.float().t().contiguous(),  # (n, d)
        B.float().permute(0, 3, 2, 1).contiguous(),  # (b, L, n, g)
        C.float().permute(0, 3, 2, 1).contiguous(),
        D.float() if D is not None else u.new_zeros(d, dtype=torch.float32),
        delta_bias.float() if delta_bias is not None else u.new_zeros(d, dtype=torch.float32),
        delta_softplus,
        wants_grad(u, delta, A, B, C, D, z, delta_bias),
    )
    y = y.transpose(1, 2).contiguous().to(u.dtype)
    return (y, last.transpose(1, 2).contiguous()) if return_last_state else y
