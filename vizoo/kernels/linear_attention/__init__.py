"""Non-causal linear attention (``reference`` quadratic spec, ``torch`` KV-first exportable path, ``triton`` fused
kernels imported on first use), with packed variable-length sequences and per-token weights, and LightNet's additive
recurrence."""

from vizoo.kernels.linear_attention.interface import (
    BACKENDS,
    RECURRENCE_BACKENDS,
    additive_recurrence,
    kv_mean_scale,
    linear_attention,
)

__all__ = ["BACKENDS", "RECURRENCE_BACKENDS", "additive_recurrence", "kv_mean_scale", "linear_attention"]
