"""The selective scan as Triton kernels (forward and backward), registered as the torch custom ops
``vizoo::selective_scan_fwd`` / ``vizoo::selective_scan_bwd``.

Method. One program owns one batch item and a block of ``BLOCK_D`` channels (all in one B/C group) and walks the
sequence in chunks of ``BLOCK_L`` steps, carrying the state ``h`` (BLOCK_D, n) in fp32 registers. A chunk is loaded
as coalesced (BLOCK_D, BLOCK_L) tiles, expanded to (BLOCK_D, n, BLOCK_L) and solved with ``tl.associative_scan`` on
the pairs ``(a_t, x_t) = (exp(Δ_t A), Δ_t u_t B_t)``; the carried state is folded into the chunk's first step. With
n = 1 the state axis has extent one at compile time, so the reduction over n disappears and the channel block grows
(the n = 1 fast path). All arithmetic is fp32 whatever the input dtype.

Backward. The forward saves the state entering every chunk, (b, chunks, d, n): O(b·d·n·l / BLOCK_L) memory, not the
O(b·d·n·l) of all states. The backward walks the chunks in reverse: it recomputes the chunk's states from the saved
entry state (one forward scan), then runs the adjoint recurrence ``dh_t = dy_t C_t + a_{t+1} dh_{t+1}`` as a reversed
scan, carrying ``dh`` of the chunk's first step to the chunk before. Gradients of B and C are summed over the
program's channels and added to fp32 buffers with atomics; those of A, D and delta_bias are summed per batch item
and then over the batch.

Routes. The same kernels run VMamba's fused cross-scan (``vizoo.kernels.cross_selective_scan``): with ``ROUTES = 4``
a program scans the 2D map along each of the four routes in turn, reading u at the route's pixels, and adds every
route's output into the one merged map (delta, B, C are per route and already in route order). A plain scan is the
special case ``ROUTES = 1`` on a 1 x l "map". Every tensor is addressed through its own strides, so layouts
(channel-first or -last, transposed views) need no copies.

This module imports triton at import time; ``vizoo.kernels.backend`` imports it only when the Triton backend is used.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction

# Built for Triton's CPU interpreter: TRITON_INTERPRET=1 both when triton was first imported (its own jit library,
# tl.sum and the like, is defined then) and when this module was.
INTERPRETED = bool(knobs.runtime.interpret) and isinstance(tl.standard.sum, InterpretedFunction)

MAX_D_STATE = 64
# fp32 elements per live (BLOCK_D, n, BLOCK_L) tile, 4 warps: about 8 (forward) and 4 (backward) per thread. Chosen so
# that ptxas reports no register spills for sm_90 at every n; not yet timed on a GPU.
_FWD_TILE, _BWD_TILE, _NUM_WARPS = 1024, 512, 4


def chunk_length(n: int) -> int:
    """Steps per chunk (BLOCK_L) for d_state ``n``: 128 at n = 1 down to 16 at n >= 32, as the state grows."""
    return max(16, min(128, 512 // triton.next_power_of_2(n)))


def _block_d(n: int, block_l: int, divisor: int, tile: int) -> int:
    """Largest power of two dividing ``divisor`` that keeps BLOCK_D x next_pow2(n) x block_l within ``tile``."""
    cap = max(1, tile // (triton.next_power_of_2(n) * block_l))
    block = 1
    while block * 2 <= cap and divisor % (block * 2) == 0:
        block *= 2
    return block


@triton.jit
def _combine(a_l, x_l, a_r, x_r):
    """Compose two steps of ``h -> a h + x``: first (a_l, x_l), then (a_r, x_r)."""
    return a_l * a_r, x_l * a_r + x_r


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _route_pixels(t, valid, length, width, height, k, ROUTES: tl.constexpr):
    """(row, column) of the pixel visited at step ``t`` of route ``k``.

    ROUTES == 1 is a plain sequence (row 0, column t). Routes: 0 row-major, 1 column-major, 2 and 3 their reverses.
    """
    if ROUTES == 1:
        return t * 0, t
    s = tl.where(valid, t, 0)
    s = tl.where(k >= 2, length - 1 - s, s)
    column_major = k % 2 == 1
    return tl.where(column_major, s % height, s // width), tl.where(column_major, s // height, s % width)


@triton.jit
def _pixels(c, s_c, i, j, s_h, s_w):
    """Offsets (BLOCK_D, BLOCK_L) of channels ``c`` at the pixels (i, j) of a map with strides s_c, s_h, s_w."""
    return c[:, None] * s_c + (i * s_h + j * s_w)[None, :]


@triton.jit
def _load_steps(ptr, base, rows, t, s_row, s_l, mask):
    """The values at ``ptr[base + rows · s_row + t · s_l]``, (len(rows), BLOCK_L), in fp32; 0 where ``mask`` is off."""
    return tl.load(ptr + base + rows[:, None] * s_row + (t * s_l)[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_delta(ptr, base, c, t, s_c, s_l, valid, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Step sizes (BLOCK_D, BLOCK_L) in fp32 after bias and softplus, and the raw pre-softplus value; 0 past the end."""
    raw = _load_steps(ptr, base, c, t, s_c, s_l, valid[None, :])
    if HAS_BIAS:
        raw += bias[:, None]
    dt = _softplus(raw) if SOFTPLUS else raw
    return tl.where(valid[None, :], dt, 0.0), raw


