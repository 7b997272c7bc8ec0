"""The cross-selective-scan as one compiled CPU loop (numba), forward and backward, for eager CPU calls.

The torch path runs the scan as a dozen whole-tensor ops, each a pass over (b, 4, L, d) numbers through memory. Here
numba compiles one loop (LLVM, shipped in its wheel: no C compiler on the user's machine) that walks each route over
the channel-last map, pixel by pixel, with the state of every channel in a small buffer (L1 cache) and the output map
accumulating all four routes in place. Per pixel and route it computes the rank-r step sizes' projection, softplus,
exp(Δ A), the update and the read-out, vectorised over channels. Nothing the size of the map is written but the output.

The loop takes SS2D's projected form (``x_proj`` and ``delta_proj``, see ``cross_selective_scan``); the per-route
``x_proj`` products run before it as one matrix product in pixel order. Work is split into (image, channel block)
pieces, run in parallel on torch's threads (``vizoo.kernels.cpu_loops``).

Training (d_state n = 1) keeps each step's state in the forward, (b, 4, L, d) numbers, and the backward loop walks
each route in reverse with the state's gradient in a small buffer (``_backward_piece``). With n > 1 the states would be
n times larger, so the fused loop serves inference only; training composes the cross scan, the selective scan's own
loop (which keeps one state every few steps and recomputes the rest) and the cross merge.

Nothing traces the loop: the dispatcher (``vizoo.kernels.backend``) takes it only for eager calls.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from vizoo.kernels.backend import wants_grad
from vizoo.kernels.cpu_loops import FAST, FAST_SUMS, exp_f32, f32, pieces, run_on_torch_threads, softplus_f32
from vizoo.kernels.cross_scan.reference import NUM_ROUTES
from vizoo.kernels.cross_selective_scan.interface import projected_form, route_ordered_projections
from vizoo.kernels.cross_selective_scan.torch_ops import routed_cross_scan
from vizoo.kernels.selective_scan.cpu import selective_scan_cpu


@numba.njit(inline="always")
def _route_pixel(k, t, length, height, width):
    """The pixel that route k visits at step t: rows (k = 0) and columns (k = 1) of the map, then both reversed."""
    s = t if k < 2 else length - 1 - t
    return s if k % 2 == 0 else (s % height) * width + s // height


@numba.njit(inline="always", fastmath=FAST)
def _step_sizes(delta, gate, proj, delta_weight, bias, k, c0, c1, delta_softplus):
    """Fill ``delta`` with the step sizes softplus(bias + proj[:r] @ weight) of channels c0..c1 at one step, and
    ``gate`` (when it has room) with their derivative sigmoid(z) = exp(z - softplus(z))."""
    width_c = c1 - c0
    for i in range(width_c):
        delta[i] = bias[i]
    for j in range(delta_weight.shape[1]):
        lj, wj = proj[j], delta_weight[k, j, c0:c1]  # 1-d slices stay contiguous: vector loads
        for i in range(width_c):
            delta[i] += lj * wj[i]
    with_gate = gate.shape[0] > 0
    for i in range(width_c):
        z = delta[i]
        step = softplus_f32(z) if delta_softplus else z
        if with_gate:
            gate[i] = exp_f32(z - step) if delta_softplus else f32(1.0)
        delta[i] = step


@numba.njit(parallel=True, fastmath=FAST, cache=True)
def _forward_pieces(u, projected, delta_weight, delta_bias, A, skip, y, states, height, width, work, softplus):
    """``_forward_piece`` for every (image, c0, c1, block) row of ``work`` (int64, ``cpu_loops.pieces``), in
    parallel."""
    for i in numba.prange(work.shape[0]):
        image, c0, c1 = work[i, 0], work[i, 1], work[i, 2]
        _forward_piece(
            u, projected, delta_weight, delta_bias, A, skip, y, states, height, width, image, c0, c1, softplus
        )


@numba.njit(nogil=True, fastmath=FAST, cache=True)
def _forward_piece(u, projected, delta_weight, delta_bias, A, skip, y, states, height, width, image, c0, c1, softplus):
    """Scan channels c0..c1 of one image along the four routes and write their merged read-out.

    u (b, L, d) the channel-last map; projected (b, L, 4, r + 2n) each route's projection of every pixel (step inputs,
    B, C); delta_weight (4, r, d); delta_bias (4, d); A (4, n, d); skip (d,), the routes' D summed; y (b, L, d), out.
    states: (b, 4, L, d) to keep every step's state for the backward (n = 1), or empty.
    """
    length = u.shape[1]
    rank = delta_weight.shape[1]
    n = A.shape[1]
    width_c = c1 - c0
    keep_states = states.shape[0] > 0
    delta = np.empty(width_c, np.float32)
    no_gate = np.empty(0, np.float32)
    state = np.empty((n, width_c), np.float32)
    for p in range(length):
        up, yp, sk = u[image, p, c0:c1], y[image, p, c0:c1], skip[c0:c1]
        for i in range(width_c):
            yp[i] = sk[i] * up[i]
    for k in range(NUM_ROUTES):
        state[:, :] = 0
        bias = delta_bias[k, c0:c1]
        for t in range(length):
            p = _route_pixel(k, t, length, height, width)
            proj = projected[image, p, k]
            _step_sizes(delta, no_gate, proj, delta_weight, bias, k, c0, c1, softplus)
            up, yp = u[image, p, c0:c1], y[image, p, c0:c1]
            for m in range(n):
                b_m, c_m, a_m, h_m = proj[rank + m], proj[rank + n + m], A[k, m, c0:c1], state[m]
                for i in range(width_c):
                    h = exp_f32(delta[i] * a_m[i]) * h_m[i] + delta[i] * b_m * up[i]
                    h_m[i] = h
                    yp[i] += c_m * h
            if keep_states:
                kept, h_0 = states[image, k, t, c0:c1], state[0]
                for i in range(width_c):
                    kept[i] = h_0[i]


@numba.njit(parallel=True, fastmath=FAST_SUMS, cache=True)
def _backward_pieces(
    grad_y, u, projected, delta_weight, delta_bias, A, skip, states, height, width, work, softplus, grads
):
    """``_backward_piece`` for every (image, c0, c1, block) row of ``work``, in parallel."""
    for i in numba.prange(work.shape[0]):
        image, c0, c1, block = work[i, 0], work[i, 1], work[i, 2], work[i, 3]
        _backward_piece(
            grad_y, u, projected, delta_weight, delta_bias, A, skip, states, height, width, image, c0, c1, block,
            softplus, *grads,
        )  # fmt: skip


@numba.njit(nogil=True, fastmath=FAST_SUMS, cache=True)
def _backward_piece(
    grad_y, u, projected, delta_weight, delta_bias, A, skip, states, height, width, image, c0, c1, block, softplus,
    grad_u, grad_projected, grad_weight, grad_bias, grad_A, grad_skip,
):  # fmt: skip
    """The gradients of ``_forward_piece`` (n = 1) for channels c0..c1 of one image, each route scanned backwards.

    With g_t = dL/dh_t = C_t dy_t + a_(t+1) g_(t+1) and h_t = a_t h_(t-1) + Δ_t B_t u_t, a_t = exp(Δ_t A):
    dΔ_t = g_t (A a_t h_(t-1) + B_t u_t), dA = Σ g_t Δ_t a_t h_(t-1), du_t = g_t Δ_t B_t, dB_t = Σ_c g_t Δ_t u_t,
    dC_t = Σ_c dy_t h_t, and dΔ flows through softplus to the bias, the step-size weight and the rank-r inputs.
    Sums over channels go to this piece's ``block`` of grad_projected (blocks, b, L, 4, r + 2); sums over pixels to
    this image's row of grad_weight (b, 4, r, d), grad_bias, grad_A (b, 4, d) and grad_skip (b, d).
    """
    length = u.shape[1]
    rank = delta_weight.shape[1]
    width_c = c1 - c0
    delta = np.empty(width_c, np.float32)
    gate = np.empty(width_c, np.float32)
    carry = np.empty(width_c, np.float32)
    grad_z = np.empty(width_c, np.float32)
    sk, g_skip = skip[c0:c1], grad_skip[image, c0:c1]
    for p in range(length):
        gy, up, gu = grad_y[image, p, c0:c1], u[image, p, c0:c1], grad_u[image, p, c0:c1]
        for i in range(width_c):
            gu[i] = sk[i] * gy[i]
            g_skip[i] += gy[i] * up[i]
    for k in range(NUM_ROUTES):
        carry[:] = 0
        bias, a_k = delta_bias[k, c0:c1], A[k, 0, c0:c1]
        g_A, g_bias = grad_A[image, k, c0:c1], grad_bias[image, k, c0:c1]
        for t in range(length - 1, -1, -1):
            p = _route_pixel(k, t, length, height, width)
            proj, g_proj = projected[image, p, k], grad_projected[block, image, p, k]
            _step_sizes(delta, gate, proj, delta_weight, bias, k, c0, c1, softplus)
            b_t, c_t = proj[rank], proj[rank + 1]
            h_t, h_prev = states[image, k, t, c0:c1], states[image, k, max(t - 1, 0), c0:c1]
            first = f32(0.0) if t == 0 else f32(1.0)  # h_(-1) = 0
            gy, up, gu = grad_y[image, p, c0:c1], u[image, p, c0:c1], grad_u[image, p, c0:c1]
            grad_c = f32(0.0)
            grad_b = f32(0.0)
            for i in range(width_c):
                grad_c += gy[i] * h_t[i]
                g = c_t * gy[i] + carry[i]
                a = exp_f32(delta[i] * a_k[i])
                hp = first * h_prev[i]
                g_A[i] += g * delta[i] * a * hp
                grad_b += g * delta[i] * up[i]
                gu[i] += g * delta[i] * b_t
                grad_z[i] = g * (a_k[i] * a * hp + b_t * up[i]) * gate[i]
                g_bias[i] += grad_z[i]
                carry[i] = a * g
            g_proj[rank] = grad_b
            g_proj[rank + 1] = grad_c
            for j in range(rank):
                wj, g_w, lj = delta_weight[k, j, c0:c1], grad_weight[image, k, j, c0:c1], proj[j]
                grad_l = f32(0.0)
                for i in range(width_c):
                    grad_l += wj[i] * grad_z[i]
                    g_w[i] += lj * grad_z[i]
                g_proj[j] = grad_l


class _LoopScan(torch.autograd.Function):
    """The loop as an autograd op on fp32 contiguous tensors (shapes as ``_forward_piece``). With gradients wanted
    (n = 1 only) the forward keeps every step's state, (b, 4, L, d) numbers, no more than the input's four route copies,
    and the backward recomputes the step sizes from the projections."""

    @staticmethod
    def forward(ctx, u, projected, delta_weight, delta_bias, A, skip, height, width, softplus, keep_states):
        b, length, d = u.shape
        y = torch.empty_like(u)
        states = u.new_empty((b, NUM_ROUTES, length, d) if keep_states else (0, 0, 0, 0))
        work = pieces(b, d, torch.get_num_threads())
        tensors = (u, projected, delta_weight, delta_bias, A, skip)
        run_on_torch_threads(
            _forward_pieces, *(t.detach().numpy() for t in (*tensors, y, states)), height, width, work, softplus
        )
        ctx.save_for_backward(*tensors, states)
        ctx.setup = (height, width, softplus)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        u, projected, delta_weight, delta_bias, A, skip, states = ctx.saved_tensors
        height, width, softplus = ctx.setup
        b, _, d = u.shape
        work = pieces(b, d, torch.get_num_threads())
        blocks = int(work[:, 3].max()) + 1
        grads = (
            torch.empty_like(u),
            projected.new_zeros(blocks, *projected.shape),
            u.new_zeros(b, *delta_weight.shape),
            u.new_zeros(b, *delta_bias.shape),
            u.new_zeros(b, *delta_bias.shape),
            u.new_zeros(b, d),
        )
        tensors = (grad_y.contiguous(), u, projected, delta_weight, delta_bias, A, skip, states)
        args = (
            *(t.detach().numpy() for t in tensors),
            height,
            width,
            work,
            softplus,
            tuple(g.numpy() for g in grads),
        )
        run_on_torch_threads(_backward_pieces, *args)
        grad_u, grad_projected, *per_image = grads
        grad_weight, grad_bias, grad_A, grad_skip = (g.sum(0) for g in per_image)
        grad_projected = grad_projected.sum(0)
        return grad_u, grad_projected, grad_weight, grad_bias, grad_A.view(A.shape), grad_skip, None, None, None, None


def cross_selective_scan_cpu(
    x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj, x_proj=None
) -> torch.Tensor:
    """Same contract as ``cross_selective_scan_reference``, gradients included.

    SS2D's projected form (``x_proj`` and a (4, d, r) ``delta_proj``, ``delta``, ``B`` and ``C`` None) runs the fused
    loop, except for training with d_state n > 1: that, and route-ordered ``delta``, ``B`` and ``C``, run the three
    kernels composed (``routed_cross_scan``) with the selective scan's loop, which keeps a state every few steps.
    """
    n = A.shape[1]
    keep_states = wants_grad(x, A, D, delta_bias, delta_proj, x_proj)
    if not (projected_form(x_proj, delta_proj) and (n == 1 or not keep_states)):
        if x_proj is not None:
            delta, B, C = route_ordered_projections(x, x_proj, n, backend="torch")
        args = (x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj)
        return routed_cross_scan(selective_scan_cpu, *args)
    b, d, h, w = x.shape
    rank = delta_proj.shape[-1]
    u = x.float().permute(0, 2, 3, 1).reshape(b, h * w, d).contiguous()  # free for a channel-last fp32 map
    weight = x_proj.float().reshape(NUM_ROUTES * (rank + 2 * n), d)
    projected = torch.matmul(u, weight.t()).view(b, h * w, NUM_ROUTES, rank + 2 * n)
    y = _LoopScan.apply(
        u,
        projected,
        delta_proj.float().transpose(1, 2).contiguous(),  # (4, r, d)
        _contiguous(delta_bias, (NUM_ROUTES, d), x),
        A.float().view(NUM_ROUTES, d, n).transpose(1, 2).contiguous(),  # (4, n, d)
        _contiguous(None if D is None else D.view(NUM_ROUTES, d).sum(0), (d,), x),
        h,
        w,
        delta_softplus,
        keep_states,
    )
    y = y if out_fp32 else y.to(x.dtype)
    return y.transpose(1, 2) if out_channel_first else y


def _contiguous(t: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous fp32 tensor of ``shape``; zeros where t is None."""
    if t is None:
        return like.new_zeros(shape, dtype=torch.float32)
    return t.float().reshape(shape).contiguous()
