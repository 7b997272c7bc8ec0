"""Non-causal linear attention as Triton kernels (forward and backward), registered as the torch custom ops
``vizoo::linear_attention_fwd`` / ``vizoo::linear_attention_bwd``.

Method. Sequences are described by cumulative lengths ``cu`` (one sequence [0, n) per batch item without
``cu_seqlens``). The forward is two kernels:

1. ``_kv_kernel``: programs own (sequence, a run of token blocks, batch·head, a block of the value dim). Each walks its
   token blocks accumulating ``S += (w ⊙ k)ᵀ v`` (d x BLOCK_DV) and ``z += Σ w k`` in fp32, then adds them to the
   sequence's fp32 state with atomics, so long sequences are summed by many programs at once.
2. ``_out_kernel``: programs own (sequence, token block, batch·head, value block): ``o = q S / (q·z + eps)``. The
   denominator is saved (fp32, one number per token) for the backward.

Backward, with ``D_i = do_i·o_i`` computed in torch: ``dnum = do / den``, ``dden = -D / den``. ``_kv_kernel`` is reused
to sum ``dS = Σ qᵀ dnum`` and ``dz = Σ dden q`` per sequence; then ``_grad_kernel`` gives per token
``dq = dnum Sᵀ + dden z``, ``dk = w (v dSᵀ + dz)``, ``dv = w k dS`` and ``dw = k·(v dSᵀ + dz)``, looping over value
blocks. Every tensor is addressed through its strides (non-contiguous views need no copies); all arithmetic is fp32
(``tl.dot`` in IEEE fp32 for fp32 inputs, TF32 for fp16/bf16 ones, whose own precision is lower).

This module imports triton at import time; ``vizoo.kernels.backend`` imports it only when the Triton backend is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction

INTERPRETED = bool(knobs.runtime.interpret) and isinstance(tl.standard.sum, InterpretedFunction)

MAX_HEAD_DIM = 256
_NUM_WARPS = 4


def block_n() -> int:
    """Tokens per block (a function so that tests can shrink it and cross block boundaries with short sequences)."""
    return 64


def _pads(d: int, dv: int) -> tuple[int, int]:
    """(D_PAD, BLOCK_DV): powers of two, at least 16 (tl.dot's minimum), value blocks of at most 64."""
    return max(16, triton.next_power_of_2(d)), max(16, min(64, triton.next_power_of_2(dv)))


@triton.jit
def _head_and_tokens(bh, heads, cu_ptr, seq):
    """Batch and head of the flat index ``bh``, and the token range [start, end) of sequence ``seq``."""
    return bh // heads, bh % heads, tl.load(cu_ptr + seq), tl.load(cu_ptr + seq + 1)


@triton.jit
def _kv_kernel(
    a_ptr, sa_b, sa_h, sa_n, sa_d,
    b_ptr, sb_b, sb_h, sb_n, sb_d,
    wa_ptr, swa_b, swa_h, swa_n,
    wb_ptr, wz_ptr,
    cu_ptr, s_ptr, z_ptr,
    heads, n, num_seqs, d, dv, blocks_per_program,
    D_PAD: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_WA: tl.constexpr, HAS_WB: tl.constexpr, HAS_WZ: tl.constexpr, WITH_Z: tl.constexpr,
):  # fmt: skip
    """Per sequence: S += Σ_t (wa_t a_t)ᵀ (wb_t b_t) and, with WITH_Z, z += Σ_t wz_t wa_t a_t, over this program's
    token blocks. wa is strided (b, h, n); wb and wz are contiguous fp32 (b·h, n).

    Forward: a = k, b = v, wa = w. Backward: a = q, b = do, wb = 1/den, wz = dden, giving dS and dz."""
    seq = tl.program_id(0)
    num_dv = tl.cdiv(dv, BLOCK_DV)
    bh = (tl.program_id(2) // num_dv).to(tl.int64)
    e0 = (tl.program_id(2) % num_dv) * BLOCK_DV
    bi, hi, start, end = _head_and_tokens(bh, heads, cu_ptr, seq)
    dd = tl.arange(0, D_PAD)
    ee = e0 + tl.arange(0, BLOCK_DV)
    d_ok, e_ok = dd < d, ee < dv
    acc = tl.zeros((D_PAD, BLOCK_DV), dtype=tl.float32)
    zacc = tl.zeros((D_PAD,), dtype=tl.float32)
    first = start + tl.program_id(1) * blocks_per_program * BLOCK_N
    for i in range(blocks_per_program):
        t = first + i * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = t < end
        a = tl.load(
            a_ptr + bi * sa_b + hi * sa_h + t[:, None] * sa_n + dd[None, :] * sa_d,
            mask=ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        b = tl.load(
            b_ptr + bi * sb_b + hi * sb_h + t[:, None] * sb_n + ee[None, :] * sb_d,
            mask=ok[:, None] & e_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_WA:
            a *= tl.load(wa_ptr + bi * swa_b + hi * swa_h + t * swa_n, mask=ok, other=0.0).to(tl.float32)[:, None]
        if HAS_WB:
            b *= tl.load(wb_ptr + bh * n + t, mask=ok, other=0.0)[:, None]
        acc += tl.dot(tl.trans(a), b, input_precision=DOT_PREC)
        if WITH_Z:
            if HAS_WZ:
                zacc += tl.sum(a * tl.load(wz_ptr + bh * n + t, mask=ok, other=0.0)[:, None], axis=0)
            else:
                zacc += tl.sum(a, axis=0)
    base = bh * num_seqs + seq
    tl.atomic_add(s_ptr + base * d * dv + dd[:, None] * dv + ee[None, :], acc, mask=d_ok[:, None] & e_ok[None, :])
    if WITH_Z:
        tl.atomic_add(z_ptr + base * d + dd, zacc, mask=d_ok & (e0 == 0))


@triton.jit
def _out_kernel(
    q_ptr, sq_b, sq_h, sq_n, sq_d,
    o_ptr, so_b, so_h, so_n, so_d,
    cu_ptr, s_ptr, z_ptr, den_ptr,
    heads, n, num_seqs, d, dv, eps,
    D_PAD: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
    NORMALIZE: tl.constexpr,
):  # fmt: skip
    """o = q S / (q·z + eps) for one token block of one sequence and one value block; den saved by value block 0."""
    seq = tl.program_id(0)
    num_dv = tl.cdiv(dv, BLOCK_DV)
    bh = (tl.program_id(2) // num_dv).to(tl.int64)
    e0 = (tl.program_id(2) % num_dv) * BLOCK_DV
    bi, hi, start, end = _head_and_tokens(bh, heads, cu_ptr, seq)
    t = start + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = t < end
    dd = tl.arange(0, D_PAD)
    ee = e0 + tl.arange(0, BLOCK_DV)
    d_ok, e_ok = dd < d, ee < dv
    q = tl.load(
        q_ptr + bi * sq_b + hi * sq_h + t[:, None] * sq_n + dd[None, :] * sq_d,
        mask=ok[:, None] & d_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    base = bh * num_seqs + seq
    S = tl.load(s_ptr + base * d * dv + dd[:, None] * dv + ee[None, :], mask=d_ok[:, None] & e_ok[None, :], other=0.0)
    o = tl.dot(q, S, input_precision=DOT_PREC)
    if NORMALIZE:
        z = tl.load(z_ptr + base * d + dd, mask=d_ok, other=0.0)
        den = tl.sum(q * z[None, :], axis=1) + eps
        o = o / den[:, None]
        tl.store(den_ptr + bh * n + t, den, mask=ok & (e0 == 0))
    tl.store(
        o_ptr + bi * so_b + hi * so_h + t[:, None] * so_n + ee[None, :] * so_d,
        o.to(o_ptr.dtype.element_ty),
        mask=ok[:, None] & e_ok[None, :],
    )


@triton.jit
def _grad_kernel(
    q_ptr, sq_b, sq_h, sq_n, sq_d,
    k_ptr, sk_b, sk_h, sk_n, sk_d,
    v_ptr, sv_b, sv_h, sv_n, sv_d,
    w_ptr, sw_b, sw_h, sw_n,
    do_ptr, sdo_b, sdo_h, sdo_n, sdo_d,
    dq_ptr, sdq_b, sdq_h, sdq_n, sdq_d,
    dk_ptr, sdk_b, sdk_h, sdk_n, sdk_d,
    dv_ptr, sdv_b, sdv_h, sdv_n, sdv_d,
    dw_ptr, inv_den_ptr, dden_ptr,
    cu_ptr, s_ptr, z_ptr, ds_ptr, dz_ptr,
    heads, n, num_seqs, d, dv,
    D_PAD: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
    NORMALIZE: tl.constexpr, HAS_W: tl.constexpr,
):  # fmt: skip
    """dq, dk, dv (and dw) for one token block of one sequence, looping over the value blocks."""
    seq = tl.program_id(0)
    bh = tl.program_id(2).to(tl.int64)
    bi, hi, start, end = _head_and_tokens(bh, heads, cu_ptr, seq)
    t = start + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = t < end
    dd = tl.arange(0, D_PAD)
    d_ok = dd < d
    td_ok = ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + bi * sq_b + hi * sq_h + t[:, None] * sq_n + dd[None, :] * sq_d, mask=td_ok, other=0.0)
    k = tl.load(k_ptr + bi * sk_b + hi * sk_h + t[:, None] * sk_n + dd[None, :] * sk_d, mask=td_ok, other=0.0)
    q, k = q.to(tl.float32), k.to(tl.float32)
    w = tl.full((BLOCK_N,), 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + bi * sw_b + hi * sw_h + t * sw_n, mask=ok, other=0.0).to(tl.float32)
    inv_den = tl.full((BLOCK_N,), 1.0, tl.float32)
    if NORMALIZE:
        inv_den = tl.load(inv_den_ptr + bh * n + t, mask=ok, other=0.0)
    base = bh * num_seqs + seq
    dq = tl.zeros((BLOCK_N, D_PAD), dtype=tl.float32)
    kd = tl.zeros((BLOCK_N, D_PAD), dtype=tl.float32)  # v dSᵀ (+ dz)
    for e0 in range(0, dv, BLOCK_DV):
        ee = e0 + tl.arange(0, BLOCK_DV)
        e_ok = ee < dv
        te_ok = ok[:, None] & e_ok[None, :]
        de_ok = d_ok[:, None] & e_ok[None, :]
        state = base * d * dv + dd[:, None] * dv + ee[None, :]
        S = tl.load(s_ptr + state, mask=de_ok, other=0.0)
        dS = tl.load(ds_ptr + state, mask=de_ok, other=0.0)
        do = tl.load(
            do_ptr + bi * sdo_b + hi * sdo_h + t[:, None] * sdo_n + ee[None, :] * sdo_d, mask=te_ok, other=0.0
        ).to(tl.float32)
        v = tl.load(v_ptr + bi * sv_b + hi * sv_h + t[:, None] * sv_n + ee[None, :] * sv_d, mask=te_ok, other=0.0).to(
            tl.float32
        )
        dq += tl.dot(do * inv_den[:, None], tl.trans(S), input_precision=DOT_PREC)
        kd += tl.dot(v, tl.trans(dS), input_precision=DOT_PREC)
        dv_blk = tl.dot(k, dS, input_precision=DOT_PREC) * w[:, None]
        tl.store(
            dv_ptr + bi * sdv_b + hi * sdv_h + t[:, None] * sdv_n + ee[None, :] * sdv_d,
            dv_blk.to(dv_ptr.dtype.element_ty),
            mask=te_ok,
        )
    if NORMALIZE:
        z = tl.load(z_ptr + base * d + dd, mask=d_ok, other=0.0)
        dz = tl.load(dz_ptr + base * d + dd, mask=d_ok, other=0.0)
        dden = tl.load(dden_ptr + bh * n + t, mask=ok, other=0.0)
        dq += dden[:, None] * z[None, :]
        kd += dz[None, :]
    tl.store(
        dq_ptr + bi * sdq_b + hi * sdq_h + t[:, None] * sdq_n + dd[None, :] * sdq_d,
        dq.to(dq_ptr.dtype.element_ty),
        mask=td_ok,
    )
    tl.store(
        dk_ptr + bi * sdk_b + hi * sdk_h + t[:, None] * sdk_n + dd[None, :] * sdk_d,
        (kd * w[:, None]).to(dk_ptr.dtype.element_ty),
        mask=td_ok,
    )
    if HAS_W:
        tl.store(dw_ptr + bh * n + t, tl.sum(k * kd, axis=1), mask=ok)


# ----------------------------------------------------------------------------------------------------------------
# Launchers and the custom ops.


def _check_device(t: Tensor) -> None:
    if t.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"vizoo's Triton kernels were built for the GPU and got {t.device.type} tensors; to run them on the CPU "
            "through Triton's interpreter, set TRITON_INTERPRET=1 before triton is first imported (importing timm "
            "imports it), e.g. at the top of the script"
        )


def _dot_precision(x: Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _strides(t: Tensor | None, ndim: int) -> tuple[int, ...]:
    return t.stride() if t is not None else (0,) * ndim


def _sequences(cu: Tensor, n: int, batch: int) -> tuple[Tensor, int, int]:
    """(cu as int32 on the device, number of sequences, longest length); one sequence [0, n) without packing."""
    if cu.numel() == 0:
        return torch.tensor([0, n], dtype=torch.int32, device=cu.device), 1, n
    lengths = cu[1:] - cu[:-1]
    return cu.to(torch.int32).contiguous(), cu.numel() - 1, int(lengths.max())


def _kv_grid(num_seqs: int, max_len: int, bh: int, dv: int, block_dv: int, bn: int) -> tuple[tuple, int]:
    """Grid and blocks per program: up to 8 token blocks per program, so that long sequences still spread out."""
    blocks = triton.cdiv(max(max_len, 1), bn)
    per_program = min(8, blocks)
    return (num_seqs, triton.cdiv(blocks, per_program), bh * triton.cdiv(dv, block_dv)), per_program


@torch.library.custom_op("vizoo::linear_attention_fwd", mutates_args=())
def _linear_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, weights: Tensor | None, cu: Tensor, normalize: bool, eps: float, bn: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (out, den (b·h, n) fp32 or empty, S, z): the fp32 per-sequence states are kept for the backward."""
    _check_device(q)
    b, h, n, d = q.shape
    dv = v.shape[-1]
    cu, num_seqs, max_len = _sequences(cu, n, b)
    d_pad, block_dv = _pads(d, dv)
    f32 = dict(device=q.device, dtype=torch.float32)
    S = torch.zeros(b * h, num_seqs, d, dv, **f32)
    z = torch.zeros(b * h, num_seqs, d, **f32) if normalize else torch.zeros(0, **f32)
    den = torch.empty(b * h, n, **f32) if normalize else torch.zeros(0, **f32)
    out = torch.empty(b, h, n, dv, device=q.device, dtype=q.dtype)
    if n == 0 or max_len == 0:
        return out.zero_(), den, S, z
    prec = _dot_precision(q)
    grid, per_program = _kv_grid(num_seqs, max_len, b * h, dv, block_dv, bn)
    _kv_kernel[grid](
        k, *k.stride(), v, *v.stride(), weights if weights is not None else k, *_strides(weights, 3),
        S, S, cu, S, z if normalize else S,
        h, n, num_seqs, d, dv, per_program,
        D_PAD=d_pad, BLOCK_DV=block_dv, BLOCK_N=bn, DOT_PREC=prec,
        HAS_WA=weights is not None, HAS_WB=False, HAS_WZ=False, WITH_Z=normalize, num_warps=_NUM_WARPS,
    )  # fmt: skip
    grid = (num_seqs, triton.cdiv(max_len, bn), b * h * triton.cdiv(dv, block_dv))
    _out_kernel[grid](
        q, *q.stride(), out, *out.stride(), cu, S, z if normalize else S, den if normalize else S,
        h, n, num_seqs, d, dv, eps,
        D_PAD=d_pad, BLOCK_DV=block_dv, BLOCK_N=bn, DOT_PREC=prec, NORMALIZE=normalize, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return out, den, S, z


@_linear_attention_fwd.register_fake
def _(q, k, v, weights, cu, normalize, eps, bn):
    b, h, n, d = q.shape
    num_seqs = max(cu.numel() - 1, 1)
    f32 = dict(device=q.device, dtype=torch.float32)
    return (
        q.new_empty(b, h, n, v.shape[-1]),
        torch.empty(b * h, n, **f32) if normalize else torch.empty(0, **f32),
        torch.empty(b * h, num_seqs, d, v.shape[-1], **f32),
        torch.empty(b * h, num_seqs, d, **f32) if normalize else torch.empty(0, **f32),
    )


@torch.library.custom_op("vizoo::linear_attention_bwd", mutates_args=())
def _linear_attention_bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: Tensor | None,
    cu: Tensor,
    out: Tensor,
    den: Tensor,
    S: Tensor,
    z: Tensor,
    normalize: bool,
    bn: int,
) -> list[Tensor]:
    _check_device(q)
    b, h, n, d = q.shape
    dv = v.shape[-1]
    cu, num_seqs, max_len = _sequences(cu, n, b)
    d_pad, block_dv = _pads(d, dv)
    f32 = dict(device=q.device, dtype=torch.float32)
    dq, dk, dvv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dw = torch.zeros(b * h, n, **f32)
    dS = torch.zeros(b * h, num_seqs, d, dv, **f32)
    dz = torch.zeros(b * h, num_seqs, d, **f32) if normalize else S
    inv_den = dden = S
    if normalize:
        inv_den = (1.0 / den).contiguous()
        dden = (-(do.float() * out.float()).sum(-1).reshape(b * h, n) * inv_den).contiguous()
    if n and max_len:
        prec = _dot_precision(q)
        grid, per_program = _kv_grid(num_seqs, max_len, b * h, dv, block_dv, bn)
        _kv_kernel[grid](
            q, *q.stride(), do, *do.stride(), q, 0, 0, 0,
            inv_den, dden, cu, dS, dz,
            h, n, num_seqs, d, dv, per_program,
            D_PAD=d_pad, BLOCK_DV=block_dv, BLOCK_N=bn, DOT_PREC=prec,
            HAS_WA=False, HAS_WB=normalize, HAS_WZ=normalize, WITH_Z=normalize, num_warps=_NUM_WARPS,
        )  # fmt: skip
        grid = (num_seqs, triton.cdiv(max_len, bn), b * h)
        _grad_kernel[grid](
            q, *q.stride(), k, *k.stride(), v, *v.stride(),
            weights if weights is not None else q, *_strides(weights, 3),
            do, *do.stride(), dq, *dq.stride(), dk, *dk.stride(), dvv, *dvv.stride(),
            dw, inv_den, dden, cu, S, z, dS, dz,
            h, n, num_seqs, d, dv,
            D_PAD=d_pad, BLOCK_DV=block_dv, BLOCK_N=bn, DOT_PREC=prec,
            NORMALIZE=normalize, HAS_W=weights is not None, num_warps=_NUM_WARPS,
        )  # fmt: skip
    dw = dw.view(b, h, n).to(weights.dtype) if weights is not None else q.new_empty(0)
    return [dq, dk, dvv, dw]


@_linear_attention_bwd.register_fake
def _(do, q, k, v, weights, cu, out, den, S, z, normalize, bn):
    dw = weights.new_empty(weights.shape) if weights is not None else q.new_empty(0)
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dw]


def _setup_context(ctx, inputs, output):
    q, k, v, weights, cu, normalize, _, bn = inputs
    out, den, S, z = output
    ctx.save_for_backward(q, k, v, weights, cu, out, den, S, z)
    ctx.normalize, ctx.bn = normalize, bn
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dden, _dS, _dz):
    q, k, v, weights, cu, out, den, S, z = ctx.saved_tensors
    if dout is None:
        return None, None, None, None, None, None, None, None
    dq, dk, dv, dw = _linear_attention_bwd(dout, q, k, v, weights, cu, out, den, S, z, ctx.normalize, ctx.bn)
    return dq, dk, dv, dw if weights is not None else None, None, None, None, None


_linear_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    cu_seqlens: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Same contract as ``linear_attention_reference``; fp32 accumulation, output in q's dtype."""
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(
            f"linear_attention (triton): head dims up to {MAX_HEAD_DIM} are supported, got d={q.shape[-1]}, "
            f"dv={v.shape[-1]}; use backend='torch'"
        )
    cu = cu_seqlens if cu_seqlens is not None else q.new_empty(0, dtype=torch.int32)
    return _linear_attention_fwd(q, k, v, weights, cu, normalize, float(eps), block_n())[0]
