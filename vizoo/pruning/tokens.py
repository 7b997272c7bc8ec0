"""Token merging (ToMe) and token pruning (EViT) for timm ViTs, written to export to ONNX.

- ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (https://arxiv.org/abs/2210.09461). After the
  attention of every block, bipartite soft matching merges ``r`` patch tokens into their most similar partner
  (cosine similarity of the attention keys, averaged over heads). Tokens carry a size (how many patches they hold):
  merges are size-weighted averages and attention adds ``log(size)`` to the logits (proportional attention).
- EViT: Liang et al., "Not All Patches are What You Need", ICLR 2022 (https://arxiv.org/abs/2202.07800). In a few
  blocks (default: the 4th, 7th and 10th of 12, scaled to the depth) only the ``keep_rate`` patch tokens that the
  class token attends to most are kept; the rest are fused into one token, weighted by that attention.

Export: the merge is a ``scatter_add`` of size-weighted tokens and of sizes followed by one division (never
``scatter_reduce(mean)``, which ONNX lacks); matching uses argsort/gather only. ``r`` and ``keep_rate`` are fixed
Python numbers, so every token count is static and the graph exports with ``torch.onnx.export(dynamo=True)``.

Prefix tokens (class, distillation, registers) are never merged or dropped and stay first. With ``r = 0`` or
``keep_rate = 1`` the patched model computes exactly what timm's does. Models are patched in place by swapping the
classes of the model and its blocks; :func:`remove_token_reduction` swaps them back.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from .block import check_vit

__all__ = ["apply_evit", "apply_tome", "bipartite_merge", "remove_token_reduction"]


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` of the N tokens of ``x`` (B, N, C) by bipartite soft matching on ``metric`` (B, N, K).

    Tokens alternate into sets A (even) and B (odd); the ``r`` A tokens with the most similar B partner are
    averaged into it, weighted by ``size`` (B, N, 1). Returns ``(x, size)`` with N - r tokens: the unmerged A tokens
    in their original order, then the B tokens. Accumulates with ``scatter_add`` (ONNX ScatterElements add).
    """
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
    best, partner = scores.max(dim=-1)  # (B, Na)
    order = best.argsort(dim=-1, descending=True)
    src_idx = order[:, :r]  # A tokens to merge away
    keep_idx = order[:, r:].sort(dim=-1).values  # A tokens that stay, in their original order
    dst_idx = partner.gather(1, src_idx)  # their B partners

    c = x.shape[-1]
    xs = x * size
    xa, xb = xs[:, ::2], xs[:, 1::2]
    sa, sb = size[:, ::2], size[:, 1::2]
    keep_x = xa.gather(1, keep_idx[..., None].expand(-1, -1, c))
    keep_s = sa.gather(1, keep_idx[..., None])
    src_x = xa.gather(1, src_idx[..., None].expand(-1, -1, c))
    src_s = sa.gather(1, src_idx[..., None])
    xb = xb.scatter_add(1, dst_idx[..., None].expand(-1, -1, c), src_x)
    sb = sb.scatter_add(1, dst_idx[..., None], src_s)
    size = torch.cat([keep_s, sb], dim=1)
    return torch.cat([keep_x, xb], dim=1) / size, size


def _attention(attn: Attention, x: torch.Tensor, size: torch.Tensor | None, need_cls: bool):
    """timm's Attention forward, plus proportional attention and the keys' head mean (and class attention)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log()[:, None, None, :, 0]  # (B, 1, 1, N)
    cls_attn = None
    if need_cls:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        cls_attn = probs[:, :, 0].mean(1)  # (B, N): how much the class token attends to each token
        y = attn.attn_drop(probs) @ v
    elif attn.fused_attn:
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0
        )
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        y = attn.attn_drop(logits.softmax(dim=-1)) @ v
    y = y.transpose(1, 2).reshape(b, n, attn.attn_dim)
    y = attn.norm(y)
    if attn.gate is not None:
        y = y * attn.gate(x).sigmoid()
    y = attn.proj_drop(attn.proj(y))
    return y, k.mean(1), cls_attn


class TokenReducingBlock(Block):
    """A timm Block that merges (``tome_r``) or prunes (``evit_keep``) tokens between attention and MLP."""

    tome_r: int = 0
    evit_keep: float = 1.0
    prefix: int = 1

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.prefix
        evit = self.evit_keep < 1.0 and p > 0
        y, metric, cls_attn = _attention(self.attn, self.norm1(x), size, need_cls=evit)
        x = x + self.drop_path1(self.ls1(y))
        r = min(self.tome_r, (x.shape[1] - p) // 2)
        if r > 0:
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            xm, sm = bipartite_merge(x[:, p:], size[:, p:], metric[:, p:], r)
            x, size = torch.cat([x[:, :p], xm], 1), torch.cat([size[:, :p], sm], 1)
        if evit:
            x, size = _evit_select(x, size, cls_attn, p, self.evit_keep)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, size


def _evit_select(
    x: torch.Tensor, size: torch.Tensor | None, cls_attn: torch.Tensor, p: int, keep_rate: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep the ceil(keep_rate * patches) most attended patch tokens; fuse the rest into one (attention-weighted)."""
    n = x.shape[1] - p
    keep = math.ceil(keep_rate * n)
    if keep >= n:
        return x, size
    c = x.shape[-1]
    order = cls_attn[:, p:].argsort(dim=-1, descending=True)
    kept_idx, drop_idx = order[:, :keep], order[:, keep:]
    patches = x[:, p:]
    kept = patches.gather(1, kept_idx[..., None].expand(-1, -1, c))
    dropped = patches.gather(1, drop_idx[..., None].expand(-1, -1, c))
    w = cls_attn[:, p:].gather(1, drop_idx)[..., None]  # (B, n - keep, 1)
    fused = (dropped * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-12)
    x = torch.cat([x[:, :p], kept, fused], dim=1)
    if size is not None:
        s = size[:, p:]
        size = torch.cat(
            [size[:, :p], s.gather(1, kept_idx[..., None]), s.gather(1, drop_idx[..., None]).sum(1, keepdim=True)], 1
        )
    return x, size