@triton.jit
def _scan_fwd_kernel(
    u_ptr, su_b, su_c, su_h, su_w,
    dt_ptr, sd_b, sd_k, sd_c, sd_l,
    B_ptr, sB_b, sB_g, sB_n, sB_l,
    C_ptr, sC_b, sC_g, sC_n, sC_l,
    z_ptr, sz_b, sz_k, sz_c, sz_l,
    y_ptr, sy_b, sy_c, sy_h, sy_w,
    A_ptr, D_ptr, bias_ptr, states_ptr, last_ptr,
    d_route, n, length, width, height, channels_per_group, num_chunks,
    ROUTES: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * BLOCK_D
    c = c0 + tl.arange(0, BLOCK_D)  # channels of the map (of the sequence when ROUTES == 1)
    nn = tl.arange(0, N_PAD)
    n_ok = nn < n
    ll = tl.arange(0, BLOCK_L)
    first, last = (ll == 0)[None, None, :], (ll == BLOCK_L - 1)[None, None, :]
    channels = ROUTES * d_route
    for k in range(ROUTES):
        ch = k * d_route + c  # scan channels: rows of A, D, delta_bias and the states
        grp = (k * d_route + c0) // channels_per_group
        A = tl.load(A_ptr + ch[:, None] * n + nn[None, :], mask=n_ok[None, :], other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + ch).to(tl.float32) if HAS_D else None
        bias = tl.load(bias_ptr + ch).to(tl.float32) if HAS_BIAS else None
        h = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
        for chunk in range(num_chunks):
            t = chunk * BLOCK_L + ll
            valid = t < length
            i, j = _route_pixels(t, valid, length, width, height, k, ROUTES)
            u_ptrs = u_ptr + pid_b * su_b + _pixels(c, su_c, i, j, su_h, su_w)
            u = tl.load(u_ptrs, mask=valid[None, :], other=0.0).to(tl.float32)
            dt, _ = _load_delta(dt_ptr, pid_b * sd_b + k * sd_k, c, t, sd_c, sd_l, valid, bias, HAS_BIAS, SOFTPLUS)
            bc_ok = n_ok[:, None] & valid[None, :]
            Bt = _load_steps(B_ptr, pid_b * sB_b + grp * sB_g, nn, t, sB_n, sB_l, bc_ok)
            Ct = _load_steps(C_ptr, pid_b * sC_b + grp * sC_g, nn, t, sC_n, sC_l, bc_ok)
            if SAVE_STATES:  # the state entering this chunk, for the backward
                row = (pid_b * num_chunks + chunk) * channels + ch
                tl.store(states_ptr + row[:, None] * n + nn[None, :], h, mask=n_ok[None, :])
            a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, N_PAD, BLOCK_L); 1 past the end
            x = (dt * u)[:, None, :] * Bt[None, :, :]
            x = tl.where(first, x + a * h[:, :, None], x)
            _, hs = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
            h = tl.sum(tl.where(last, hs, 0.0), axis=2)  # padding steps keep the state: h is the state at l - 1
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                zt = _load_steps(z_ptr, pid_b * sz_b + k * sz_k, c, t, sz_c, sz_l, valid[None, :])
                y *= zt * tl.sigmoid(zt)
            y_ptrs = y_ptr + pid_b * sy_b + _pixels(c, sy_c, i, j, sy_h, sy_w)
            # Routes after the first add onto the merged map.
            y += tl.load(y_ptrs, mask=valid[None, :] & (k > 0), other=0.0).to(tl.float32)
            tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=valid[None, :])
        tl.store(last_ptr + (pid_b * channels + ch)[:, None] * n + nn[None, :], h, mask=n_ok[None, :])
        if ROUTES > 1:
            tl.debug_barrier()  # the next route reads pixels that other threads of this program wrote


