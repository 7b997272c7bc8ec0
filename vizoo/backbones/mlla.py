"""MLLA: Mamba-Like Linear Attention.

Han et al., "Demystify Mamba in Vision: A Linear Attention Perspective", NeurIPS 2024.
https://arxiv.org/abs/2405.16605. Official code: https://github.com/LeapLabTHU/MLLA (``models/mlla.py``; weights
load through ``checkpoint_filter_fn``).

A Mamba-shaped block around linear attention, single-path linear attention in every stage (no softmax):
x += CPE(x); a = SiLU(W_a·LN x); h = SiLU(DWConv3(W_in·LN x)); x += out_proj(Attn(h) ⊙ a); x += CPE(x);
x += MLP(LN x). The attention (``vizoo.layers.MLLALinearAttention``) uses a real-valued 2-D RoPE computed for the
runtime HxW, so unlike the official classification code (a complex RoPE buffer fixed at 224 px, LeapLabTHU/MLLA#22,
#36) it accepts any input size divisible by 32, non-square ones included, and exports to ONNX.

vizoo's model is channel-last (NHWC) inside, and its stages downsample first (the official MBConv-style merging
that ends each official stage starts the next one here), so every stage output is a feature map at its stride.
The stem and downsample (``vizoo.layers.mlla_stem``) are shared with Spatial-Mamba and VSSD.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath, Mlp
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers.channels_last import conv_nhwc
from vizoo.layers.linear_attention import MLLALinearAttention
from vizoo.layers.mlla_stem import MllaDownsample, MllaStem

__all__ = ["MLLA"]


class MLLABlock(nn.Module):
    """CPE, the gated linear-attention path, CPE, MLP. (B, H, W, C) in and out."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path=0.0):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, dim)
        self.act_proj = nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.SiLU()
        self.attn = MLLALinearAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + conv_nhwc(self.cpe1, x)
        h = self.norm1(x)
        gate = self.act(self.act_proj(h))
        h = self.act(conv_nhwc(self.dwc, self.in_proj(h)))
        x = x + self.drop_path(self.out_proj(self.attn(h) * gate))
        x = x + conv_nhwc(self.cpe2, x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MLLA(StagedBackbone):
    """MLLA: conv stem (stride 4), four stages of MLLA blocks with channels doubling, LayerNorm, GAP, linear.

    Args:
        embed_dim: channels of stage 1 (stage i has embed_dim·2^i). depths, num_heads: per stage.
        mlp_ratio, qkv_bias: block settings. in_chans, num_classes, global_pool, drop_rate, drop_path_rate: timm's.
    """

    input_multiple = 32
    output_fmt = "NHWC"

    def __init__(
        self,
        embed_dim: int = 64,
        depths: tuple[int, ...] = (2, 4, 8, 4),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have one entry per stage")
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = MllaStem(in_chans, embed_dim)
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            MllaDownsample,
            lambda i, dim, drop_path: MLLABlock(dim, num_heads[i], mlp_ratio, qkv_bias, drop_path),
        )
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC")
        self.apply(init_trunc_normal)


def rename_mlla_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official MLLA-style keys (``patch_embed``, ``layers.i.blocks``, ``layers.i.downsample`` at the end of stage i,
    ``head``) -> vizoo's (``stem``, ``stages.i.blocks``, ``stages.{i+1}.downsample``, ``head.fc``); shared by
    Spatial-Mamba and VSSD, whose official code builds on MLLA's."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("backbone.")
        if key.startswith("patch_embed."):
            key = "stem." + key.removeprefix("patch_embed.")
        elif m := re.match(r"^layers\.(\d+)\.blocks\.(.*)$", key):
            key = f"stages.{m[1]}.blocks.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
            key = f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
        elif key.startswith("head.") and not key.startswith("head.fc."):
            key = "head.fc." + key.removeprefix("head.")
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MLLA) -> dict[str, torch.Tensor]:
    """Map an official MLLA checkpoint (``models/mlla.py`` layout) to vizoo's keys.

    The official model downsamples at the end of stages 0-2 (``layers.i.downsample``), vizoo at the start of stages
    1-3; the official fixed-size RoPE buffers (``attn.rope.rotations``) are dropped, vizoo computes RoPE for the
    input's size. Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if not any(k.startswith("stages.") for k in state_dict):
        kept = {k: v for k, v in state_dict.items() if not k.endswith("attn.rope.rotations")}
        state_dict = rename_mlla_layout(kept)
    return check_converted(state_dict, model)


def _create_mlla(variant: str, pretrained: bool = False, **kwargs) -> MLLA:
    return build_vizoo_model(MLLA, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg(
        "stem.conv1.conv", "arXiv:2405.16605", "https://github.com/LeapLabTHU/MLLA", license="mit", **kwargs
    )


# Official weights: the TsinghuaCloud links of the MLLA README's table (direct downloads, ``?dl=1``), one checkpoint
# per variant. pretrained=True downloads them into the torch hub cache as ``<name>.<tag>.pth``.
# paper_*: the table of the MLLA README (params in whole millions).
_CLOUD = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
default_cfgs = generate_default_cfgs(
    {
        "mlla_tiny.in1k": _cfg(
            url=_CLOUD.format("7a19712877cb4242889c"), paper_params_m=25, paper_gmacs=4.2, paper_top1=83.5
        ),
        "mlla_small.in1k": _cfg(
            url=_CLOUD.format("0e5d0b1409d540aaa80c"), paper_params_m=43, paper_gmacs=7.3, paper_top1=84.4
        ),
        "mlla_base.in1k": _cfg(
            url=_CLOUD.format("91c85c5a1061496d8796"), paper_params_m=96, paper_gmacs=16.2, paper_top1=85.3
        ),
        "test_mlla.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# drop_path_rate is each variant's training value from the official cfgs/mlla_*.yaml.


@register_model
def mlla_tiny(pretrained: bool = False, **kwargs) -> MLLA:
    model_args = dict(embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mlla("mlla_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def mlla_small(pretrained: bool = False, **kwargs) -> MLLA:
    model_args = dict(embed_dim=64, depths=(3, 6, 21, 6), num_heads=(2, 4, 8, 16), drop_path_rate=0.3)
    return _create_mlla("mlla_small", pretrained, **dict(model_args, **kwargs))


@register_model
def mlla_base(pretrained: bool = False, **kwargs) -> MLLA:
    model_args = dict(embed_dim=96, depths=(3, 6, 21, 6), num_heads=(3, 6, 12, 24), drop_path_rate=0.5)
    return _create_mlla("mlla_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_mlla(pretrained: bool = False, **kwargs) -> MLLA:
    """A tiny MLLA for tests (about 0.5 M parameters with 1000 classes)."""
    model_args = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, drop_path_rate=0.0)
    return _create_mlla("test_mlla", pretrained, **dict(model_args, **kwargs))
