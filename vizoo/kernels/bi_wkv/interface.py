"""``bi_wkv``: the public entry point, with input checks and backend picking."""

from __future__ import annotations

import torch
from torch import Tensor

from vizoo.kernels.backend import fp32_under_autocast, pick_backend
from vizoo.kernels.bi_wkv.chunked import bi_wkv_chunked
from vizoo.kernels.bi_wkv.reference import bi_wkv_reference
from vizoo.kernels.counting import record_kernel_macs


def bi_wkv_triton(*args, **kwargs):
    """The Triton kernels, imported on first use (the module needs triton)."""
    from vizoo.kernels.bi_wkv.triton import bi_wkv_triton

    return bi_wkv_triton(*args, **kwargs)


BACKENDS = {"reference": bi_wkv_reference, "torch": bi_wkv_chunked, "triton": bi_wkv_triton}


def bi_wkv(w: Tensor, u: Tensor, k: Tensor, v: Tensor, backend: str | None = None) -> Tensor:
    """Vision-RWKV's bidirectional WKV (Duan et al., ICLR 2025, arXiv 2403.02308), accumulated in fp32 whatever
    the input dtype and under autocast.

    Per batch and channel, over the T tokens in raster order::

        y_t = (Σ_{i≠t} e^{-(|t-i|-1)·w + k_i} v_i + e^{u + k_t} v_t) / (Σ_{i≠t} e^{-(|t-i|-1)·w + k_i} + e^{u + k_t})

    w and u are used as given: Vision-RWKV divides its spatial decay and first-token bonus by T before the call, and
    w is not exp-transformed, so it may be negative (weights then grow with distance). Every path subtracts the
    largest exponent of a token's sum before exp() and divides after, so large k and negative w stay finite.

    The official CUDA kernel (``cuda_new/bi_wkv_kernel.cu``) also computes in fp32 with running maxima, and adds
    1e-6 (its ``EPS``) to the denominator after both sums are scaled by exp(-running max): an epsilon relative to the
    largest term, not an absolute +1e-6 on the unscaled sum. vizoo does the same on every path: with m_t the largest
    exponent of token t's sums, ``y_t = Σ e^{E - m_t} v / (Σ e^{E - m_t} + 1e-6)`` (``reference.EPS``), which moves y
    by about 1e-6 relative; gradients hold m_t constant, as the official backward does.

    Args:
        w: (C,) decay per channel.
        u: (C,) bonus of the token's own key.
        k: (B, T, C) keys.
        v: (B, T, C) values, k's dtype.
        backend: ``"reference"`` (O(T²) direct form, the specification), ``"torch"`` (chunked, exportable,
            O(B·T·C) memory; autograd differentiates it), ``"triton"`` (GPU kernels, forward and backward) or None:
            triton on CUDA, torch on the CPU and under export.

    Returns:
        (B, T, C) in v's dtype.
    """
    _check_inputs(w, u, k, v)
    impl = pick_backend("bi_wkv", BACKENDS, backend, k.device)
    record_kernel_macs("bi_wkv", bi_wkv_macs(*k.shape))
    return _run(v, k, w, u, impl)


def bi_wkv_macs(b: int, t: int, c: int) -> int:
    """MACs of one Bi-WKV as Vision-RWKV counts them for its tables: 29 per token and channel (``vrwkv_flops`` in
    the official ``get_flops_backbone.py``, added to mmcv's count of the rest of the model)."""
    return 29 * b * t * c


@fp32_under_autocast
def _run(v: Tensor, k: Tensor, w: Tensor, u: Tensor, impl) -> Tensor:
    """The call behind ``bi_wkv``, v first so that ``fp32_under_autocast`` returns v's dtype."""
    return impl(w, u, k, v)


def _check_inputs(w, u, k, v) -> None:
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"bi_wkv: {name} must be a 3-d tensor (batch, tokens, channels), got {shape}")
        if not t.is_floating_point():
            raise ValueError(f"bi_wkv: {name} must be floating point (fp32, fp16 or bf16), got {t.dtype}")
    if k.shape[1] == 0:
        raise ValueError(f"bi_wkv: k and v hold no tokens (shape {tuple(k.shape)}); pass at least one token")
    if v.shape != k.shape:
        raise ValueError(f"bi_wkv: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if v.dtype != k.dtype:
        raise ValueError(f"bi_wkv: k and v must share a dtype, got {k.dtype} and {v.dtype}; cast one of them")
    channels = k.shape[-1]
    for name, t in (("w", w), ("u", u)):
        if not isinstance(t, Tensor) or t.shape != (channels,):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"bi_wkv: {name} must be a (C,) = ({channels},) tensor, one per channel of k, got {shape}")
        if t.dtype != torch.float32:
            raise ValueError(
                f"bi_wkv: {name} must be fp32 (keep the parameter in fp32), got {t.dtype}; pass {name}.float()"
            )
        if t.device != k.device:
            raise ValueError(f"bi_wkv: {name} is on {t.device}, k on {k.device}; put them on the same device")