@triton.jit
def _scan_bwd_kernel(
    u_ptr, su_b, su_c, su_h, su_w,
    du_ptr, sdu_b, sdu_c, sdu_h, sdu_w,
    dt_ptr, sd_b, sd_k, sd_c, sd_l,
    ddt_ptr, sdd_b, sdd_k, sdd_c, sdd_l,
    B_ptr, sB_b, sB_g, sB_n, sB_l,
    C_ptr, sC_b, sC_g, sC_n, sC_l,
    dB_ptr, dC_ptr, sg_b, sg_g, sg_n, sg_l,
    z_ptr, sz_b, sz_k, sz_c, sz_l,
    dz_ptr, sdz_b, sdz_k, sdz_c, sdz_l,
    dy_ptr, sy_b, sy_c, sy_h, sy_w,
    A_ptr, D_ptr, bias_ptr, states_ptr, dA_ptr, dD_ptr, dbias_ptr,
    d_route, n, length, width, height, channels_per_group, num_chunks,
    ROUTES: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * BLOCK_D
    c = c0 + tl.arange(0, BLOCK_D)
    nn = tl.arange(0, N_PAD)
    n_ok = nn < n
    ll = tl.arange(0, BLOCK_L)
    first, last = (ll == 0)[None, None, :], (ll == BLOCK_L - 1)[None, None, :]
    channels = ROUTES * d_route
    for k in range(ROUTES):
        ch = k * d_route + c
        grp = (k * d_route + c0) // channels_per_group
        A = tl.load(A_ptr + ch[:, None] * n + nn[None, :], mask=n_ok[None, :], other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + ch).to(tl.float32) if HAS_D else None
        bias = tl.load(bias_ptr + ch).to(tl.float32) if HAS_BIAS else None
        dA = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
        dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dh_next = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)  # dh at the first step of the chunk after this one
        for rev in range(num_chunks):
            chunk = num_chunks - 1 - rev
            t = chunk * BLOCK_L + ll
            valid = t < length
            i, j = _route_pixels(t, valid, length, width, height, k, ROUTES)
            u_ptrs = u_ptr + pid_b * su_b + _pixels(c, su_c, i, j, su_h, su_w)
            u = tl.load(u_ptrs, mask=valid[None, :], other=0.0).to(tl.float32)
            d_base = pid_b * sd_b + k * sd_k
            dt, raw = _load_delta(dt_ptr, d_base, c, t, sd_c, sd_l, valid, bias, HAS_BIAS, SOFTPLUS)
            # Step sizes one step later, for the decay a_{t+1} that carries dh backwards.
            valid1 = t + 1 < length
            dt1, _ = _load_delta(dt_ptr, d_base, c, t + 1, sd_c, sd_l, valid1, bias, HAS_BIAS, SOFTPLUS)
            bc_ok = n_ok[:, None] & valid[None, :]
            Bt = _load_steps(B_ptr, pid_b * sB_b + grp * sB_g, nn, t, sB_n, sB_l, bc_ok)
            Ct = _load_steps(C_ptr, pid_b * sC_b + grp * sC_g, nn, t, sC_n, sC_l, bc_ok)
            # Recompute the chunk's states from the saved entry state.
            row = (pid_b * num_chunks + chunk) * channels + ch
            h0 = tl.load(states_ptr + row[:, None] * n + nn[None, :], mask=n_ok[None, :], other=0.0)
            a = tl.exp(dt[:, None, :] * A[:, :, None])
            x = (dt * u)[:, None, :] * Bt[None, :, :]
            _, hs = tl.associative_scan((a, tl.where(first, x + a * h0[:, :, None], x)), axis=2, combine_fn=_combine)
            dy_ptrs = dy_ptr + pid_b * sy_b + _pixels(c, sy_c, i, j, sy_h, sy_w)
            dy = tl.load(dy_ptrs, mask=valid[None, :], other=0.0).to(tl.float32)
            if HAS_Z:
                zt = _load_steps(z_ptr, pid_b * sz_b + k * sz_k, c, t, sz_c, sz_l, valid[None, :])
                sig = tl.sigmoid(zt)
                y = tl.sum(hs * Ct[None, :, :], axis=1)
                if HAS_D:
                    y += Dv[:, None] * u
                dz = dy * y * sig * (1.0 + zt * (1.0 - sig))
                dz_off = pid_b * sdz_b + k * sdz_k + c[:, None] * sdz_c + (t * sdz_l)[None, :]
                tl.store(dz_ptr + dz_off, dz.to(dz_ptr.dtype.element_ty), mask=valid[None, :])
                dy = dy * zt * sig  # gradient of the pre-gate output
            du = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
            if HAS_D:
                dD += tl.sum(dy * u, axis=1)
                du = dy * Dv[:, None]
            # Adjoint recurrence dh_t = dy_t C_t + a_{t+1} dh_{t+1}, as a reversed scan.
            a1 = tl.exp(dt1[:, None, :] * A[:, :, None])
            g = dy[:, None, :] * Ct[None, :, :]
            g = tl.where(last, g + a1 * dh_next[:, :, None], g)
            _, dh = tl.associative_scan((a1, g), axis=2, combine_fn=_combine, reverse=True)
            dh_next = tl.sum(tl.where(first, dh, 0.0), axis=2)
            decayed = hs - x  # a_t h_{t-1}
            dA += tl.sum(dh * decayed * dt[:, None, :], axis=2)
            ddt = tl.sum(dh * (u[:, None, :] * Bt[None, :, :] + decayed * A[:, :, None]), axis=1)
            du += tl.sum(dh * Bt[None, :, :], axis=1) * dt
            g_off = pid_b * sg_b + grp * sg_g + nn[:, None] * sg_n + (t * sg_l)[None, :]
            tl.atomic_add(dB_ptr + g_off, tl.sum(dh * (dt * u)[:, None, :], axis=0), mask=bc_ok)
            tl.atomic_add(dC_ptr + g_off, tl.sum(hs * dy[:, None, :], axis=0), mask=bc_ok)
            if SOFTPLUS:
                ddt *= tl.sigmoid(raw)
            ddt = tl.where(valid[None, :], ddt, 0.0)
            if HAS_BIAS:
                dbias += tl.sum(ddt, axis=1)
            tl.store(
                ddt_ptr + pid_b * sdd_b + k * sdd_k + c[:, None] * sdd_c + (t * sdd_l)[None, :],
                ddt.to(ddt_ptr.dtype.element_ty),
                mask=valid[None, :],
            )
            du_off = pid_b * sdu_b + _pixels(c, sdu_c, i, j, sdu_h, sdu_w)
            du += tl.load(du_ptr + du_off, mask=valid[None, :] & (k > 0), other=0.0).to(tl.float32)
            tl.store(du_ptr + du_off, du.to(du_ptr.dtype.element_ty), mask=valid[None, :])
        row = pid_b * channels + ch
        tl.store(dA_ptr + row[:, None] * n + nn[None, :], dA, mask=n_ok[None, :])
        if HAS_D:
            tl.store(dD_ptr + row, dD)
        if HAS_BIAS:
            tl.store(dbias_ptr + row, dbias)
        if ROUTES > 1:
            tl.debug_barrier()