class TokenReducingViT(VisionTransformer):
    """VisionTransformer whose blocks pass token sizes along; ``forward_features`` is timm's otherwise."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("token merging/pruning does not take attention masks")
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        size = None
        for blk in self.blocks:
            x, size = blk(x, size)
        return self.norm(x)


def _patch(model: nn.Module) -> VisionTransformer:
    vit = check_vit(model)
    if type(vit) is VisionTransformer:
        vit.__class__ = TokenReducingViT
    elif not isinstance(vit, TokenReducingViT):
        raise TypeError(f"token reduction patches timm's VisionTransformer itself, not the subclass {type(vit)}")
    for blk in vit.blocks:
        if type(blk) is Block:
            blk.__class__ = TokenReducingBlock
        blk.prefix = vit.num_prefix_tokens
    return vit


def apply_tome(model: nn.Module, r: int | list[int]) -> nn.Module:
    """Patch a timm ViT in place to merge ``r`` tokens per block (an int, or one per block); returns the model.

    Replaces any earlier :func:`apply_evit` (one token method at a time).

    ``r`` is clamped per block to half the patch tokens left. ``r = 0`` keeps the model's outputs bit for bit.
    With ``global_pool="avg"`` the pooled mean is over merged tokens (not size-weighted).
    """
    vit = _patch(model)
    rs = [r] * len(vit.blocks) if isinstance(r, int) else list(r)
    if len(rs) != len(vit.blocks) or any(int(v) < 0 for v in rs):
        raise ValueError(f"r must be a non-negative int or one per block ({len(vit.blocks)}), got {r}")
    for blk, v in zip(vit.blocks, rs):
        blk.tome_r, blk.evit_keep = int(v), 1.0  # one method at a time: this also undoes apply_evit
    return model


def apply_evit(model: nn.Module, keep_rate: float, layers: list[int] | None = None) -> nn.Module:
    """Patch a timm ViT in place to keep ``keep_rate`` of the patch tokens in ``layers`` (EViT); returns the model.

    ``layers`` defaults to EViT's blocks 3, 6 and 9 of 12 (0-based), scaled to the depth. Needs a class token. The
    remaining tokens are fused into one per pruning layer. ``keep_rate = 1`` keeps the outputs bit for bit.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    vit = check_vit(model)
    if vit.cls_token is None and keep_rate < 1.0:
        raise ValueError("EViT ranks tokens by the class token's attention; this model has no class token")
    depth = len(vit.blocks)
    if layers is None:
        layers = sorted({min(depth - 1, round(i * depth / 12)) for i in (3, 6, 9)})
    if any(not 0 <= i < depth for i in layers):
        raise ValueError(f"EViT layers must be block indices in [0, {depth}), got {layers}")
    _patch(vit)
    for i, blk in enumerate(vit.blocks):
        blk.evit_keep, blk.tome_r = (float(keep_rate) if i in layers else 1.0), 0  # also undoes apply_tome
    return model


def remove_token_reduction(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_tome` / :func:`apply_evit` (in place)."""
    if isinstance(model, TokenReducingViT):
        model.__class__ = VisionTransformer
        for blk in model.blocks:
            if isinstance(blk, TokenReducingBlock):
                blk.__class__ = Block
                for name in ("tome_r", "evit_keep", "prefix"):
                    blk.__dict__.pop(name, None)
    return model
