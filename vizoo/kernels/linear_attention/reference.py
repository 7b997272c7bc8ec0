"""The specification of non-causal linear attention: the quadratic form, written the slow and obvious way.

For each query token i of a sequence, with per-key-token weights w_j (1 when not given)::

    out_i = Σ_j (q_i·k_j) w_j v_j / (Σ_j (q_i·k_j) w_j + eps)      (normalize=True)
    out_i = Σ_j (q_i·k_j) w_j v_j                                    (normalize=False)

which is q_i·(Σ_j w_j k_jᵀ v_j) / (q_i·Σ_j w_j k_j + eps) read right to left. With ``cu_seqlens`` the (1, h, total, d)
inputs hold several packed sequences and j runs only over the sequence of i (a block-diagonal score matrix). Every
product is fp32; the result is cast back to q's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """Sequence index of each of the ``total`` packed tokens, (total,) int64, without a Python loop."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)


def linear_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    cu_seqlens: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """(b, h, n, d) q, k; (b, h, n, dv) v; optional (b, h, n) weights -> (b, h, n, dv) in q's dtype. O(n²) memory."""
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = qf @ kf.transpose(-1, -2)  # (b, h, n, n): query i against key j
    if weights is not None:
        scores = scores * weights.float().unsqueeze(-2)
    if cu_seqlens is not None:
        seg = segment_ids(cu_seqlens, q.shape[-2])
        scores = scores * (seg[:, None] == seg[None, :]).to(scores.dtype)
    out = scores @ vf
    if normalize:
        out = out / (scores.sum(-1, keepdim=True) + eps)
    return out.to(q.dtype)


def additive_recurrence_reference(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, cu_seqlens: Tensor | None = None
) -> Tensor:
    """LightNet's additive linear recurrence, run literally as a sequential scan (one step per token).

    Per feature a of k: z_t = logcumsumexp(k)_t, k̃_t = exp(k_t - z_t), g_t = z_{t-1} - z_t and
    s_t = exp(g_t) ⊙ s_{t-1} + k̃_tᵀ v_t, so s_t = Σ_{j<=t} softmax_{j<=t}(k)_j ᵀ v_j. Causal: o_t = q_t s_t.
    Non-causal (the single scan LightNet uses for images): every token reads the last state, o_t = q_t s_T.
    """
    b, h, n, d = q.shape
    out = torch.empty(b, h, n, v.shape[-1], dtype=torch.float32, device=q.device)
    bounds = [0, n] if cu_seqlens is None else [int(x) for x in cu_seqlens.tolist()]
    qf, kf, vf = q.float(), k.float(), v.float()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        z_prev = torch.full((b, h, d), float("-inf"), device=q.device)
        s = torch.zeros(b, h, d, v.shape[-1], device=q.device)
        states = []
        for t in range(start, end):
            z = torch.logaddexp(z_prev, kf[:, :, t])
            decay = torch.exp(z_prev - z)  # 0 at the first step
            s = decay.unsqueeze(-1) * s + torch.exp(kf[:, :, t] - z).unsqueeze(-1) * vf[:, :, t].unsqueeze(-2)
            states.append(s)
            z_prev = z
        for t in range(start, end):
            state = states[t - start] if causal else states[-1]
            out[:, :, t] = (qf[:, :, t].unsqueeze(-2) @ state).squeeze(-2)
    return out.to(q.dtype)
