"""Vision-RWKV: RWKV's linear-complexity token mixing on a plain ViT layout.

Duan et al., "Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures", ICLR 2025.
https://arxiv.org/abs/2403.02308. Official code: https://github.com/OpenGVLab/Vision-RWKV
(``classification/mmcls_custom/models/backbones/vrwkv.py``; weights load through ``checkpoint_filter_fn``).

Layout, as released (the RWKV-4-style VRWKV-T/S/B/L): a 16x16/s16 patch conv, a learned absolute position embedding
(no class token) and ``depth`` blocks at one width; the first block's input passes an extra LayerNorm (``norm_pre``,
the official ``layers.0.ln0``). A block is

    x += DP(γ1 · SpatialMix(LN x)),  x += DP(γ2 · ChannelMix(LN x))           (T)
    x += DP(γ1 · LN(SpatialMix x)),  x += DP(γ2 · LN(ChannelMix x))           (post_norm: S, B, L)

with γ a LayerScale (S: initial 1, B and L: 1e-5, T: none). Both mixers start with Q-Shift: a quarter of the channels
each takes the value of the left, right, upper and lower neighbour pixel (zeros at the borders), and every projection's
input is ``μ·x + (1 - μ)·shift(x)`` with its own learnable μ. SpatialMix projects k, v, r (no bias), runs the
bidirectional WKV (``vizoo.kernels.bi_wkv``) with decay ``w = spatial_decay / T`` and bonus
``u = spatial_first / T`` (T = token count, so the effective decay depends on the input resolution, as in the official
model), gates with σ(r) and projects out. ChannelMix is ``σ(W_r x_r) · W_v ReLU(W_k x_k)²`` with a 4x hidden width.
The classifier is the official mmcls one: final LayerNorm, mean over the tokens, Linear.

VRWKV-L (ImageNet-22k pretrained, fine-tuned on ImageNet-1k at 384², trained with the official
``classification_internimage`` code) adds ``key_norm`` (a LayerNorm on the WKV output and on ChannelMix's hidden
activations) and a pre-logits layer before the classifier, ``Linear(C, 3072) -> Tanh`` (``head_hidden_size``; the
official ``VRWKV_Classification`` builds it for every model deeper than 12 blocks). Its position embedding is the
12x12 grid it was pretrained with (``img_size=192``) and is resampled to the input's grid at every forward, as in the
official model, so the default 384² input runs it at 24x24.

Tokens travel between blocks as a (B, h, w, C) map, so Q-Shift sees the grid and the blocks are an ``nn.Sequential``.
``forward_features`` returns the normed tokens (B, N, C), N = h·w in row-major order, as timm's ViTs do; the
``pool_size`` of the default cfgs is therefore (tokens, channels). ``global_pool``: "avg" (default: the mean of the
tokens, as the official head) or "" (the tokens as an NHWC map; square inputs only, use ``forward_intermediates`` for
other shapes). ``forward_intermediates`` gives the map after chosen blocks as NCHW/NHWC at stride 16.

Valid inputs: (B, in_chans, H, W) with H and W positive multiples of 16; the position embedding is resampled
(bicubic, as mmcls' ``resize_pos_embed``) when the grid differs from the one of ``img_size``. The official mmcv
``PatchEmbed`` would zero-pad other sizes on the right and bottom ('corner' padding), silently adding all-zero
pixels to the image; vizoo refuses them with a ValueError instead (pad with ``F.pad(x, (0, pad_w, 0, pad_h))`` to get
the official behaviour).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import PlainBackbone, run_blocks
from vizoo.backbones._builder import build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.kernels.bi_wkv import bi_wkv

__all__ = ["VisionRWKV"]


def q_shift(x: torch.Tensor) -> torch.Tensor:
    """Q-Shift of a (B, h, w, C) map: channels [0, C/4) take the left neighbour's value, [C/4, C/2) the right one's,
    [C/2, 3C/4) the upper one's, [3C/4, C) the lower one's, with zeros where the neighbour is outside the map;
    channels past 4·floor(C/4) are kept."""
    q = x.shape[-1] // 4
    return torch.cat(
        [
            F.pad(x[:, :, :-1, :q], (0, 0, 1, 0)),
            F.pad(x[:, :, 1:, q : 2 * q], (0, 0, 0, 1)),
            F.pad(x[:, :-1, :, 2 * q : 3 * q], (0, 0, 0, 0, 1, 0)),
            F.pad(x[:, 1:, :, 3 * q : 4 * q], (0, 0, 0, 0, 0, 1)),
            x[..., 4 * q :],
        ],
        dim=-1,
    )


def _mix(x: torch.Tensor, shifted: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """RWKV's token mix ``μ·x + (1 - μ)·shifted`` (μ broadcast over the channels)."""
    return x * mu + shifted * (1 - mu)


