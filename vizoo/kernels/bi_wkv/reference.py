"""The specification of Vision-RWKV's Bi-WKV: the quadratic form, written the slow and obvious way.

For batch b, channel c and tokens t, i in raster order (w and u used as given, both (C,))::

    E_ti = k_i - (|t - i| - 1)·w     (i != t)
    E_tt = u + k_t
    m_t  = max_i E_ti
    y_t  = Σ_i exp(E_ti - m_t) v_i / (Σ_i exp(E_ti - m_t) + EPS)

a softmax over the tokens per channel, with the official kernel's epsilon (``EPS`` = 1e-6, its value) added once the
sums are scaled by the largest term, as that kernel adds it; m_t is a shift that the gradient treats as a constant,
as the official backward does. Subtracting the maximum keeps large k and negative w (weights growing with distance)
finite. fp32 throughout; the result is cast to v's dtype. O(B·T²·C) memory: tests only.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6  # the official kernel's EPS, added to the denominator scaled by exp(-m_t)


def bi_wkv_exponents(w: Tensor, u: Tensor, length: int) -> Tensor:
    """(length, length, C) fp32 position part of E: ``-(|t - i| - 1)·w`` off the diagonal, ``u`` on it."""
    pos = torch.arange(length, device=w.device)
    dist = (pos[:, None] - pos[None, :]).abs()
    off = -(dist - 1).to(torch.float32)[..., None] * w.float()
    return torch.where((dist == 0)[..., None], u.float(), off)


def bi_wkv_reference(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(C,) w, u; (B, T, C) k, v -> (B, T, C) in v's dtype."""
    exponents = k.float().unsqueeze(1) + bi_wkv_exponents(w, u, k.shape[1])  # (B, T query, T key, C)
    weights = torch.exp(exponents - exponents.amax(2, keepdim=True).detach())
    out = (weights * v.float().unsqueeze(1)).sum(2) / (weights.sum(2) + EPS)
    return out.to(v.dtype)
