"""``linear_attention`` and ``additive_recurrence``: the public entry points, with input checks and backend picking."""

from __future__ import annotations

import torch
from torch import Tensor

from vizoo.kernels.backend import fp32_under_autocast, pick_backend
from vizoo.kernels.linear_attention.reference import (
    additive_recurrence_reference,
    linear_attention_reference,
    segment_ids,
)
from vizoo.kernels.linear_attention.torch_ops import additive_recurrence_torch, linear_attention_torch


def linear_attention_triton(*args, **kwargs):
    """The Triton kernels, imported on first use (the module needs triton)."""
    from vizoo.kernels.linear_attention.triton import linear_attention_triton

    return linear_attention_triton(*args, **kwargs)


BACKENDS = {"reference": linear_attention_reference, "torch": linear_attention_torch, "triton": linear_attention_triton}
RECURRENCE_BACKENDS = {"reference": additive_recurrence_reference, "torch": additive_recurrence_torch}


@fp32_under_autocast
def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    cu_seqlens: Tensor | None = None,
    weights: Tensor | None = None,
    backend: str | None = None,
    kv_scale: float | str | None = None,
) -> Tensor:
    """Non-causal linear attention, accumulated in fp32 whatever the input dtype and under autocast.

    ``out_i = q_i·(Σ_j w_j k_jᵀ v_j) / (q_i·Σ_j w_j k_j + eps)``, or the numerator alone with ``normalize=False``
    (with per-token weights w that is VSSD's non-causal SSD, ``C·Σ_j Δ_j B_jᵀ x_j``). Feature maps (ELU+1, ReLU...)
    are the caller's: q and k are used as given.

    Args:
        q: (b, h, n, d), or (b, 1, n, d) shared by all of v's heads (VSSD's C).
        k: shaped as q (VSSD's B).
        v: (b, h, n, dv); dv may differ from d.
        normalize: divide by ``q_i·Σ_j w_j k_j + eps``.
        eps: added to the denominator. Keep it >= 1e-6 for fp16/bf16 models (1e-15 underflows).
        cu_seqlens: int32 (num_seqs + 1,) cumulative lengths starting at 0 (flash-attn's convention) with q, k, v
            packed as (1, h, total, ·): each sequence attends only within itself (token-pruned or mixed-resolution
            batches).
        weights: optional (b, h, n) weight per key token (default 1), h being v's heads.
        backend: ``"reference"`` (quadratic form, the specification), ``"torch"`` (KV first, exportable),
            ``"triton"`` (fused GPU kernels) or None: triton on CUDA, torch on the CPU and under export.
        kv_scale: pre-scaling of the key-value sums, as FLatten / MLLA / MALA apply it: ``"mean"`` multiplies
            Σ w k vᵀ and Σ w k by 1/N, N the length of the key's own sequence (their k/√N, v/√N and mean-of-k
            normalisation), or a float multiplies them by that constant. With ``normalize=True`` it changes only the
            weight of eps; with ``normalize=False`` it keeps the output (and fp16/bf16 results) in range.

    Returns:
        (b, h, n, dv) in q's dtype.
    """
    _check_inputs(q, k, v, cu_seqlens, weights, "linear_attention")
    weights = _scaled_weights(weights, kv_scale, q, cu_seqlens)
    impl = pick_backend("linear_attention", BACKENDS, backend, q.device)
    if q.shape[1] != v.shape[1] and impl is BACKENDS["triton"]:
        # The torch and reference paths broadcast a shared q/k head in their products (an exported Expand would keep
        # the graph off NNAPI); the Triton kernels index one head per program, so they get expanded views.
        q, k = q.expand(-1, v.shape[1], -1, -1), k.expand(-1, v.shape[1], -1, -1)
    return impl(q, k, v, normalize, eps, cu_seqlens, weights)


