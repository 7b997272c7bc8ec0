"""Image tokens for vision-language models from any vizoo backbone, and a LLaVA-style projector.

A LLaVA-style model (Liu et al., "Visual Instruction Tuning", arXiv 2304.08485; LLaVA-1.5's two-layer MLP connector,
arXiv 2310.03744) feeds a language model with the image tower's patch tokens, projected to its width. A hierarchical
tower offers a choice of tokens:

- ``tokens="last"``: the final, normed stride-32 map (49 tokens at 224²; 7x7);
- ``tokens="stage"`` with ``stage=i``: stage i's map (stride 16 for the third stage of a four-stage model: 196 tokens
  at 224², as ViT-B/16);
- ``tokens="multiscale"``: stage maps pixel-unshuffled to the last grid and concatenated along channels (e.g. stage 3
  unshuffled 2x2 with stage 4: 4·C3 + C4 channels at stride 32);

and ``reduce=r`` merges r x r neighbouring tokens into one of r²·C channels (pixel shuffle, as nanoVLM and Idefics3
reduce SigLIP tokens), for r² times fewer tokens. Plain models (Vim, LightNet) have one grid (stride 16); their
"stages" are blocks. Vim's class token is never a patch token: it is dropped from the tokens (and is the pooled
embedding with ``pool="model"``).

Tokens are (B, N, C) in row-major order: token i is grid cell (i // w, i % w) of the (h, w) grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn as nn

from vizoo.backbones.vim import Vim
from vizoo.multimodal.clip import load_backbone, resolve_model

__all__ = [
    "MLPProjector",
    "TOKEN_MODES",
    "TowerOutput",
    "VisionTower",
    "map_to_tokens",
    "pixel_shuffle",
    "pixel_unshuffle_to",
    "tokens_to_map",
]

TOKEN_MODES = ("last", "stage", "multiscale")
POOLS = ("model", "avg", "none")


@dataclass
class TowerOutput:
    """What ``VisionTower`` returns.

    pooled: (B, D) the image embedding (None with ``pool="none"``).
    tokens: (B, N, C) patch tokens, row-major over ``grid``.
    grid: (h, w) of the tokens, N = h·w.
    hidden_states: one (B, h_i, w_i, C_i) NHWC map per stage (per block for Vim and LightNet), in order; the last
        one is normed. Empty unless asked for (``output_hidden_states=True``).
    """

    pooled: torch.Tensor | None
    tokens: torch.Tensor
    grid: tuple[int, int]
    hidden_states: tuple[torch.Tensor, ...] = ()


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) map -> (B, h·w, C) tokens, row-major: token i is cell (i // w, i % w)."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h·w, C) row-major tokens -> (B, h, w, C) map."""
    return x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """Merge r x r neighbouring cells of an NHWC map: (B, h, w, C) -> (B, h/r, w/r, r²·C).

    Output channel ``(dy·r + dx)·C + c`` of cell (i, j) is channel c of input cell (i·r + dy, j·r + dx). Raises
    ``ValueError`` unless h and w are divisible by r."""
    b, h, w, c = x.shape
    if r < 1 or h % r or w % r:
        raise ValueError(
            f"pixel-shuffle reduction by {r} needs a token grid divisible by {r}, got {h}x{w}; choose an image size "
            f"whose grid is a multiple of {r} (grid = image size / stride) or a smaller reduce factor"
        )
    if r == 1:
        return x
    x = x.reshape(b, h // r, r, w // r, r, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // r, w // r, r * r * c)


def pixel_unshuffle_to(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``pixel_shuffle`` an NHWC map down to ``grid`` (its sides must be an integer multiple of the grid's)."""
    h, w = x.shape[1], x.shape[2]
    r = h // grid[0]
    if r < 1 or h != r * grid[0] or w != r * grid[1]:
        raise ValueError(f"cannot merge a {h}x{w} map onto a {grid[0]}x{grid[1]} grid (needs an integer factor)")
    return pixel_shuffle(x, r)


class VisionTower(nn.Module):
    """A vizoo backbone as a VLM image tower: pooled embedding, row-major patch tokens with their grid, stage maps.

    Args:
        model: a vizoo model name, or a built timm model of vizoo.
        tokens: "last" (final normed map), "stage" (the map after ``stage``) or "multiscale" (the maps of
            ``stages``, merged to the coarsest grid by pixel shuffle, concatenated along channels).
        stage: for ``tokens="stage"``: stage index (negative counts from the end; -2 is the stride-16 stage of a
            four-stage model).
        stages: for ``tokens="multiscale"``: stage indices, default (-2, -1): stage 3 unshuffled 2x2 with stage 4.
        reduce: pixel-shuffle factor r >= 1 applied to the tokens (r² times fewer, r² times wider).
        pool: "model" (the backbone's own pooling: average, or Vim's class token), "avg" (mean of the last map's
            patch tokens) or "none".
        checkpoint: a backbone weights file loaded strictly (through the family's ``checkpoint_filter_fn``).
        model_kwargs: for ``timm.create_model`` when ``model`` is a name.

    ``forward(images)`` -> ``TowerOutput``. ``out_channels`` is the token width, ``embed_dim`` the pooled width.
    """

    def __init__(
        self,
        model: str | nn.Module,
        tokens: str = "last",
        stage: int = -2,
        stages: tuple[int, ...] = (-2, -1),
        reduce: int = 1,
        pool: str = "model",
        checkpoint: str | None = None,
        **model_kwargs,
    ):
        super().__init__()
        if tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, got {tokens!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if int(reduce) != reduce or reduce < 1:
            raise ValueError(f"reduce must be an integer >= 1, got {reduce!r}")
        if isinstance(model, str):
            model = timm.create_model(resolve_model(model), num_classes=0, **model_kwargs)
        elif not hasattr(model, "forward_intermediates"):
            raise TypeError(f"expected a vizoo timm model, got {type(model).__name__}")
        self.model = model
        if checkpoint is not None:
            load_backbone(model, checkpoint)
        self.tokens, self.reduce, self.pool = tokens, int(reduce), pool
        infos = model.feature_info
        self.num_stages = len(infos)
        self.is_token_model = isinstance(model, Vim)
        chosen = {"last": [self.num_stages - 1], "stage": [stage], "multiscale": list(stages)}[tokens]
        self.stage_indices = [self._index(i) for i in chosen]
        if tokens == "multiscale" and len(self.stage_indices) < 2:
            raise ValueError("tokens='multiscale' needs at least two stages")
        reductions = [infos[i]["reduction"] for i in self.stage_indices]
        coarsest = max(reductions)
        widths = []
        for i, red in zip(self.stage_indices, reductions):
            channels = self._stage_channels(i)
            widths.append(channels * (coarsest // red) ** 2)
        self.stride = coarsest * self.reduce
        self.out_channels = sum(widths) * self.reduce**2
        self.embed_dim = getattr(model, "head_hidden_size", model.num_features)

    def _index(self, i: int) -> int:
        j = i + self.num_stages if i < 0 else i
        if not 0 <= j < self.num_stages:
            raise ValueError(f"stage {i} out of range for a model with {self.num_stages} stages")
        return j

    def _stage_channels(self, i: int) -> int:
        if i == self.num_stages - 1:
            return self.model.num_features  # the final features (e.g. MALA's conv head is wider than stage 4)
        return self.model.feature_info[i]["num_chs"]

    def grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """The (h, w) token grid for an image of ``image_size``."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        return h // self.stride, w // self.stride

    def _final_map(self, final: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The model's final features as an NHWC map."""
        if final.dim() == 3:  # token models (Vim: the class token in the middle; Vision-RWKV: patches only)
            return self.model.patch_map(final, grid)
        from vizoo.multimodal.hf import native_features_fmt

        fmt = getattr(self.model, "features_fmt", None) or native_features_fmt(self.model)
        return final if fmt == "NHWC" else final.permute(0, 2, 3, 1)

    def forward(self, images: torch.Tensor, output_hidden_states: bool = False) -> TowerOutput:
        """(B, 3, H, W) images -> ``TowerOutput`` (see the class docstring for shapes)."""
        final, maps = self.model.forward_intermediates(images, indices=None, norm=True, output_fmt="NHWC")
        stride_grid = (maps[-1].shape[1], maps[-1].shape[2])
        last = self._final_map(final, stride_grid)
        if self.tokens == "last":
            x = last
        else:
            chosen = [last if i == self.num_stages - 1 else maps[i] for i in self.stage_indices]
            target = min((m.shape[1], m.shape[2]) for m in chosen)
            x = torch.cat([pixel_unshuffle_to(m, target) for m in chosen], dim=-1)
        x = pixel_shuffle(x, self.reduce)
        pooled = None
        if self.pool == "model":
            # forward_head takes the final features as forward_intermediates returns them, whatever their layout
            pooled = self.model.forward_head(final, pre_logits=True)
        elif self.pool == "avg":
            pooled = last.mean(dim=(1, 2))
        hidden = tuple(maps[:-1]) + (last,) if output_hidden_states else ()
        return TowerOutput(pooled, map_to_tokens(x), (x.shape[1], x.shape[2]), hidden)


class MLPProjector(nn.Module):
    """LLaVA-1.5's connector: ``Linear(in, out) -> GELU -> Linear(out, out)``, (B, N, in) -> (B, N, out)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, bias: bool = True):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.linear_1 = nn.Linear(in_dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
