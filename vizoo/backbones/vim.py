"""Vim: Vision Mamba, the plain (non-hierarchical) bidirectional SSM baseline.

Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model", ICML 2024.
https://arxiv.org/abs/2401.09417. Official code: https://github.com/hustvl/Vim (weights load through
``checkpoint_filter_fn``).

Like a ViT: 16x16 patches, an absolute position embedding, and ``depth`` blocks at one width; each block is
``x + DP(BiMamba(RMSNorm(x)))`` (``vizoo.layers.MambaBlock``: a forward and a backward Mamba sharing the in/out
projections, averaged). The released models (``..._bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``) put
**one class token in the middle of the sequence** and classify from that token after the final RMSNorm; vizoo's
``vim_tiny`` / ``vim_small`` are those models.

Token layout, for pruning and other token-level work: ``embed(x)`` gives (B, N + 1, C) with the N patch tokens in
row-major order and the class token inserted at index ``cls_index(N) = N // 2`` (patches 0..N//2-1 before it).
``forward_tokens`` runs ``blocks`` (an ``nn.Sequential`` of (B, T, C) -> (B, T, C) blocks); ``forward_features`` adds
the final ``norm``; ``forward_head`` reads the class token at index ``(T - 1) // 2`` of whatever T tokens it gets, so a
pruner that keeps the class token in the middle needs nothing else.

``forward_features`` returns the normed token sequence (B, N + 1, C), as timm's VisionTransformer does; the
``pool_size`` in the default cfgs is therefore (tokens, channels). ``global_pool``: "token" (default: the middle class
token), "avg" (mean of the patch tokens) or "" (the patch tokens as an NHWC map; square inputs only, use
``forward_intermediates`` for other shapes). ``forward_intermediates`` gives the patch tokens after chosen blocks as
NCHW/NHWC maps at stride 16. The position embedding is resampled (bicubic) when the input grid differs from the
configured ``img_size``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import PlainBackbone, run_blocks
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted
from vizoo.layers.mamba_block import MambaBlock

__all__ = ["Vim"]


class Vim(PlainBackbone):
    """Vision Mamba backbone and classifier, (B, C_in, H, W) -> (B, num_classes).

    Args:
        img_size: input size the position embedding is made for (other sizes resample it).
        patch_size: patch side and stride.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: "token" (middle class token), "avg" (mean of patch tokens) or "" (patch-token map).
        embed_dim: width of every block.
        depth: number of blocks.
        d_state, expand, d_conv: Mamba settings of each block.
        scan_backend: selective-scan backend for every block (None picks per device).
        drop_rate: classifier dropout. pos_drop_rate: dropout after the position embedding.
        drop_path_rate: maximum stochastic depth (linear over blocks).
    """

    pool_types = ("token", "avg", "")
    num_prefix_tokens = 1  # the class token, in the middle of the sequence
    no_weight_decay_leaves = ("A_log", "A_b_log", "D", "D_b")

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        expand: float = 2.0,
        d_conv: int = 4,
        scan_backend: str | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.check_pool(global_pool)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.input_multiple = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.grad_checkpointing = False

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[
                MambaBlock(
                    embed_dim,
                    drop_path=dpr[i],
                    d_state=d_state,
                    expand=expand,
                    d_conv=d_conv,
                    scan_backend=scan_backend,
                )  # fmt: skip
                for i in range(depth)
            ]
        )
        self.norm = nn.RMSNorm(embed_dim, eps=1e-5)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self._init_weights(depth)

    @torch.no_grad()
    def _init_weights(self, depth: int) -> None:
        """As the official code: truncated-normal embeddings and head, zero Linear biases (but the step-size biases),
        and the out projections scaled by 1/sqrt(depth) (GPT-2's rescaled pre-norm residuals)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(
            self.patch_embed.proj.weight, std=math.sqrt(1.0 / self.patch_embed.proj.weight[0].numel())
        )
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for block in self.blocks:
            out_proj = block.mixer.out_proj
            nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
            out_proj.weight /= math.sqrt(depth)

    # --- token access -------------------------------------------------------------------------------------------

    @staticmethod
    def cls_index(num_patches: int) -> int:
        """Index of the class token in a sequence of ``num_patches`` patch tokens plus the class token."""
        return num_patches // 2

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, N + 1, C) position embedding for a patch grid, the class token's entry in the middle."""
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        return _resample_pos_embed(self.pos_embed, self.grid_size, grid)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, N + 1, C): patch tokens row-major, the class token at ``cls_index(N)``, positions
        added."""
        x = self.patch_embed.proj(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        mid = self.cls_index(grid[0] * grid[1])
        x = torch.cat([x[:, :mid], self.cls_token.expand(x.shape[0], -1, -1), x[:, mid:]], dim=1)
        return self.pos_drop(x + self._pos_embed(grid))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, N + 1, C): the token sequence after the last block, before the final norm."""
        self.check_input(x)
        return run_blocks(self.blocks, self.embed(x), self.grad_checkpointing)

    @staticmethod
    def patch_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N + 1, C) tokens -> (B, h, w, C) map of the patch tokens (the class token removed)."""
        mid = Vim.cls_index(grid[0] * grid[1])
        patches = torch.cat([tokens[:, :mid], tokens[:, mid + 1 :]], dim=1)
        return patches.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])

    # --- timm API -----------------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, N + 1, C) normed tokens, the class token at ``cls_index(N)``."""
        return self.norm(self.forward_tokens(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, T, C) tokens -> logits (or pooled features with ``pre_logits``); see ``global_pool``."""
        if self.global_pool == "token":
            x = x[:, (x.shape[1] - 1) // 2]
        elif self.global_pool == "avg":
            mid = (x.shape[1] - 1) // 2
            x = torch.cat([x[:, :mid], x[:, mid + 1 :]], dim=1).mean(dim=1)
        else:
            return self.square_map(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def block_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """A block's output (B, N + 1, C) -> its patch tokens as a (B, h, w, C) map."""
        return self.patch_map(x, grid)

    def block_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A block's output as tokens: already (B, N + 1, C)."""
        return x

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embedding, class token, and the SSMs' A and D."""
        leaves = set(self.no_weight_decay_leaves)
        names = {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in leaves}
        return names | {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        )


def _resample_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(1, old N + 1, C) -> (1, new N + 1, C): patch positions resampled bicubically, the class entry kept in the
    middle."""
    old_mid = Vim.cls_index(old_grid[0] * old_grid[1])
    cls_pos = pos_embed[:, old_mid : old_mid + 1]
    patches = torch.cat([pos_embed[:, :old_mid], pos_embed[:, old_mid + 1 :]], dim=1)
    patches = resample_abs_pos_embed(patches, list(new_grid), list(old_grid), num_prefix_tokens=0)
    new_mid = Vim.cls_index(new_grid[0] * new_grid[1])
    return torch.cat([patches[:, :new_mid], cls_pos, patches[:, new_mid:]], dim=1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Vim) -> dict[str, torch.Tensor]:
    """Map an official Vim checkpoint (``vim/models_mamba.py``: ``layers.i.mixer``, ``layers.i.norm``, ``norm_f``)
    to vizoo's keys (``blocks.i.mixer``, ``blocks.i.norm``, ``norm``), resampling ``pos_embed`` to the model's grid.

    Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("backbone.")
        if key.startswith("layers."):
            key = "blocks." + key.removeprefix("layers.")
        elif key.startswith("norm_f."):
            key = "norm." + key.removeprefix("norm_f.")
        elif key == "pos_embed" and value.shape != model.pos_embed.shape:
            old_side = math.isqrt(value.shape[1] - 1)
            value = _resample_pos_embed(value, (old_side, old_side), model.grid_size)
        out[key] = value
    return check_converted(out, model)


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    depth = kwargs.get("depth", 24)
    out_indices = tuple(sorted({max(depth * q // 4 - 1, 0) for q in (1, 2, 3, 4)}))
    feature_cfg = dict(out_indices=out_indices, feature_cls="getter")
    return build_vizoo_model(Vim, variant, pretrained, checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


def _cfg(input_size: tuple[int, int, int] = (3, 224, 224), embed_dim: int = 192, **kwargs) -> PaperCfg:
    tokens = (input_size[1] // 16) * (input_size[2] // 16) + 1
    cfg = {
        "url": "",
        "num_classes": 1000,
        "input_size": input_size,
        "min_input_size": (3, 16, 16),  # one 16x16 patch; H and W must be multiples of the patch size
        "pool_size": (tokens, embed_dim),  # forward_features gives (B, tokens, channels): a token model
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2401.09417",
        "origin_url": "https://github.com/hustvl/Vim",
        **kwargs,
    }
    return PaperCfg(**cfg)


# Official weights: files of the Hugging Face repos hustvl/Vim-{tiny,small}-midclstok (apache-2.0) that the README
# links; pretrained=True downloads them into the HF cache. The repos also hold the "+" checkpoints (78.3, 81.6),
# fine-tuned as stride-8 patch models, a different architecture from these stride-16 ones.
# paper_*: the Vim paper's table (whole millions, top-1 before long-sequence fine-tuning); it gives no FLOPs.
default_cfgs = generate_default_cfgs(
    {
        "vim_tiny.in1k": _cfg(
            embed_dim=192,
            hf_hub_id="hustvl/Vim-tiny-midclstok",
            hf_hub_filename="vim_t_midclstok_76p1acc.pth",
            paper_params_m=7,
            paper_top1=76.1,
        ),
        "vim_small.in1k": _cfg(
            embed_dim=384,
            hf_hub_id="hustvl/Vim-small-midclstok",
            hf_hub_filename="vim_s_midclstok_80p5acc.pth",
            paper_params_m=26,
            paper_top1=80.5,
        ),
        "test_vim.untrained": _cfg(input_size=(3, 64, 64), embed_dim=64, crop_pct=1.0),
    }
)


# The papers' settings; drop_path_rate is the official pre-training one (vim/scripts/pt-vim-s.sh: 0.05; pt-vim-t.sh:
# 0.0, set explicitly since February 2024 for the released middle-class-token models).
@register_model
def vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(embed_dim=192, depth=24, d_state=16, expand=2.0, drop_path_rate=0.0)
    return _create_vim("vim_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small(pretrained: bool = False, **kwargs) -> Vim:
    model_args = dict(embed_dim=384, depth=24, d_state=16, expand=2.0, drop_path_rate=0.05)
    return _create_vim("vim_small", pretrained, **dict(model_args, **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> Vim:
    """A tiny Vim for tests (4 blocks of width 64, d_state 8; 64x64 inputs)."""
    model_args = dict(img_size=64, embed_dim=64, depth=4, d_state=8, expand=2.0)
    return _create_vim("test_vim", pretrained, **dict(model_args, **kwargs))
