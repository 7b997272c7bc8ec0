"""Bi-WKV as Triton kernels (forward and backward), registered as the torch custom ops ``vizoo::bi_wkv_fwd`` /
``vizoo::bi_wkv_bwd``.

Method. Programs own (batch, a block of channels) and walk the tokens twice, carrying per channel a decayed sum of
the tokens passed, ``Σ_i e^{k_i - (d_i - 1)·w} (v_i, 1)`` with d_i the distance from the reader, in anchored form:
the sums are kept relative to their largest term (the anchor, a key and its position), so exp() only ever sees
non-positive arguments. The relative weights of the terms do not change as the reader moves, so a step adds one term
(``e^{r}``, r its exponent relative to the anchor, or it becomes the anchor and the sums are scaled by ``e^{-r}``),
and a reader computes its offset ``k_anchor - (d_anchor - 1)·w`` afresh: the offset never accumulates rounding over
the walk, as it would if the decay were subtracted from it at every step.

Forward: a right-to-left walk stores, for every token, the part of its sum that lies after it (i > t); a
left-to-right walk carries the part before it (i < t), adds the token's own term e^{u + k_t} and writes ``y_t`` and
``lse_t = m_t + log(Σ_i e^{E_ti - m_t} + EPS)`` (fp32, kept for the backward with an fp32 copy of y); m_t, the
largest exponent, is the largest of the three parts' offsets.

Backward, with P_ti = e^{E_ti - lse_t} (each at most 1), g = dL/dy and m_t held constant as in the reference::

    dv_i = Σ_t P_ti g_t          dk_i = Σ_t P_ti g_t (v_i - y_t)          du = Σ_t P_tt g_t (v_t - y_t)
    dw   = -Σ_{t≠i} (|t - i| - 1) P_ti g_t (v_i - y_t)

The sums over t are the same bidirectional walk with keys -lse_t and values g_t and g_t·y_t, each with a second sum
weighted by the distance that dw needs (every term's distance grows by one per step: ``D <- D + h``). A right-to-left
walk writes the after-i parts of dk and dv to fp32 scratch, a left-to-right walk adds the before-i parts and the
diagonal. dw and du are summed per program and then over the batch in torch. dw_i comes as ``v_i·D[g] - D[g·y]``,
the split the official backward uses too; where far tokens dominate (w < 0 with a large T·|w|) the two terms nearly
cancel and dw keeps fewer digits than the torch path, which differentiates each pair's exponent. Every input is read
through its strides; all arithmetic is fp32 whatever the input dtype.

This module imports triton at import time; ``vizoo.kernels.bi_wkv.interface`` imports it only when the Triton
backend is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction

from vizoo.kernels.bi_wkv.reference import EPS

INTERPRETED = bool(knobs.runtime.interpret) and isinstance(tl.standard.sum, InterpretedFunction)

_NEG = tl.constexpr(-1e30)  # anchor key of an empty sum: exp(_NEG - anything finite) is 0, and it stays finite
_EPS = tl.constexpr(EPS)
_NUM_WARPS = 1


def block_c(channels: int) -> int:
    """Channels per program (a function so that tests can shrink it and cross block boundaries with few channels)."""
    return max(16, min(32, triton.next_power_of_2(channels)))


@triton.jit
def _relative(anchor_key, anchor_pos, w_dir, key, pos):
    """Exponent of the term (key, pos) relative to the anchor; ``w_dir`` is w when the terms lie before the reader
    (walking left to right) and -w when they lie after it."""
    return key - anchor_key + (pos - anchor_pos) * w_dir


@triton.jit
def _offset(anchor_key, anchor_pos, w_dir, w, reader):
    """Largest exponent of the sum as the token at ``reader`` sees it: the anchor's ``k - (distance - 1)·w``."""
    return anchor_key + (anchor_pos - reader) * w_dir + w


@triton.jit
def _push(num, den, anchor_key, anchor_pos, w_dir, key, pos, value):
    """Add the term e^{key} (value, 1) at ``pos`` to the sums (num, den), kept relative to their anchor."""
    r = _relative(anchor_key, anchor_pos, w_dir, key, pos)
    m = tl.maximum(r, 0.0)
    keep, add = tl.exp(-m), tl.exp(r - m)
    new = r > 0
    return num * keep + add * value, den * keep + add, tl.where(new, key, anchor_key), tl.where(new, pos, anchor_pos)


