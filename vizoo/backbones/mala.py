"""MALA / MAViT: Magnitude-Aware Linear Attention.

Fan et al., "Rectifying Magnitude Neglect in Linear Attention", ICCV 2025. https://arxiv.org/abs/2507.00698
Official code: https://github.com/qhfan/MALA (``classfication_release/model.py``; weights load through
``checkpoint_filter_fn``).

**The released models are hybrids**: magnitude-aware linear attention (``vizoo.layers.MagnitudeAwareLinearAttention``)
in stages 1-2 and softmax attention with the same RoPE/LePE/gate (``vizoo.layers.SoftmaxAttentionRoPE``) in stages
3-4, the official default in the classification, detection and segmentation code alike. vizoo's default
``attn_layout="LLSS"`` reproduces that; ``attn_layout="LLLL"`` gives an all-linear model (the same parameters, so
released weights load into it too; its accuracy is not the paper's).

Block: x += DW3x3(x); x += γ1·Attn(LN x); x += γ2·FFN(LN x), the FFN being 1x1 conv -> GELU -> (DW3x3 + identity)
-> 1x1 conv with ratio 3.5. Four-conv stem (stride 4), 3x3 stride-2 conv + BN between stages, and a head of 1x1 conv
to 2048 (2560 for L) channels, BN, SiLU (vizoo's ``norm``: ``forward_features`` returns its output, so
``num_features`` is 2048), GAP and a linear classifier. NCHW throughout; stages downsample first, so
every stage output is a feature map at its stride. Inputs must have H and W divisible by 32.
"""

from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath, LayerNorm2d
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers.linear_attention import MagnitudeAwareLinearAttention, SoftmaxAttentionRoPE

__all__ = ["MALA"]


