"""Vision-RWKV's bidirectional WKV: ``reference`` (the quadratic specification), ``chunked`` (the exportable torch
path), ``triton`` (GPU kernels, imported on first use) and the picking function ``bi_wkv``.

Why a folder of its own. Each direction of Bi-WKV is, in exact arithmetic, a selective scan with d_state 1: step 1,
A = -w (constant per channel), B = C = 1 and input e^{k} v (and e^{k} for the denominator), shifted by one token,
run forward and on the flipped sequence. ``selective_scan`` cannot serve it in fp32: it takes no log-offset for its
input, so e^{k} overflows for k above ~88 and, with negative w (Vision-RWKV does not exp-transform it, so
``A = -w > 0`` grows the state), e^{-w·T} overflows too, while any global shift of k underflows the tokens far from the
largest key to 0 / 0. Bi-WKV is a softmax over the tokens per channel with distance-dependent logits, and needs a
running maximum carried with its sums, which no vizoo kernel keeps. ``linear_attention`` (non-causal,
``q_i·Σ_j k_jᵀ v_j``) has no position-dependent decay at all, and ``additive_recurrence`` decays by the running
softmax of k, not by a fixed per-channel w.
"""

from vizoo.kernels.bi_wkv.interface import BACKENDS, bi_wkv, bi_wkv_macs

__all__ = ["BACKENDS", "bi_wkv", "bi_wkv_macs"]