# ----------------------------------------------------------------------------------------------------------------
# Launchers. u and y are maps (b, d, H, W), read and written along the routes; delta and z (b, K, d, l) and B, C
# (b, G, n, l) are in route order, K routes owning the scan channels K·d. A plain scan is K = 1 on a map (b, d, 1, l).


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"vizoo's Triton kernels were built for the GPU and got {t.device.type} tensors; to run them on the CPU "
            "through Triton's interpreter, set TRITON_INTERPRET=1 before triton is first imported (importing timm "
            "imports it), e.g. at the top of the script"
        )


def _grid_and_block(u: Tensor, B: Tensor, n: int, block_l: int, tile: int, routes: int) -> tuple[tuple, int, int]:
    """Grid, BLOCK_D and channels per B/C group. A channel block must not straddle a group or a route."""
    b, d = u.shape[:2]
    channels_per_group = routes * d // B.shape[1]
    block_d = _block_d(n, block_l, math.gcd(d, channels_per_group), tile)
    return (b, d // block_d), block_d, channels_per_group


def _strides(t: Tensor | None, ndim: int) -> tuple[int, ...]:
    return t.stride() if t is not None else (0,) * ndim


def scan_forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    y: Tensor,
    softplus: bool,
    save_states: bool,
    block_l: int,
) -> tuple[Tensor, Tensor]:
    """Fill the map ``y`` and return (last state (b, K·d, n), chunk entry states (b, chunks, K·d, n) or empty)."""
    _check_device(u)
    b, d, height, width = u.shape
    routes, n, length = delta.shape[1], A.shape[1], height * width
    num_chunks = triton.cdiv(length, block_l)
    grid, block_d, per_group = _grid_and_block(u, B, n, block_l, _FWD_TILE, routes)
    f32 = dict(device=u.device, dtype=torch.float32)
    states = torch.empty((b, num_chunks, routes * d, n) if save_states else (0,), **f32)
    last = torch.empty(b, routes * d, n, **f32)
    A, D, delta_bias = (t.contiguous() if t is not None else None for t in (A, D, delta_bias))
    _scan_fwd_kernel[grid](
        u, *u.stride(),
        delta, *delta.stride(),
        B, *B.stride(),
        C, *C.stride(),
        z if z is not None else u, *_strides(z, 4),
        y, *y.stride(),
        A, D if D is not None else A, delta_bias if delta_bias is not None else A, states, last,
        d, n, length, width, height, per_group, num_chunks,
        ROUTES=routes, N_PAD=triton.next_power_of_2(n), BLOCK_D=block_d, BLOCK_L=block_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        SAVE_STATES=save_states, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return last, states


def scan_backward(
    dy: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    states: Tensor,
    du: Tensor,
    ddelta: Tensor,
    dz: Tensor | None,
    softplus: bool,
    block_l: int,
) -> tuple[Tensor, ...]:
    """Fill ``du``, ``ddelta``, ``dz`` (shaped like u, delta, z) and return (dA, dB, dC, dD, ddelta_bias) in the
    inputs' dtypes (dD and ddelta_bias None where absent). Accumulation is fp32."""
    _check_device(u)
    b, d, height, width = u.shape
    routes, n, length = delta.shape[1], A.shape[1], height * width
    num_chunks = triton.cdiv(length, block_l)
    grid, block_d, per_group = _grid_and_block(u, B, n, block_l, _BWD_TILE, routes)
    f32 = dict(device=u.device, dtype=torch.float32)
    dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
    dA = torch.empty(b, routes * d, n, **f32)
    dD = torch.empty(b, routes * d, **f32) if D is not None else None
    dbias = torch.empty(b, routes * d, **f32) if delta_bias is not None else None
    A, D, delta_bias = (t.contiguous() if t is not None else None for t in (A, D, delta_bias))
    _scan_bwd_kernel[grid](
        u, *u.stride(),
        du, *du.stride(),
        delta, *delta.stride(),
        ddelta, *ddelta.stride(),
        B, *B.stride(),
        C, *C.stride(),
        dB, dC, *dB.stride(),
        z if z is not None else u, *_strides(z, 4),
        dz if dz is not None else du, *_strides(dz, 4),
        dy, *dy.stride(),
        A, D if D is not None else A, delta_bias if delta_bias is not None else A, states, dA,
        dD if dD is not None else dA, dbias if dbias is not None else dA,
        d, n, length, width, height, per_group, num_chunks,
        ROUTES=routes, N_PAD=triton.next_power_of_2(n), BLOCK_D=block_d, BLOCK_L=block_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    return (
        dA.sum(0).to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# The plain selective scan as a custom op: (b, d, l) tensors seen as maps of height 1.


def _as_maps(u, delta, z):
    """(b, d, l) -> the launchers' views: u as a (b, d, 1, l) map, delta and z as one route (b, 1, d, l)."""
    return u.unsqueeze(2), delta.unsqueeze(1), z.unsqueeze(1) if z is not None else None


def _out_dtype(u: Tensor, out_fp32: bool) -> torch.dtype:
    return torch.float32 if out_fp32 else u.dtype


@torch.library.custom_op("vizoo::selective_scan_fwd", mutates_args=())
def _selective_scan_fwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    softplus: bool,
    out_fp32: bool,
    save_states: bool,
    block_l: int,
) -> tuple[Tensor, Tensor, Tensor]:
    y = torch.empty(u.shape, device=u.device, dtype=_out_dtype(u, out_fp32))
    um, dm, zm = _as_maps(u, delta, z)
    last, states = scan_forward(um, dm, A, B, C, D, zm, delta_bias, y.unsqueeze(2), softplus, save_states, block_l)
    return y, last, states


@_selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, out_fp32, save_states, block_l):
    (b, d, length), n = u.shape, A.shape[1]
    f32 = dict(device=u.device, dtype=torch.float32)
    states = u.new_empty((b, triton.cdiv(length, block_l), d, n) if save_states else (0,), dtype=torch.float32)
    return u.new_empty(u.shape, dtype=_out_dtype(u, out_fp32)), torch.empty(b, d, n, **f32), states


@torch.library.custom_op("vizoo::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd(
    dy: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    states: Tensor,
    softplus: bool,
    block_l: int,
) -> list[Tensor]:
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    um, dm, zm = _as_maps(u, delta, z)
    dum, ddm, dzm = _as_maps(du, ddelta, dz)
    dA, dB, dC, dD, dbias = scan_backward(
        dy.unsqueeze(2), um, dm, A, B, C, D, zm, delta_bias, states, dum, ddm, dzm, softplus, block_l
    )
    grads = [du, ddelta, dA, dB, dC, dD, dz, dbias]
    return [g if g is not None else u.new_empty(0) for g in grads]


@_selective_scan_bwd.register_fake
def _(dy, u, delta, A, B, C, D, z, delta_bias, states, softplus, block_l):
    return fake_grads(u, [u, delta, z], [A, B, C, D, delta_bias], order=[0, 1, 3, 4, 5, 6, 2, 7])


def fake_grads(like: Tensor, strided: list, fresh: list, order: list[int]) -> list[Tensor]:
    """Gradients as the kernels return them: ``strided`` ones shaped and strided like their input, ``fresh`` ones
    contiguous, absent ones empty; listed in ``order`` (indices into strided + fresh)."""
    grads = [torch.empty_like(t) if t is not None else None for t in strided]
    grads += [t.new_empty(t.shape) if t is not None else None for t in fresh]
    return [grads[i] if grads[i] is not None else like.new_empty(0) for i in order]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, _, _, block_l = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.softplus, ctx.block_l = softplus, block_l
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the last state and the chunk states


def _backward(ctx, dy, _d_last, _d_states):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    dy = dy if dy is not None else torch.zeros_like(u, dtype=torch.float32)
    if states.numel() == 0 and u.numel():
        raise RuntimeError("selective_scan (triton): backward through a forward run without gradients enabled")
    grads = _selective_scan_bwd(dy, u, delta, A, B, C, D, z, delta_bias, states, ctx.softplus, ctx.block_l)
    present = [True] * 5 + [t is not None for t in (D, z, delta_bias)]
    return (*[g if keep else None for g, keep in zip(grads, present)], None, None, None, None)


_selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def needs_states(*tensors: Tensor | None) -> bool:
    """Whether autograd will call the backward: grad mode on and some input requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    out_fp32: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as ``selective_scan_reference`` (B, C as (b, g, n, l)), plus ``out_fp32``; fp32 accumulation."""
    n = A.shape[1]
    if not 1 <= n <= MAX_D_STATE:
        raise ValueError(f"selective_scan (triton): d_state must be in 1..{MAX_D_STATE}, got {n}")
    save = needs_states(u, delta, A, B, C, D, z, delta_bias)
    y, last, _ = _selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_fp32, save, chunk_length(n)
    )
    return (y, last.detach()) if return_last_state else y