class ConvFFN(nn.Module):
    """1x1 conv -> GELU -> DW3x3 with a residual -> 1x1 conv."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class MALABlock(nn.Module):
    """Conv position encoding, attention (``"L"`` MALA or ``"S"`` softmax), FFN, with LayerScale. NCHW in and out."""

    def __init__(self, dim, num_heads, attn_type, mlp_ratio=3.5, drop_path=0.0, layer_scale_init=1.0):
        super().__init__()
        if attn_type not in ("L", "S"):
            raise ValueError(f"attention type must be 'L' (linear) or 'S' (softmax), got {attn_type!r}")
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.attn = (MagnitudeAwareLinearAttention if attn_type == "L" else SoftmaxAttentionRoPE)(dim, num_heads)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, int(mlp_ratio * dim))
        self.gamma_1 = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init)))
        self.gamma_2 = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.ffn(self.norm2(x)))


class ConvBNDownsample(nn.Module):
    """3x3 stride-2 conv + BN (the official ``PatchMerging``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class ConvProjection(nn.Module):
    """The official head's 1x1 conv to ``hidden`` channels, BN and SiLU (vizoo's ``norm``, before pooling)."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_features, hidden, 1)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


class MALA(StagedBackbone):
    """MAViT: stem (stride 4), four stages of MALA/softmax blocks, then a conv-BN-SiLU head.

    Args:
        dims, depths, num_heads: per stage. attn_layout: one letter per stage, ``"L"`` magnitude-aware linear
            attention or ``"S"`` softmax attention (released models: ``"LLSS"``; all-linear: ``"LLLL"``).
        mlp_ratio: FFN ratio. head_hidden: channels of the head's 1x1 conv. layer_scale_init: LayerScale init per
            stage. in_chans, num_classes, global_pool, drop_rate, drop_path_rate: as in timm.
    """

    input_multiple = 32
    output_fmt = "NCHW"
    no_weight_decay_leaves = ("gamma_1", "gamma_2")

    def __init__(
        self,
        dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (1, 2, 4, 8),
        attn_layout: str = "LLSS",
        mlp_ratio: float = 3.5,
        head_hidden: int = 2048,
        layer_scale_init: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        if not len(dims) == len(depths) == len(num_heads) == len(attn_layout) == len(layer_scale_init):
            raise ValueError(
                f"dims {dims}, depths {depths}, num_heads {num_heads}, attn_layout {attn_layout!r} and "
                f"layer_scale_init {layer_scale_init} must have one entry per stage"
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        # forward_features ends with the official conv head (1x1 conv, BN, SiLU), so the features are head_hidden wide.
        self.num_features = self.head_hidden_size = head_hidden
        half = dims[0] // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, dims[0], 3, 2, 1),
            nn.BatchNorm2d(dims[0]),
        )
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            ConvBNDownsample,
            lambda i, dim, drop_path: MALABlock(
                dim, num_heads[i], attn_layout[i].upper(), mlp_ratio, drop_path, layer_scale_init[i]
            ),
        )
        self.norm = ConvProjection(dims[-1], head_hidden)
        self.head = ClassifierHead(head_hidden, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(partial(init_trunc_normal, layer_types=(nn.Conv2d, nn.Linear)))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MALA) -> dict[str, torch.Tensor]:
    """Map an official MALA checkpoint (``classfication_release/model.py`` layout) to vizoo's keys.

    ``patch_embed.proj`` is the stem; the official downsample ends stages 0-2 (``layers.i.downsample``), vizoo's
    starts stages 1-3; the official ``LayerNorm2d`` wraps an ``nn.LayerNorm`` (``norm1.norm.weight``); the head's
    ``proj``/``norm`` become ``norm.proj``/``norm.norm`` and its 1x1-conv classifier the linear ``head.fc``. The RoPE
    frequency buffers (``layers.i.RoPE.angle``) are dropped: vizoo computes them. Raises ``CheckpointError`` listing
    missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if not any(k.startswith("stages.") for k in state_dict):
        out = {}
        for key, value in state_dict.items():
            if re.match(r"^layers\.\d+\.RoPE\.", key):
                continue
            if key.startswith("patch_embed.proj."):
                key = "stem." + key.removeprefix("patch_embed.proj.")
            elif m := re.match(r"^layers\.(\d+)\.blocks\.(.*)$", key):
                rest = re.sub(r"^(\d+)\.(norm[12])\.norm\.", r"\1.\2.", m[2])
                key = f"stages.{m[1]}.blocks.{rest}"
            elif m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
                key = f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
            elif key.startswith(("proj.", "norm.")):
                key = "norm." + key
            elif key.startswith("head."):
                key = "head.fc." + key.removeprefix("head.")
                value = value.flatten(1) if value.dim() == 4 else value
            out[key] = value
        state_dict = out
    return check_converted(state_dict, model)


def _create_mala(variant: str, pretrained: bool = False, **kwargs) -> MALA:
    return build_vizoo_model(MALA, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg("stem.0", "arXiv:2507.00698", "https://github.com/qhfan/MALA", license="unknown", **kwargs)


# Official weights: the Hugging Face repo aldjalkdf/MAViT that the MALA README links ("All models here"). Small and
# Large are its files MAViT_S.pth and MAViT_L.pth, which pretrained=True downloads into the HF cache; Tiny's and
# Base's file names are not published, so pretrained=True names the repo and how to load a file from it.
# paper_*: the paper gives Small's figures only (27M, 4.6G, 84.7); the other variants have none.
_REPO = "aldjalkdf/MAViT"
_TREE = f"https://huggingface.co/{_REPO}/tree/main"
default_cfgs = generate_default_cfgs(
    {
        "mala_tiny.in1k": _cfg(manual_url=_TREE),
        "mala_small.in1k": _cfg(
            hf_hub_id=_REPO, hf_hub_filename="MAViT_S.pth", paper_params_m=27, paper_gmacs=4.6, paper_top1=84.7
        ),
        "mala_base.in1k": _cfg(manual_url=_TREE),
        "mala_large.in1k": _cfg(hf_hub_id=_REPO, hf_hub_filename="MAViT_L.pth"),
        "test_mala.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# The official MALA_T/S/B/L settings; drop_path_rate and LayerScale init are theirs too.


@register_model
def mala_tiny(pretrained: bool = False, **kwargs) -> MALA:
    model_args = dict(dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.1)
    return _create_mala("mala_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def mala_small(pretrained: bool = False, **kwargs) -> MALA:
    model_args = dict(dims=(64, 128, 320, 512), depths=(3, 5, 9, 3), num_heads=(1, 2, 5, 8), drop_path_rate=0.15)
    return _create_mala("mala_small", pretrained, **dict(model_args, **kwargs))


@register_model
def mala_base(pretrained: bool = False, **kwargs) -> MALA:
    model_args = dict(
        dims=(96, 192, 384, 512), depths=(4, 6, 12, 6), num_heads=(1, 2, 6, 8), drop_path_rate=0.4,
        layer_scale_init=(1.0, 1.0, 1e-6, 1e-6),
    )  # fmt: skip
    return _create_mala("mala_base", pretrained, **dict(model_args, **kwargs))


@register_model
def mala_large(pretrained: bool = False, **kwargs) -> MALA:
    model_args = dict(
        dims=(96, 192, 448, 640), depths=(4, 7, 19, 8), num_heads=(1, 2, 7, 10), drop_path_rate=0.55,
        head_hidden=2560, layer_scale_init=(1e-6,) * 4,
    )  # fmt: skip
    return _create_mala("mala_large", pretrained, **dict(model_args, **kwargs))


@register_model
def test_mala(pretrained: bool = False, **kwargs) -> MALA:
    """A tiny MALA for tests (hybrid layout, about 0.4 M parameters with 1000 classes)."""
    model_args = dict(
        dims=(16, 32, 64, 96), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 6), mlp_ratio=2.0, head_hidden=128,
        drop_path_rate=0.0,
    )  # fmt: skip
    return _create_mala("test_mala", pretrained, **dict(model_args, **kwargs))