@fp32_under_autocast
def additive_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    cu_seqlens: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """LightNet's additive linear recurrence ("You Only Scan Once", arXiv 2405.21022), fp32 inside, under autocast too.

    Per feature of k: z_t = logcumsumexp(k)_t, s_t = exp(z_{t-1} - z_t) s_{t-1} + exp(k_t - z_t) k-weighted v_t, so
    the state is a softmax-weighted (over tokens, per feature) sum of v: ``s_t = Σ_{j<=t} softmax_{j<=t}(k)_jᵀ v_j``.
    It needs no decay toward either end, so a multi-dimensional input (an image) needs a single scan, in any order:
    non-causal, every token reads the last state, ``o_i = q_i·s_N``. ``causal=True`` gives ``o_t = q_t·s_t``.

    Args as ``linear_attention`` (q, k (b, h, n, d), v (b, h, n, dv), ``cu_seqlens``); backends ``"reference"`` (the
    sequential recurrence) and ``"torch"`` (closed form; non-causal is exportable, causal is O(n²·d) memory).
    """
    _check_inputs(q, k, v, cu_seqlens, None, "additive_recurrence", shared_head=False)
    if backend is None or backend == "triton":  # no Triton kernel for it: the torch path everywhere
        backend = "torch"
    impl = pick_backend("additive_recurrence", RECURRENCE_BACKENDS, backend, q.device)
    return impl(q, k, v, causal, cu_seqlens)


def kv_mean_scale(n: int) -> float:
    """The scale ``kv_scale="mean"`` applies for an n-token sequence: 1/n (FLatten/MLLA's k/√n times v/√n)."""
    return 1.0 / max(n, 1)


def _scaled_weights(weights: Tensor | None, kv_scale: float | str | None, q: Tensor, cu_seqlens: Tensor | None):
    if kv_scale is None:
        return weights
    if isinstance(kv_scale, str):
        if kv_scale != "mean":
            raise ValueError(f"linear_attention: kv_scale must be 'mean', a number or None, got {kv_scale!r}")
        if cu_seqlens is None:
            scale = q.new_ones((1, 1, q.shape[-2]), dtype=torch.float32) / q.shape[-2]
        else:
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).float()
            scale = (1.0 / lengths.clamp_min(1))[segment_ids(cu_seqlens, q.shape[-2])].view(1, 1, -1)
    else:
        scale = q.new_full((1, 1, q.shape[-2]), float(kv_scale), dtype=torch.float32)
    if weights is None:
        return scale.expand(q.shape[:-1])
    return weights * scale


def _check_inputs(q, k, v, cu_seqlens, weights, op, shared_head=True):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must be a 4-d tensor (batch, heads, tokens, head_dim), got {shape}")
        if not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be floating point, got {t.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    heads_ok = q.shape[1] == v.shape[1] or (shared_head and q.shape[1] == 1)
    if (v.shape[0], v.shape[2]) != (q.shape[0], q.shape[2]) or not heads_ok:
        shared = " (or any number when q has one head, shared)" if shared_head else ""
        raise ValueError(
            f"{op}: v must be (batch, heads, tokens, dv) with q's batch and tokens {q.shape[0], q.shape[2]} and q's "
            f"{q.shape[1]} heads{shared}, got {tuple(v.shape)}"
        )
    if weights is not None and tuple(weights.shape) != tuple(v.shape[:-1]):
        raise ValueError(
            f"{op}: weights must be (batch, heads, tokens) = {tuple(v.shape[:-1])}, got {tuple(weights.shape)}"
        )
    if cu_seqlens is None:
        return
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{op}: cu_seqlens must be a 1-d int32 tensor (num_seqs + 1,) of cumulative lengths, got "
            f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
        )
    if q.shape[0] != 1:
        raise ValueError(
            f"{op}: with cu_seqlens pack the sequences along tokens, q as (1, h, total, d); got {tuple(q.shape)}"
        )
    if cu_seqlens.device != q.device:
        raise ValueError(f"{op}: cu_seqlens is on {cu_seqlens.device}, q on {q.device}; put them on the same device")
    if torch.compiler.is_compiling():
        return  # the value checks below read the tensor
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != q.shape[2] or any(b < a for a, b in zip(cu[:-1], cu[1:])):
        raise ValueError(
            f"{op}: cu_seqlens must start at 0, never decrease and end at the packed length {q.shape[2]}; got {cu}"
        )