def _channel_ramp(dim: int, exponent: float) -> torch.Tensor:
    """(1, 1, dim) of (i / dim) ** exponent: RWKV's "fancy" token-mix init, channel i mixing in more of x as i grows."""
    return (torch.arange(dim, dtype=torch.float32) / dim).pow(exponent).reshape(1, 1, dim)


class SpatialMix(nn.Module):
    """Vision-RWKV's token mixer, (B, h, w, C) -> (B, h, w, C): Q-Shift, k/v/r projections, bidirectional WKV over
    the h·w tokens (row-major), σ(r) gate, output projection.

    ``decay`` and ``first`` (C,) are divided by the token count before the WKV. ``key_norm`` adds a LayerNorm on the
    WKV output (VRWKV-L). Parameters start at the official "fancy" init for block ``layer_id`` of ``depth``.
    """

    def __init__(
        self, dim: int, layer_id: int, depth: int, key_norm: bool = False, wkv_backend: str | None = None
    ) -> None:
        super().__init__()
        self.wkv_backend = wkv_backend
        early_to_late = layer_id / max(depth - 1, 1)
        late_to_early = 1.0 - layer_id / depth
        channel = torch.arange(dim, dtype=torch.float64)  # in double, as the official per-channel Python floats
        # decay rises from -5 to 3 over the channels, along a curve that bends more in deeper blocks.
        self.decay = nn.Parameter((-5 + 8 * (channel / max(dim - 1, 1)).pow(0.7 + 1.3 * early_to_late)).float())
        self.first = nn.Parameter((math.log(0.3) + 0.5 * ((channel + 1) % 3 - 1)).float())
        self.mix_k = nn.Parameter(_channel_ramp(dim, late_to_early))
        self.mix_v = nn.Parameter(_channel_ramp(dim, late_to_early) + 0.3 * early_to_late)
        self.mix_r = nn.Parameter(_channel_ramp(dim, 0.5 * late_to_early))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.key_norm = nn.LayerNorm(dim) if key_norm else nn.Identity()
        self.output = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        shifted = q_shift(x)
        k = self.key(_mix(x, shifted, self.mix_k))
        v = self.value(_mix(x, shifted, self.mix_v))
        r = self.receptance(_mix(x, shifted, self.mix_r))
        tokens = h * w
        # w and u in fp32 whatever the model's dtype (the kernel's contract, as the official WKV casts them)
        decay, bonus = self.decay.float() / tokens, self.first.float() / tokens
        y = bi_wkv(decay, bonus, k.reshape(b, tokens, c), v.reshape(b, tokens, c), backend=self.wkv_backend)
        y = self.key_norm(y.reshape(b, h, w, c))
        return self.output(torch.sigmoid(r) * y)


