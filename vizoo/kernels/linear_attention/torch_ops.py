"""Linear attention in plain torch ops, KV first: O(n·d·dv) time and O(d·dv) state per sequence, exportable.

The dense path is two batched MatMul (Kᵀ·V, then Q·KV) and, when normalising, a ReduceSum of k and one more MatMul for
the denominator: no Einsum, no Loop, so it exports to ONNX as is. Everything is computed in fp32.

Packed sequences (``cu_seqlens``) are gathered into a padded (num_seqs, h, max_len, d) batch by index arithmetic (no
Python loop over sequences): padded keys get weight 0, the dense path runs once, and the valid rows are gathered back.
The padding costs at most (num_seqs·max_len - total) extra rows; ``max_len`` is read from ``cu_seqlens`` on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vizoo.kernels.linear_attention.reference import segment_ids

# Logit given to padded keys in LightNet's per-segment softmax: exp(_PAD_LOGIT - max) is exactly 0 in fp32 while the
# softmax of an all-padding row stays finite (an -inf row would give NaN, and NaN gradients through the gather).
_PAD_LOGIT = -1e30


def _dense(q: Tensor, k: Tensor, v: Tensor, normalize: bool, eps: float, weights: Tensor | None) -> Tensor:
    """fp32 out for (..., n, d) q, k and (..., n, dv) v; weights broadcast against (..., n)."""
    qf, kf, vf = q.float(), k.float(), v.float()
    if weights is not None:
        kf = kf * weights.float().unsqueeze(-1)
    out = qf @ (kf.transpose(-1, -2) @ vf)
    if normalize:
        ksum = kf.sum(-2, keepdim=True)  # (..., 1, d)
        out = out / (qf @ ksum.transpose(-1, -2) + eps)
    return out


class Packing:
    """Index arithmetic between packed (1, h, total, ·) tensors and padded (num_seqs, h, max_len, ·) ones."""

    def __init__(self, cu_seqlens: Tensor, total: int):
        cu = cu_seqlens.long()
        lengths = cu[1:] - cu[:-1]
        self.num_seqs = lengths.numel()
        self.max_len = int(lengths.max()) if self.num_seqs else 0
        pos = torch.arange(self.max_len, device=cu.device)
        self.valid = pos[None, :] < lengths[:, None]  # (num_seqs, max_len)
        self.index = torch.where(self.valid, cu[:-1, None] + pos[None, :], 0)  # token read at each padded slot
        seg = segment_ids(cu_seqlens, total)
        self.flat = seg * self.max_len + (torch.arange(total, device=cu.device) - cu[seg])  # slot of each token

    def pad(self, x: Tensor) -> Tensor:
        """(1, h, total, c) -> (num_seqs, h, max_len, c); padded slots hold token 0 (mask them)."""
        return x[0][:, self.index].transpose(0, 1)

    def pad_weights(self, weights: Tensor | None) -> Tensor:
        """(1, h, total) weights or None -> (num_seqs, h|1, max_len) with 0 on padded slots."""
        valid = self.valid.unsqueeze(1).float()
        return valid if weights is None else weights[0][:, self.index].transpose(0, 1).float() * valid

    def unpad(self, x: Tensor) -> Tensor:
        """(num_seqs, h, max_len, c) -> (1, h, total, c)."""
        h, c = x.shape[1], x.shape[-1]
        return x.transpose(0, 1).reshape(h, self.num_seqs * self.max_len, c)[:, self.flat].unsqueeze(0)


def linear_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    cu_seqlens: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Same contract as ``linear_attention_reference``, computed KV first."""
    if cu_seqlens is None:
        return _dense(q, k, v, normalize, eps, weights).to(q.dtype)
    packing = Packing(cu_seqlens, q.shape[-2])
    if packing.max_len == 0:
        return q.new_zeros(v.shape)
    out = _dense(packing.pad(q), packing.pad(k), packing.pad(v), normalize, eps, packing.pad_weights(weights))
    return packing.unpad(out).to(q.dtype)


def additive_recurrence_torch(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, cu_seqlens: Tensor | None = None
) -> Tensor:
    """LightNet's additive recurrence in closed form.

    Non-causal: the last state is Σ_j softmax_j(k)ᵀ v_j (softmax over the tokens of the sequence, per feature), so the
    output is q·(softmax(k)ᵀ v): one KV-first linear attention, exportable. Causal: o_t = Σ_{j<=t} Σ_a q_t[a]
    exp(k_j[a] - z_t[a]) v_j with z = logcumsumexp(k), built as an (n, n, d) tensor: O(n²·d) memory, for checks and
    short sequences only.
    """
    packing = None
    if cu_seqlens is not None:
        packing = Packing(cu_seqlens, q.shape[-2])
        if packing.max_len == 0:
            return q.new_zeros(*q.shape[:-1], v.shape[-1])
        valid = packing.valid[:, None, :, None]
        q, v = packing.pad(q), packing.pad(v)
        k = torch.where(valid, packing.pad(k).float(), _PAD_LOGIT)
    qf, kf, vf = q.float(), k.float(), v.float()
    if causal:
        z = torch.logcumsumexp(kf, dim=-2)  # (..., n, d)
        n = kf.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        p = torch.exp(kf.unsqueeze(-3) - z.unsqueeze(-2)) * mask[..., None]  # (..., t, j, d)
        out = (qf.unsqueeze(-2) * p).sum(-1) @ vf
    else:
        out = qf @ (torch.softmax(kf, dim=-2).transpose(-1, -2) @ vf)
    if packing is not None:
        out = packing.unpad(out)
    return out.to(q.dtype)