@triton.jit
def _fwd_kernel(
    w_ptr, u_ptr,
    k_ptr, sk_b, sk_t, sk_c,
    v_ptr, sv_b, sv_t, sv_c,
    y_ptr, y32_ptr, lse_ptr, num_ptr, den_ptr, top_ptr,
    T, C,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y (B, T, C) in the output dtype, y32 and lse (B, T, C) fp32; num, den, top (B, T, C) fp32 scratch for the
    after-t parts."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < C
    w = tl.load(w_ptr + c, mask=ok, other=0.0)
    u = tl.load(u_ptr + c, mask=ok, other=0.0)
    k_row = k_ptr + b * sk_b + c * sk_c
    v_row = v_ptr + b * sv_b + c * sv_c
    flat = b * T * C + c  # (b, 0, c) in the contiguous (B, T, C) buffers
    zero = tl.zeros((BLOCK_C,), dtype=tl.float32)
    num, den, anchor_key, anchor_pos = zero, zero, zero + _NEG, zero
    for s in range(T):
        t = T - 1 - s
        tl.store(num_ptr + flat + t * C, num, mask=ok)
        tl.store(den_ptr + flat + t * C, den, mask=ok)
        tl.store(top_ptr + flat + t * C, _offset(anchor_key, anchor_pos, -w, w, t * 1.0), mask=ok)
        key = tl.load(k_row + t * sk_t, mask=ok, other=0.0).to(tl.float32)
        value = tl.load(v_row + t * sv_t, mask=ok, other=0.0).to(tl.float32)
        num, den, anchor_key, anchor_pos = _push(num, den, anchor_key, anchor_pos, -w, key, t * 1.0, value)
    num, den, anchor_key, anchor_pos = zero, zero, zero + _NEG, zero
    for t in range(T):
        key = tl.load(k_row + t * sk_t, mask=ok, other=0.0).to(tl.float32)
        value = tl.load(v_row + t * sv_t, mask=ok, other=0.0).to(tl.float32)
        after_num = tl.load(num_ptr + flat + t * C, mask=ok, other=0.0)
        after_den = tl.load(den_ptr + flat + t * C, mask=ok, other=0.0)
        after_top = tl.load(top_ptr + flat + t * C, mask=ok, other=_NEG)
        top = _offset(anchor_key, anchor_pos, w, w, t * 1.0)
        own = u + key
        m = tl.maximum(tl.maximum(top, after_top), own)
        before, after, diag = tl.exp(top - m), tl.exp(after_top - m), tl.exp(own - m)
        total = den * before + after_den * after + diag + _EPS
        y = (num * before + after_num * after + diag * value) / total
        tl.store(y32_ptr + flat + t * C, y, mask=ok)
        tl.store(lse_ptr + flat + t * C, m + tl.log(total), mask=ok)
        tl.store(y_ptr + flat + t * C, y.to(y_ptr.dtype.element_ty), mask=ok)
        num, den, anchor_key, anchor_pos = _push(num, den, anchor_key, anchor_pos, w, key, t * 1.0, value)


@triton.jit
def _bwd_kernel(
    w_ptr, u_ptr,
    k_ptr, sk_b, sk_t, sk_c,
    v_ptr, sv_b, sv_t, sv_c,
    g_ptr, sg_b, sg_t, sg_c,
    y32_ptr, lse_ptr, part_v_ptr, part_k_ptr,
    dk_ptr, dv_ptr, dw_ptr, du_ptr,
    T, C,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dk, dv (B, T, C) contiguous in the input dtype; dw, du (B, C) fp32 per batch item; part_v, part_k (B, T, C)
    fp32 scratch for the after-i parts of dv and dk."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < C
    w = tl.load(w_ptr + c, mask=ok, other=0.0)
    u = tl.load(u_ptr + c, mask=ok, other=0.0)
    k_row = k_ptr + b * sk_b + c * sk_c
    v_row = v_ptr + b * sv_b + c * sv_c
    g_row = g_ptr + b * sg_b + c * sg_c
    flat = b * T * C + c
    zero = tl.zeros((BLOCK_C,), dtype=tl.float32)
    dw, du = zero, zero
    for direction in tl.static_range(2):  # 0: tokens after i, right to left; 1: tokens before i, left to right
        w_dir = -w if direction == 0 else w
        a, bb, da, db = zero, zero, zero, zero  # Σ e^{rel} g_t, Σ e^{rel} g_t y_t and their distance-weighted sums
        anchor_key, anchor_pos = zero + _NEG, zero
        for s in range(T):
            i = T - 1 - s if direction == 0 else s
            key = tl.load(k_row + i * sk_t, mask=ok, other=0.0).to(tl.float32)
            value = tl.load(v_row + i * sv_t, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(g_row + i * sg_t, mask=ok, other=0.0).to(tl.float32)
            y = tl.load(y32_ptr + flat + i * C, mask=ok, other=0.0)
            lse = tl.load(lse_ptr + flat + i * C, mask=ok, other=0.0)
            scale = tl.exp(key + _offset(anchor_key, anchor_pos, w_dir, w, i * 1.0))  # largest P_ti here: <= 1
            grad_v = scale * a
            grad_k = value * grad_v - scale * bb
            dw -= scale * (value * da - db)
            if direction == 0:
                tl.store(part_v_ptr + flat + i * C, grad_v, mask=ok)
                tl.store(part_k_ptr + flat + i * C, grad_k, mask=ok)
            else:
                p = tl.exp(u + key - lse)
                du += p * g * (value - y)
                grad_v += tl.load(part_v_ptr + flat + i * C, mask=ok, other=0.0) + p * g
                grad_k += tl.load(part_k_ptr + flat + i * C, mask=ok, other=0.0) + p * g * (value - y)
                tl.store(dv_ptr + flat + i * C, grad_v.to(dv_ptr.dtype.element_ty), mask=ok)
                tl.store(dk_ptr + flat + i * C, grad_k.to(dk_ptr.dtype.element_ty), mask=ok)
            # Step to the next reader: every term's distance grows by one, then token i joins the sums.
            da, db = da + a, db + bb
            r = _relative(anchor_key, anchor_pos, w_dir, -lse, i * 1.0)
            m = tl.maximum(r, 0.0)
            keep, add = tl.exp(-m), tl.exp(r - m)
            a, bb, da, db = a * keep + add * g, bb * keep + add * g * y, da * keep, db * keep
            anchor_key, anchor_pos = tl.where(r > 0, -lse, anchor_key), tl.where(r > 0, i * 1.0, anchor_pos)
    tl.store(dw_ptr + b * C + c, dw, mask=ok)
    tl.store(du_ptr + b * C + c, du, mask=ok)


# ----------------------------------------------------------------------------------------------------------------
# Launchers and the custom ops.


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"vizoo's Triton kernels were built for the GPU and got {t.device.type} tensors; to run them on the CPU "
            "through Triton's interpreter, set TRITON_INTERPRET=1 before triton is first imported (importing timm "
            "imports it), e.g. at the top of the script"
        )


@torch.library.custom_op("vizoo::bi_wkv_fwd", mutates_args=())
def _bi_wkv_fwd(w: Tensor, u: Tensor, k: Tensor, v: Tensor, bc: int) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y in v's dtype, y in fp32, lse in fp32), each (B, T, C) contiguous."""
    _check_device(k)
    batch, length, channels = k.shape
    f32 = dict(device=k.device, dtype=torch.float32)
    y = torch.empty(batch, length, channels, device=k.device, dtype=v.dtype)
    y32, lse = torch.empty(batch, length, channels, **f32), torch.empty(batch, length, channels, **f32)
    if y.numel() == 0:
        return y, y32, lse
    after = torch.empty(3, batch, length, channels, **f32)
    _fwd_kernel[(batch, triton.cdiv(channels, bc))](
        w, u, k, *k.stride(), v, *v.stride(), y, y32, lse, *after,
        length, channels,
        BLOCK_C=bc, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return y, y32, lse


@_bi_wkv_fwd.register_fake
def _(w, u, k, v, bc):
    f32 = dict(device=k.device, dtype=torch.float32)
    y = torch.empty(k.shape, device=k.device, dtype=v.dtype)
    return y, torch.empty(k.shape, **f32), torch.empty(k.shape, **f32)


@torch.library.custom_op("vizoo::bi_wkv_bwd", mutates_args=())
def _bi_wkv_bwd(
    g: Tensor, w: Tensor, u: Tensor, k: Tensor, v: Tensor, y32: Tensor, lse: Tensor, bc: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (dw, du, dk, dv): dw, du (C,) fp32, dk and dv (B, T, C) in k's and v's dtypes."""
    _check_device(k)
    batch, length, channels = k.shape
    f32 = dict(device=k.device, dtype=torch.float32)
    dk = torch.empty(batch, length, channels, device=k.device, dtype=k.dtype)
    dv = torch.empty(batch, length, channels, device=k.device, dtype=v.dtype)
    dw, du = torch.zeros(batch, channels, **f32), torch.zeros(batch, channels, **f32)
    if dk.numel():
        part = torch.empty(2, batch, length, channels, **f32)
        _bwd_kernel[(batch, triton.cdiv(channels, bc))](
            w, u, k, *k.stride(), v, *v.stride(), g, *g.stride(), y32, lse, *part, dk, dv, dw, du,
            length, channels,
            BLOCK_C=bc, num_warps=_NUM_WARPS,
        )  # fmt: skip
    return dw.sum(0), du.sum(0), dk, dv


@_bi_wkv_bwd.register_fake
def _(g, w, u, k, v, y32, lse, bc):
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    return w.new_empty(w.shape), u.new_empty(u.shape), dk, torch.empty(v.shape, device=v.device, dtype=v.dtype)


def _setup_context(ctx, inputs, output):
    w, u, k, v, bc = inputs
    _, y32, lse = output
    ctx.save_for_backward(w, u, k, v, y32, lse)
    ctx.bc = bc
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _dy32, _dlse):
    if dy is None:
        return None, None, None, None, None
    w, u, k, v, y32, lse = ctx.saved_tensors
    dw, du, dk, dv = _bi_wkv_bwd(dy, w, u, k, v, y32, lse, ctx.bc)
    return dw, du, dk, dv, None


_bi_wkv_fwd.register_autograd(_backward, setup_context=_setup_context)


def bi_wkv_triton(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Same contract as ``bi_wkv_reference``; fp32 accumulation, output in v's dtype."""
    return _bi_wkv_fwd(w.contiguous(), u.contiguous(), k, v, block_c(k.shape[-1]))[0]