class ChannelMix(nn.Module):
    """Vision-RWKV's channel mixer, (B, h, w, C) -> (B, h, w, C): ``σ(W_r x_r) · W_v ReLU(W_k x_k)²`` on Q-Shifted
    inputs, hidden width ``hidden_ratio·C`` (``key_norm``: a LayerNorm on the hidden activations, VRWKV-L)."""

    def __init__(self, dim: int, layer_id: int, depth: int, hidden_ratio: float = 4.0, key_norm: bool = False):
        super().__init__()
        hidden = int(hidden_ratio * dim)
        late_to_early = 1.0 - layer_id / depth
        self.mix_k = nn.Parameter(_channel_ramp(dim, late_to_early))
        self.mix_r = nn.Parameter(_channel_ramp(dim, late_to_early))
        self.key = nn.Linear(dim, hidden, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if key_norm else nn.Identity()
        self.value = nn.Linear(hidden, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = q_shift(x)
        k = self.key_norm(torch.relu(self.key(_mix(x, shifted, self.mix_k))).square())
        return torch.sigmoid(self.receptance(_mix(x, shifted, self.mix_r))) * self.value(k)


class VisionRWKVBlock(nn.Module):
    """One Vision-RWKV block on a (B, h, w, C) map: pre-norm (LN before each mixer) or, with ``post_norm``,
    res-post-norm (LN on each mixer's output); ``layer_scale`` is γ's initial value, None for no γ."""

    def __init__(
        self,
        dim: int,
        layer_id: int,
        depth: int,
        hidden_ratio: float = 4.0,
        post_norm: bool = False,
        layer_scale: float | None = None,
        key_norm: bool = False,
        drop_path: float = 0.0,
        wkv_backend: str | None = None,
    ):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim)
        self.spatial_mix = SpatialMix(dim, layer_id, depth, key_norm, wkv_backend)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mix = ChannelMix(dim, layer_id, depth, hidden_ratio, key_norm)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = x + self.drop_path(self.ls1(self.norm1(self.spatial_mix(x))))
            return x + self.drop_path(self.ls2(self.norm2(self.channel_mix(x))))
        x = x + self.drop_path(self.ls1(self.spatial_mix(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.channel_mix(self.norm2(x))))


class VisionRWKV(PlainBackbone):
    """Vision-RWKV backbone and classifier, (B, C_in, H, W) -> (B, num_classes).

    Args:
        img_size: input size the position embedding is made for (other sizes resample it).
        patch_size: patch side and stride.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: "avg" (mean of the tokens) or "" (the token map).
        embed_dim: width of every block.
        depth: number of blocks.
        hidden_ratio: ChannelMix hidden width, as a multiple of ``embed_dim``.
        post_norm: LayerNorm on the mixers' outputs instead of their inputs (S, B, L).
        layer_scale: initial LayerScale γ (None: no γ).
        key_norm: LayerNorm inside both mixers (L).
        head_hidden_size: width of a ``Linear -> Tanh`` pre-logits layer before the classifier (L: 3072; None: none).
        wkv_backend: Bi-WKV backend of every block (None picks per device; see ``vizoo.kernels.bi_wkv``).
        drop_rate: classifier dropout. pos_drop_rate: dropout after the position embedding.
        drop_path_rate: maximum stochastic depth (linear over blocks).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 192,
        depth: int = 12,
        hidden_ratio: float = 4.0,
        post_norm: bool = False,
        layer_scale: float | None = None,
        key_norm: bool = False,
        head_hidden_size: int | None = None,
        wkv_backend: str | None = None,
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
        self.num_features = self.embed_dim = embed_dim
        self.head_hidden_size = head_hidden_size or embed_dim
        self.patch_size = self.input_multiple = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.grad_checkpointing = False

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = nn.LayerNorm(embed_dim)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[
                VisionRWKVBlock(
                    embed_dim, i, depth, hidden_ratio, post_norm, layer_scale, key_norm, dpr[i], wkv_backend
                )  # fmt: skip
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.pre_logits = nn.Identity()
        if head_hidden_size:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(embed_dim, head_hidden_size), act=nn.Tanh()))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        # The official init (mmcls init_cfg): truncated-normal Linears (std 0.02, zero bias), LayerNorms at 1 and 0,
        # the patch conv at PyTorch's default, a zero position embedding; decay, first and μ keep their fancy init.
        self.apply(init_trunc_normal)

    # --- tokens -------------------------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H/16, W/16, C): patches, position embedding (resampled to the grid), ``norm_pre``."""
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)
        grid = (x.shape[1], x.shape[2])
        pos = self.pos_embed
        if grid != self.grid_size:
            pos = resample_pos_embed(pos, grid, self.grid_size)
        x = self.pos_drop(x + pos.reshape(1, grid[0], grid[1], -1))
        return self.norm_pre(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H/16, W/16, C): the map after the last block, before the final norm."""
        self.check_input(x)
        return run_blocks(self.blocks, self.embed(x), self.grad_checkpointing)

    @staticmethod
    def patch_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) tokens, N = h·w row-major -> (B, h, w, C) map."""
        return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])

    # --- timm API -----------------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, N, C) normed tokens, N = (H/16)·(W/16) in row-major order."""
        return self.norm(self.forward_map(x)).flatten(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, C) tokens -> logits (or the pooled features after the pre-logits layer, (B, head_hidden_size),
        with ``pre_logits``; ``reset_classifier`` keeps that layer, as timm's heads do); see ``global_pool``."""
        if self.global_pool == "":
            return self.square_map(x)
        x = self.head_drop(self.pre_logits(x.mean(dim=1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def block_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """A block's output is already the (B, h, w, C) map."""
        return x

    def block_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A block's output (B, h, w, C) -> (B, N, C) tokens, row-major."""
        return x.flatten(1, 2)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Empty: the official recipe (mmcls, ``norm_decay_mult=0, bias_decay_mult=0``) decays every other parameter,
        the position embedding included; timm's optimizer factory leaves (C,)-shaped parameters (decay, first, γ)
        out of weight decay by their shape."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^pos_embed|^patch_embed|^norm_pre",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^pre_logits", (99999,))],
        )


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int]) -> torch.Tensor:
    """(1, old h·w, C) -> (1, new h·w, C), bicubic without antialiasing (mmcls' ``resize_pos_embed``)."""
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=0, antialias=False)


