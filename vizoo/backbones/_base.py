"""What vizoo's backbones share: input checks and timm's model API, over stem -> stages -> norm -> head for the
hierarchical families (``StagedBackbone``) and over patch embedding -> blocks -> norm -> head for the plain ones
(``PlainBackbone``).

A family subclasses ``StagedBackbone``, builds ``stem``, ``stages`` and ``feature_info`` (``build_stages``: one
``Stage``, a downsample and blocks, per entry of ``dims``), ``norm`` and ``head`` (timm's ``ClassifierHead``), and
sets the class attributes below. It then gets ``forward_features``, ``forward_head``,
``forward_intermediates``, ``prune_intermediate_layers``, ``no_weight_decay``, ``group_matcher``,
``set_grad_checkpointing``, ``get_classifier`` and ``reset_classifier`` with timm's semantics.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

__all__ = [
    "PlainBackbone",
    "Stage",
    "StagedBackbone",
    "build_stages",
    "check_image_input",
    "run_blocks",
    "stage_drop_path_rates",
]


def check_image_input(x: torch.Tensor, in_chans: int, multiple: int, name: str) -> None:
    """Raise ``ValueError`` saying what to do unless x is a non-empty (B, in_chans, H, W) batch, H, W % multiple == 0.

    Shape checks on symbolic sizes go through ``torch._check_with`` so that ``torch.export`` keeps them as guards;
    under ``torch.jit.trace`` the check is skipped (the traced graph is specialised to the example's shape anyway).
    """
    if torch.jit.is_tracing():
        return
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D (batch, channels, height, width) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{name} expects {in_chans} input channels, got {x.shape[1]}; pass in_chans={x.shape[1]} to "
            "timm.create_model"
        )
    torch._check_with(ValueError, x.shape[0] > 0, lambda: f"{name} got an empty batch (batch size 0)")
    h, w = x.shape[2], x.shape[3]
    torch._check_with(
        ValueError,
        h % multiple == 0 and w % multiple == 0 and h > 0 and w > 0,
        lambda: (
            f"{name} needs height and width divisible by {multiple}, got {h}x{w}; resize the input "
            f"or pad it to {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple}"
        ),
    )


def stage_drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``drop_path_rate`` over all blocks (block b of B gets
    ``drop_path_rate · b / (B - 1)``, as ``torch.linspace``), split into one list per stage."""
    total = sum(depths)
    rates = [drop_path_rate * b / max(total - 1, 1) for b in range(total)]
    ends = list(itertools.accumulate(depths))
    return [rates[end - depth : end] for depth, end in zip(depths, ends)]


def run_blocks(blocks: nn.Module, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """Apply a sequential ``blocks``, through activation checkpointing when asked (and not scripting)."""
    if grad_checkpointing and not torch.jit.is_scripting():
        return checkpoint_seq(blocks, x)
    return blocks(x)


def place_like(module: nn.Module, model: nn.Module) -> None:
    """Give a rebuilt ``module`` (a new classifier) the device, dtype and train/eval mode of ``model``'s other
    parameters, as timm's ``reset_classifier`` contract asks (a model on "meta" or in bf16 stays so)."""
    reference = next((p for p in model.parameters() if all(p is not q for q in module.parameters())), None)
    if reference is not None:
        module.to(device=reference.device, dtype=reference.dtype)
    module.train(model.training)


def check_fmt(argument: str, fmt: str) -> None:
    if fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"{argument} must be 'NCHW' or 'NHWC', got {fmt!r}")


def permute_fmt(x: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """A (B, ·, ·, ·) map from layout ``src`` to ``dst`` ("NCHW" or "NHWC"); a view, no copy."""
    if src == dst:
        return x
    return x.permute(0, 3, 1, 2) if dst == "NCHW" else x.permute(0, 2, 3, 1)


class Stage(nn.Module):
    """One stage of a hierarchical backbone: an optional downsample, then its blocks, in their own layout
    ((B, H, W, C) or (B, C, H, W) in and out). ``channels_first`` runs NCHW blocks in an NHWC model: the map is
    permuted to NCHW for the blocks and back after them."""

    def __init__(self, downsample: nn.Module | None, blocks: Iterable[nn.Module], channels_first: bool = False):
        super().__init__()
        self.downsample = nn.Identity() if downsample is None else downsample
        self.blocks = nn.Sequential(*blocks)
        self.channels_first = channels_first
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.channels_first:
            return run_blocks(self.blocks, x.permute(0, 3, 1, 2), self.grad_checkpointing).permute(0, 2, 3, 1)
        return run_blocks(self.blocks, x, self.grad_checkpointing)


def build_stages(
    dims: Sequence[int],
    depths: Sequence[int],
    drop_path_rate: float,
    downsample: Callable[[int, int], nn.Module],
    block: Callable[[int, int, float], nn.Module],
    channels_first: Sequence[bool] | None = None,
    first_reduction: int = 4,
) -> tuple[nn.Sequential, list[dict]]:
    """A ``Stage`` per entry of ``dims`` and timm's ``feature_info`` for them.

    Stage i opens with ``downsample(dims[i - 1], dims[i])`` (none in stage 0) and has ``depths[i]`` blocks
    ``block(i, dims[i], drop_path)``, stochastic depth rising over all blocks (``stage_drop_path_rates``). Its
    output is ``first_reduction · 2^i`` times smaller than the input image. ``channels_first[i]``: see ``Stage``.
    """
    if len(depths) != len(dims):
        raise ValueError(f"dims and depths need one entry per stage, got {len(dims)} dims and {len(depths)} depths")
    rates = stage_drop_path_rates(depths, drop_path_rate)
    stages, feature_info = nn.Sequential(), []
    for i, dim in enumerate(dims):
        stages.append(
            Stage(
                downsample(dims[i - 1], dim) if i else None,
                [block(i, dim, rate) for rate in rates[i]],
                channels_first=channels_first is not None and channels_first[i],
            )
        )
        feature_info.append(dict(num_chs=dim, reduction=first_reduction * 2**i, module=f"stages.{i}"))
    return stages, feature_info


class StagedBackbone(nn.Module):
    """Base of vizoo's hierarchical models: (B, C_in, H, W) -> stem -> stages -> norm -> head.

    Subclasses set, in ``__init__``: ``in_chans``, ``num_classes``, ``num_features``, ``head_hidden_size``,
    ``output_fmt`` ("NHWC" or "NCHW": the layout of stage outputs and of ``forward_features``), ``stem``,
    ``stages``, ``norm``, ``head`` and ``feature_info``; and as class attributes ``input_multiple`` (H and W must
    be multiples of it) and ``no_weight_decay_leaves`` (parameter leaf names kept out of weight decay).
    """

    input_multiple: int = 32
    no_weight_decay_leaves: tuple[str, ...] = ()
    output_fmt: str = "NCHW"
    # The layout of ``forward_features`` and of what ``forward_head`` takes; None: ``output_fmt``. Consumers that read
    # a tower's features as NCHW (transformers' TimmWrapperModel in FastVLM) build with ``features_fmt="NCHW"``.
    features_fmt: str | None = None

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters whose last name component is in ``no_weight_decay_leaves``."""
        leaves = set(self.no_weight_decay_leaves)
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in leaves}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: the stem, then each stage (coarse) or each block."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        place_like(self.head, self)

    @property
    def model_name(self) -> str:
        return getattr(self, "pretrained_cfg", {}).get("architecture", type(self).__name__)

    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.input_multiple, self.model_name)

    def _to_fmt(self, x: torch.Tensor, output_fmt: str) -> torch.Tensor:
        return permute_fmt(x, self.output_fmt, output_fmt)

    def set_features_fmt(self, features_fmt: str) -> None:
        """Make ``forward_features`` return ``features_fmt`` ("NCHW" or "NHWC") and ``forward_head`` take it."""
        check_fmt("features_fmt", features_fmt)
        self.features_fmt = features_fmt

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at ``indices`` (an int n means the last n), as NCHW or NHWC, plus the final features (laid
        out as ``forward_features``)."""
        check_fmt("output_fmt", output_fmt)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.check_input(x)
        x = self.stem(x)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self._to_fmt(self.norm(x) if norm and i == last else x, output_fmt))
        if intermediates_only:
            return intermediates
        return self._to_fmt(self.norm(x), self.features_fmt or self.output_fmt), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last index in ``indices`` (and the norm/head); return the kept indices."""
        return prune_after(self, "stages", indices, prune_norm, prune_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H/r, W/r, num_features) if ``features_fmt`` (default ``output_fmt``) is NHWC, else
        (B, num_features, H/r, W/r)."""
        self.check_input(x)
        return self._to_fmt(self.norm(self.stages(self.stem(x))), self.features_fmt or self.output_fmt)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``forward_features``' output -> logits, or the pooled features with ``pre_logits``."""
        return self.head(permute_fmt(x, self.features_fmt or self.output_fmt, self.output_fmt), pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PlainBackbone(nn.Module):
    """Base of vizoo's isotropic (plain ViT layout) models: patch embedding -> ``blocks`` at one width -> ``norm`` ->
    pooled ``head``, with token features (B, tokens, C) as timm's ViTs return them.

    Subclasses set, in ``__init__``: ``in_chans``, ``num_classes``, ``embed_dim``, ``head_hidden_size`` (the width
    the classifier sees), ``global_pool``, ``blocks``, ``norm``, ``head``, ``patch_size`` and ``grad_checkpointing``;
    as class attributes ``pool_types`` (the ``global_pool`` values they take, "" being the patch tokens as a map),
    ``num_prefix_tokens`` (tokens that are no patch, e.g. a class token) and ``input_multiple``. They define
    ``embed(x)`` (the first block's input), ``patch_map(tokens, grid)`` ((B, prefix + h·w, C) -> (B, h, w, C)), and
    ``block_map`` / ``block_tokens`` (a block's output as a map and as tokens).
    """

    pool_types: tuple[str, ...] = ("avg", "")
    num_prefix_tokens: int = 0
    input_multiple: int = 16

    @property
    def model_name(self) -> str:
        return getattr(self, "pretrained_cfg", {}).get("architecture", type(self).__name__)

    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.input_multiple, self.model_name)

    def check_pool(self, global_pool: str) -> None:
        if global_pool not in self.pool_types:
            raise ValueError(f"{self.model_name} global_pool must be one of {self.pool_types}, got {global_pool!r}")

    def set_features_fmt(self, features_fmt: str) -> None:
        """Refused: the features are tokens, not a map (see ``forward_features``)."""
        raise ValueError(
            f"{self.model_name} returns token features (B, N, C), not a map, so features_fmt does not apply; take its "
            "patch tokens from vizoo.multimodal.VisionTower or its NCHW maps from forward_intermediates"
        )

    def square_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, prefix + N, C) tokens -> (B, side, side, C) map of the N patch tokens (``global_pool=""``), which
        needs a square grid: the tokens do not carry the grid's shape."""
        patches = tokens.shape[1] - self.num_prefix_tokens
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(
                f"{self.model_name} with global_pool='' returns the patch tokens as a square map, but got {patches} "
                "patch tokens; use forward_intermediates(x, indices=1) for non-square inputs"
            )
        return self.patch_map(tokens, (side, side))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The patch maps after the blocks at ``indices`` (an int n means the last n) as NCHW or NHWC at stride
        ``patch_size`` (``norm`` applies the final norm to each), plus the final normed tokens (B, prefix + N, C).
        Subclasses say how a block's output becomes a map (``block_map``) and tokens (``block_tokens``)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.check_input(x)
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        x = self.embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                feature = self.block_map(x, grid)
                feature = self.norm(feature) if norm else feature
                intermediates.append(feature.permute(0, 3, 1, 2) if output_fmt == "NCHW" else feature)
        if intermediates_only:
            return intermediates
        return self.norm(self.block_tokens(x)), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last index in ``indices`` (and the norm/head); return the kept indices."""
        return prune_after(self, "blocks", indices, prune_norm, prune_head)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        place_like(self.head, self)


def prune_after(
    model: nn.Module, layers: str, indices: int | list[int], prune_norm: bool, prune_head: bool
) -> list[int]:
    """timm's ``prune_intermediate_layers`` for a model whose feature layers are the sequence ``model.<layers>``: keep
    them up to the last of ``indices``, optionally drop the final norm and the head; return the kept indices."""
    take_indices, max_index = feature_take_indices(len(getattr(model, layers)), indices)
    setattr(model, layers, getattr(model, layers)[: max_index + 1])
    if prune_norm:
        model.norm = nn.Identity()
    if prune_head:
        model.reset_classifier(0, "")
    return take_indices
