"""Token pruning for plain vision SSMs (vizoo's Vim), with hidden-state alignment.

Zhan et al., "Exploring Token Pruning in Vision State Space Models", NeurIPS 2024 (https://arxiv.org/abs/2409.18962).
ViT-style pruning drops tokens and closes the gaps, so in every later block the scan sees kept tokens as neighbours
that were far apart, and the recurrence decays the state over the wrong distances; the paper shows that this fails
even with fine-tuning. Hidden-state alignment keeps each kept token at its original step of the scan: the pruned
steps become empty (zero) tokens, through which the state still decays. The costly projections only see the kept
tokens; the depthwise convs and the selective scans run over the full length (``BiMamba.scan`` with ``positions``).

Importance (the paper's SSM-adapted score): in a pruning block, each patch token's score is the sum over channels of
its clipped (``max(y, 0)``) SSM output. The ``ceil(keep_rate · n)`` best patch tokens are kept; the class token
always is, and stays in the middle of the kept tokens as Vim's head expects (as in ToP-ViM, ZLKong/ToP-ViM, which
prunes Vim in blocks 5, 10 and 15 of 24 at keep rate 0.8). The kept tokens keep their order.

``align=False`` gives the naive pruning for comparison: the kept tokens are packed into a shorter sequence.
The model is patched in place by swapping its class; :func:`remove_vim_token_pruning` swaps it back.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vizoo.backbones.vim import Vim

__all__ = ["TokenPrunedVim", "apply_vim_token_pruning", "remove_vim_token_pruning", "token_importance"]


def token_importance(scan_output: torch.Tensor) -> torch.Tensor:
    """(B, T, D) SSM output -> (B, T) score: the sum over channels of the clipped activations ``max(y, 0)``."""
    return scan_output.clamp_min(0).sum(-1)


class TokenPrunedVim(Vim):
    """Vim that keeps ``token_keep_rate`` of its patch tokens in each of ``token_prune_layers`` (see module doc)."""

    token_keep_rate: float
    token_prune_layers: tuple[int, ...]
    token_align: bool

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, T, C): the kept tokens after the last block (class token in the middle)."""
        self.check_input(x)
        x = self.embed(x)
        length = x.shape[1]
        positions = None  # (B, T) step of each token in the full sequence, once tokens are pruned with alignment
        for i, block in enumerate(self.blocks):
            if i not in self.token_prune_layers:
                x = block(x, positions, length)
                continue
            y = block.mixer.scan(block.norm(x), positions, length)
            x = x + block.drop_path(block.mixer.out_proj(y))
            if positions is None and self.token_align:
                positions = torch.arange(length, device=x.device).expand(x.shape[0], -1)
            keep = self._kept_indices(token_importance(y))
            x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
            if positions is not None:
                positions = positions.gather(1, keep)
        return x

    def _kept_indices(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, T) scores of T tokens (class token in the middle) -> (B, T') indices of the tokens to keep, in order,
        the class token again in the middle."""
        b, t = scores.shape
        mid = (t - 1) // 2
        patches = t - 1
        keep = min(patches, math.ceil(self.token_keep_rate * patches))
        patch_index = torch.cat([torch.arange(mid), torch.arange(mid + 1, t)]).to(scores.device)
        top = scores[:, patch_index].topk(keep, dim=1).indices
        top = patch_index[top.sort(dim=1).values]  # token order (= scan order) among the kept patch tokens
        half = keep // 2  # so that the class token is at (T' - 1) // 2, where Vim's head reads it
        cls = torch.full((b, 1), mid, dtype=top.dtype, device=top.device)
        return torch.cat([top[:, :half], cls, top[:, half:]], dim=1)


def apply_vim_token_pruning(
    model: nn.Module, keep_rate: float = 0.8, layers: list[int] | None = None, align: bool = True
) -> Vim:
    """Patch a vizoo Vim in place to keep ``keep_rate`` of the patch tokens in ``layers``; returns the model.

    ``layers`` defaults to ToP-ViM's blocks 5, 10 and 15 of 24 (0-based), scaled to the depth. ``align`` keeps the
    pruned tokens' steps in the scan (hidden-state alignment); ``False`` packs the kept tokens (naive pruning).
    ``keep_rate = 1`` computes exactly what the unpatched model does.
    """
    if not isinstance(model, Vim):
        raise TypeError(f"Vim token pruning needs a vizoo Vim model (vim_tiny, vim_small), got {type(model).__name__}")
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    depth = len(model.blocks)
    if layers is None:
        layers = sorted({min(depth - 1, round(i * depth / 24)) for i in (5, 10, 15)})
    if any(not 0 <= i < depth for i in layers):
        raise ValueError(f"pruning layers must be block indices in [0, {depth}), got {layers}")
    model.__class__ = TokenPrunedVim
    model.token_keep_rate, model.token_prune_layers, model.token_align = float(keep_rate), tuple(layers), bool(align)
    return model


def remove_vim_token_pruning(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_vim_token_pruning` (in place)."""
    if isinstance(model, TokenPrunedVim):
        model.__class__ = Vim
        for name in ("token_keep_rate", "token_prune_layers", "token_align"):
            model.__dict__.pop(name, None)
    return model