# Official (mmcls, after ``backbone.``) -> vizoo key patterns, tried in order.
_OFFICIAL_KEYS = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.0\.ln0\.", "norm_pre."),
    (r"^layers\.(\d+)\.ln([12])\.", r"blocks.\1.norm\2."),
    (r"^layers\.(\d+)\.gamma([12])$", r"blocks.\1.ls\2.gamma"),
    (r"^layers\.(\d+)\.att\.spatial_decay$", r"blocks.\1.spatial_mix.decay"),
    (r"^layers\.(\d+)\.att\.spatial_first$", r"blocks.\1.spatial_mix.first"),
    (r"^layers\.(\d+)\.att\.spatial_mix_([kvr])$", r"blocks.\1.spatial_mix.mix_\2"),
    (r"^layers\.(\d+)\.att\.", r"blocks.\1.spatial_mix."),
    (r"^layers\.(\d+)\.ffn\.spatial_mix_([kr])$", r"blocks.\1.channel_mix.mix_\2"),
    (r"^layers\.(\d+)\.ffn\.", r"blocks.\1.channel_mix."),
    (r"^ln1\.", "norm."),
    (r"^head\.fc\.", "head."),
    # VRWKV-L (classification_internimage): head = Sequential(Linear, Tanh, Linear)
    (r"^head\.0\.", "pre_logits.fc."),
    (r"^head\.2\.", "head."),
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionRWKV) -> dict[str, torch.Tensor]:
    """Map an official Vision-RWKV checkpoint (mmcls ``ImageClassifier``: ``backbone.*``, ``head.fc.*``, e.g. the HF
    ``vrwkv_*_in1k_224.pth`` files, whose ``state_dict`` ``read_state_dict`` unwraps; or the ``VRWKV_Classification``
    of ``classification_internimage``, ``backbone.*``, ``head.{0,2}.*``, as ``vrwkv_l_22kto1k_384.pth``) to vizoo's
    keys, resampling the position embedding when its grid differs from the model's.

    Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    official = any(k.startswith(("backbone.", "layers.")) for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if official:
            key = key.removeprefix("backbone.")
            for pattern, replacement in _OFFICIAL_KEYS:
                key, found = re.subn(pattern, replacement, key)
                if found:
                    break
        if key == "pos_embed" and value.dim() == 3 and value.shape[1] != model.pos_embed.shape[1]:
            side = math.isqrt(value.shape[1])
            if side * side == value.shape[1]:
                value = resample_pos_embed(value, model.grid_size, (side, side))
        out[key] = value
    return check_converted(out, model)


def _create_vrwkv(variant: str, pretrained: bool = False, **kwargs) -> VisionRWKV:
    depth = kwargs.get("depth", 12)
    out_indices = tuple(sorted({max(depth * q // 4 - 1, 0) for q in (1, 2, 3, 4)}))
    feature_cfg = dict(out_indices=out_indices, feature_cls="getter")
    return build_vizoo_model(VisionRWKV, variant, pretrained, checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


def _cfg(filename: str = "", input_size: tuple[int, int, int] = (3, 224, 224), embed_dim: int = 192, **kwargs):
    hub = dict(hf_hub_id="OpenGVLab/Vision-RWKV", hf_hub_filename=filename) if filename else {}
    tokens = (input_size[1] // 16) * (input_size[2] // 16)
    return imagenet_cfg(
        "patch_embed.proj",
        "arXiv:2403.02308",
        "https://github.com/OpenGVLab/Vision-RWKV",
        input_size=input_size,
        min_input_size=(3, 16, 16),  # one 16x16 patch; H and W must be multiples of the patch size
        pool_size=(tokens, embed_dim),  # forward_features gives (B, tokens, channels): a token model
        classifier="head",
        license="apache-2.0",
        **hub,
        **kwargs,
    )


# Official ImageNet-1k weights: the files of the HF repo OpenGVLab/Vision-RWKV (apache-2.0) that the README's table
# links; pretrained=True downloads them into the HF cache. Eval as the official test pipelines: T/S/B (mmcls) short
# side 256 (bicubic), centre crop 224 (crop_pct 0.875); L (classification_internimage, TEST.CROP) short side 384
# (bicubic), centre crop 384 (crop_pct 1.0); ImageNet mean/std.
# paper_*: the README's / paper's table at the cfg's input size; its FLOPs are mmcv's MAC count plus 29·T·C per block
# for the WKV.
default_cfgs = generate_default_cfgs(
    {
        "vrwkv_tiny.in1k": _cfg("vrwkv_t_in1k_224.pth", paper_params_m=6.2, paper_gmacs=1.2, paper_top1=75.1),
        "vrwkv_small.in1k": _cfg(
            "vrwkv_s_in1k_224.pth", embed_dim=384, paper_params_m=23.8, paper_gmacs=4.6, paper_top1=80.1
        ),
        "vrwkv_base.in1k": _cfg(
            "vrwkv_b_in1k_224.pth", embed_dim=768, paper_params_m=93.7, paper_gmacs=18.2, paper_top1=82.0
        ),
        "vrwkv_large.in22k_ft_in1k": _cfg(
            "vrwkv_l_22kto1k_384.pth",
            input_size=(3, 384, 384),
            embed_dim=1024,
            crop_pct=1.0,
            paper_params_m=334.9,
            paper_gmacs=189.5,
            paper_top1=86.0,
        ),
        "test_vrwkv.untrained": _cfg(input_size=(3, 64, 64), embed_dim=32, crop_pct=1.0),
    }
)


# The official configs' settings (T/S/B: classification/configs/vrwkv/*.py; L:
# classification_internimage/configs/vrwkv_l_22kto1k_384.yaml); drop_path_rate is each variant's training value.
@register_model
def vrwkv_tiny(pretrained: bool = False, **kwargs) -> VisionRWKV:
    model_args = dict(embed_dim=192, depth=12, drop_path_rate=0.0)
    return _create_vrwkv("vrwkv_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv_small(pretrained: bool = False, **kwargs) -> VisionRWKV:
    model_args = dict(embed_dim=384, depth=12, post_norm=True, layer_scale=1.0, drop_path_rate=0.3)
    return _create_vrwkv("vrwkv_small", pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv_base(pretrained: bool = False, **kwargs) -> VisionRWKV:
    model_args = dict(embed_dim=768, depth=12, post_norm=True, layer_scale=1e-5, drop_path_rate=0.5)
    return _create_vrwkv("vrwkv_base", pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv_large(pretrained: bool = False, **kwargs) -> VisionRWKV:
    """VRWKV-L: position embedding for a 12x12 grid (the official MODEL.VRWKV.IMG_SIZE 192), resampled to the 24x24
    grid of its 384² input; ``img_size=384`` stores it at 24x24 instead (resampled once when the weights load)."""
    model_args = dict(
        img_size=192,
        embed_dim=1024,
        depth=24,
        post_norm=True,
        layer_scale=1e-5,
        key_norm=True,
        head_hidden_size=3072,
        drop_path_rate=0.1,
    )
    return _create_vrwkv("vrwkv_large", pretrained, **dict(model_args, **kwargs))


@register_model
def test_vrwkv(pretrained: bool = False, **kwargs) -> VisionRWKV:
    """A tiny Vision-RWKV for tests (4 post-norm blocks of width 32 with layer scale; 64x64 inputs)."""
    model_args = dict(img_size=64, embed_dim=32, depth=4, post_norm=True, layer_scale=1.0)
    return _create_vrwkv("test_vrwkv", pretrained, **dict(model_args, **kwargs))
