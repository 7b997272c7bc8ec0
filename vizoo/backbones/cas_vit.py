"""CAS-ViT: Convolutional Additive Self-attention Vision Transformers.

Zhang et al., "CAS-ViT: Convolutional Additive Self-attention Vision Transformers for Efficient Mobile
Applications", arXiv 2408.03703. Official code: https://github.com/Tianfang-Zhang/CAS-ViT (``RCViT`` in
``classification/model/rcvit.py``; weights load through ``checkpoint_filter_fn``).

The token mixer (CATM) has no matmul and no softmax: Q, K, V from one 1x1 conv, Φ(x) = channel(spatial(x)) gates,
out = DW3x3_proj(DW3x3(Φ_q(Q) + Φ_k(K)) ⊙ V). Every op is a convolution, BatchNorm, ReLU/GELU, sigmoid, global pool,
multiply or add, which makes it the most portable family for mobile runtimes. ``CASViT.fuse()`` folds every
BatchNorm into its neighbouring convolution (and the final one into the classifier) for deployment.

The model is NCHW throughout; stages downsample first (a 3x3 stride-2 conv + BN), so every stage output is a
feature map at its stride. The official distillation head is folded into the classifier on load: at eval the
official model averages its two linear heads, which is one linear layer with the averaged weights.
Inputs must have H and W divisible by 32.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, DropPath
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers.fusion import fuse_bn_conv1x1, fuse_bn_linear, fuse_conv_bn

__all__ = ["CASViT"]


class SpatialGate(nn.Module):
    """x ⊙ σ(Conv1x1_{C->1}(ReLU(BN(DW3x3 x))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, 1, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x)


class ChannelGate(nn.Module):
    """x ⊙ σ(Conv1x1(GAP x))."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x)


class AdditiveTokenMixer(nn.Module):
    """CATM: proj(dwc(Φ_q(Q) + Φ_k(K)) ⊙ V), Φ = channel gate after spatial gate. (B, C, H, W) in and out."""

    def __init__(self, dim: int, qkv_bias: bool = False):
        super().__init__()
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.oper_q = nn.Sequential(SpatialGate(dim), ChannelGate(dim))
        self.oper_k = nn.Sequential(SpatialGate(dim), ChannelGate(dim))
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return self.proj(self.dwc(self.oper_q(q) + self.oper_k(k)) * v)


class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AdditiveBlock(nn.Module):
    """x + LocalIntegration(x); x + CATM(BN x); x + MLP(BN x). (B, C, H, W) in and out."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        # Local integration: 1x1 conv -> BN -> DW3x3 -> GELU -> 1x1 conv (``network`` as in the official code).
        self.local_perception = nn.Module()
        self.local_perception.network = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = AdditiveTokenMixer(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.local_perception.network(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvBNDownsample(nn.Module):
    """3x3 stride-2 conv + BN between stages (the official ``Embedding``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class CASViT(StagedBackbone):
    """CAS-ViT (the official ``RCViT``): conv stem (stride 4), four stages of additive blocks, BN, GAP, linear.

    Args:
        dims: channels per stage. depths: blocks per stage. mlp_ratio: MLP hidden ratio.
        in_chans, num_classes, global_pool, drop_rate, drop_path_rate: as in timm.
    """

    input_multiple = 32
    output_fmt = "NCHW"

    def __init__(
        self,
        dims: tuple[int, ...] = (48, 56, 112, 220),
        depths: tuple[int, ...] = (2, 2, 4, 2),
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {dims} and depths {depths} must have one entry per stage")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0] // 2),
            nn.ReLU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0]),
            nn.ReLU(),
        )
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            ConvBNDownsample,
            lambda i, dim, drop_path: AdditiveBlock(dim, mlp_ratio, drop_path),
        )
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(init_trunc_normal)

    @torch.no_grad()
    def fuse(self) -> CASViT:
        """Fold every BatchNorm into a neighbouring conv, in place, for deployment (eval outputs unchanged).

        BN after a conv (stem, downsample, local integration, spatial gate) goes into that conv; BN before a 1x1
        conv (``norm1`` into ``attn.qkv``, ``norm2`` into ``mlp.fc1``) into the conv that follows it; the final
        ``norm`` into the classifier (BN, global average pool and a linear layer commute) when the model has one, so
        that ``forward_features`` then returns the un-normalised map. Returns the model, in eval mode.
        """
        self.eval()
        _fuse_sequential(self.stem)
        for stage in self.stages:
            if isinstance(stage.downsample, ConvBNDownsample):
                stage.downsample.proj = fuse_conv_bn(stage.downsample.proj, stage.downsample.norm)
                stage.downsample.norm = nn.Identity()
            for block in stage.blocks:
                _fuse_sequential(block.local_perception.network)
                for oper in (block.attn.oper_q, block.attn.oper_k):
                    _fuse_sequential(oper[0].block)
                block.attn.qkv = fuse_bn_conv1x1(block.norm1, block.attn.qkv)
                block.norm1 = nn.Identity()
                block.mlp.fc1 = fuse_bn_conv1x1(block.norm2, block.mlp.fc1)
                block.norm2 = nn.Identity()
        fc = self.head.fc
        if isinstance(self.norm, nn.BatchNorm2d) and isinstance(fc, nn.Linear) and self.head.global_pool.pool_type:
            self.head.fc = fuse_bn_linear(self.norm, fc)
            self.norm = nn.Identity()
        return self


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Replace each (Conv2d, BatchNorm2d) pair in ``seq`` by (fused conv, Identity), keeping the indices."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
            seq[i] = fuse_conv_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CASViT) -> dict[str, torch.Tensor]:
    """Map an official CAS-ViT checkpoint (``RCViT`` layout) to vizoo's keys.

    Official ``network`` interleaves stages and downsamples: ``network.{2i}`` is stage i's blocks,
    ``network.{2i-1}`` the downsample before stage i. ``patch_embed`` is the stem. The distillation head
    ``dist_head`` is averaged with ``head`` (what the official model does with their outputs at eval).
    Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if not any(k.startswith("stages.") for k in state_dict):
        out = {}
        for key, value in state_dict.items():
            if key.startswith("patch_embed."):
                key = "stem." + key.removeprefix("patch_embed.")
            elif m := re.match(r"^network\.(\d+)\.(.*)$", key):
                index, rest = int(m[1]), m[2]
                if index % 2 == 0:
                    key = f"stages.{index // 2}.blocks.{rest}"
                else:
                    key = f"stages.{(index + 1) // 2}.downsample.{rest}"
            elif key.startswith("head."):
                key = "head.fc." + key.removeprefix("head.")
            elif key.startswith("dist_head."):
                continue
            out[key] = value
        for name in ("weight", "bias"):
            if f"dist_head.{name}" in state_dict and f"head.fc.{name}" in out:
                out[f"head.fc.{name}"] = (out[f"head.fc.{name}"] + state_dict[f"dist_head.{name}"]) / 2
        state_dict = out
    return check_converted(state_dict, model)


def _create_cas_vit(variant: str, pretrained: bool = False, **kwargs) -> CASViT:
    return build_vizoo_model(CASViT, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg(
        "stem.0", "arXiv:2408.03703", "https://github.com/Tianfang-Zhang/CAS-ViT", license="mit", **kwargs
    )


# Official weights: Google Drive files linked from the CAS-ViT MODEL_ZOO (two per variant, unlabelled, beside two
# unlabelled top-1 figures), which no URL can fetch: pretrained=True names the page and how to load the file.
# paper_*: the parameters of the CAS-ViT MODEL_ZOO, distillation head included (it gives no FLOPs, and two
# unlabelled top-1 figures per variant, so no top-1 is recorded).
_ZOO = "https://github.com/Tianfang-Zhang/CAS-ViT/blob/main/MODEL_ZOO.md"
default_cfgs = generate_default_cfgs(
    {
        "cas_vit_xs.in1k": _cfg(manual_url=_ZOO, paper_params_m=3.20),
        "cas_vit_s.in1k": _cfg(manual_url=_ZOO, paper_params_m=5.76),
        "cas_vit_m.in1k": _cfg(manual_url=_ZOO, paper_params_m=12.42),
        "cas_vit_t.in1k": _cfg(manual_url=_ZOO, paper_params_m=21.76),
        "test_cas_vit.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)


# drop_path_rate 0.1 for every variant: the official classification/main.py default, which the README's training
# command also passes.
@register_model
def cas_vit_xs(pretrained: bool = False, **kwargs) -> CASViT:
    model_args = dict(dims=(48, 56, 112, 220), depths=(2, 2, 4, 2), drop_path_rate=0.1)
    return _create_cas_vit("cas_vit_xs", pretrained, **dict(model_args, **kwargs))


@register_model
def cas_vit_s(pretrained: bool = False, **kwargs) -> CASViT:
    model_args = dict(dims=(48, 64, 128, 256), depths=(3, 3, 6, 3), drop_path_rate=0.1)
    return _create_cas_vit("cas_vit_s", pretrained, **dict(model_args, **kwargs))


@register_model
def cas_vit_m(pretrained: bool = False, **kwargs) -> CASViT:
    model_args = dict(dims=(64, 96, 192, 384), depths=(3, 3, 6, 3), drop_path_rate=0.1)
    return _create_cas_vit("cas_vit_m", pretrained, **dict(model_args, **kwargs))


@register_model
def cas_vit_t(pretrained: bool = False, **kwargs) -> CASViT:
    model_args = dict(dims=(96, 128, 256, 512), depths=(3, 3, 6, 3), drop_path_rate=0.1)
    return _create_cas_vit("cas_vit_t", pretrained, **dict(model_args, **kwargs))


@register_model
def test_cas_vit(pretrained: bool = False, **kwargs) -> CASViT:
    """A tiny CAS-ViT for tests (0.1 M parameters with 1000 classes)."""
    model_args = dict(dims=(16, 24, 32, 48), depths=(1, 1, 1, 1), mlp_ratio=2.0)
    return _create_cas_vit("test_cas_vit", pretrained, **dict(model_args, **kwargs))
