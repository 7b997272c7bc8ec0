"""EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba.

Pei et al., arXiv 2403.09977 (2024). https://arxiv.org/abs/2403.09977
Official code: https://github.com/TerryPei/EfficientVMamba (weights load through ``checkpoint_filter_fn``).

A VMamba-v0 layout (4x4 patch stem, patch merging, SS2D with d_state 16, ssm_ratio 2 and a SiLU gate, no MLP) where
- stages 1-2 use EVSS blocks: SS2D over the *atrous* routes (the four phases of the stride-2 lattice, so each scan
  is a quarter as long) in parallel with a DW3x3 conv branch, both re-weighted by one channel attention;
- stages 3-4 are MobileNetV2 inverted residuals (expansion 4, SE ratio 0.125, ReLU), timm's ``InvertedResidual``.

Paper table (ImageNet-1k, 224²): T 6M / 0.8G / 76.5, S 11M / 1.3G / 78.7, B 33M / 4.0G / 81.8. The published runs'
logs (``classification/logs/log_efficient_vmamba_*.txt``) print 6.494 / 11.274 / 33.717 M parameters, which vizoo
matches exactly. Two facts follow the logs rather than the repo's yaml files: Small has stem width 64 (its yaml says
96, which gives 24.8 M), and all three trained with drop_path 0.1 (the yamls say 0.2). The paper's FLOPs count the
selective scan with VMamba's formula (9·B·L·D·N), as vizoo's ``count_macs`` does.
Inputs must have H and W divisible by 32, as in VMamba.
"""

from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite
from timm.models.swin_transformer import PatchMerging

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers.efficient_vmamba import EfficientVSSBlock
from vizoo.layers.vmamba_blocks import PatchStem

__all__ = ["EfficientVMamba"]


class EfficientVMamba(StagedBackbone):
    """EfficientVMamba backbone and classifier.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: pooling before the classifier ("avg", "max", "" for none).
        dims: channels of the four stages.
        depths: blocks per stage.
        stage_blocks: block type per stage, "evss" or "mbconv" (the paper: two of each).
        d_state, ssm_ratio: SS2D settings of the EVSS blocks (see ``vizoo.layers.SS2D``).
        scan_backend: selective-scan backend for every block (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and the maximum stochastic depth (linear over blocks).
    """

    no_weight_decay_leaves = ("A_logs", "Ds", "dt_projs_bias")
    output_fmt = "NHWC"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 2, 9, 2),
        stage_blocks: tuple[str, ...] = ("evss", "evss", "mbconv", "mbconv"),
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        scan_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not len(dims) == len(depths) == len(stage_blocks):
            raise ValueError(f"dims {dims}, depths {depths} and stage_blocks {stage_blocks} must have equal lengths")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = PatchStem(in_chans, dims[0])

        unknown = sorted(set(stage_blocks) - {"evss", "mbconv"})
        if unknown:
            raise ValueError(f"unknown block {unknown[0]!r} in stage_blocks; use 'evss' or 'mbconv'")
        ssm_kwargs = dict(d_state=d_state, ssm_ratio=ssm_ratio, gate=True, conv_bias=True, scan_backend=scan_backend)
        se_layer = partial(SqueezeExcite, rd_ratio=0.125)

        def block(i: int, dim: int, drop_path: float) -> nn.Module:
            if stage_blocks[i] == "evss":
                return EfficientVSSBlock(dim, drop_path=drop_path, **ssm_kwargs)
            return InvertedResidual(dim, dim, exp_ratio=4.0, se_layer=se_layer, drop_path_rate=drop_path)

        # inverted residuals are conv blocks: they run channel-first inside the channel-last model
        channels_first = [kind == "mbconv" for kind in stage_blocks]
        self.stages, self.feature_info = build_stages(
            dims, depths, drop_path_rate, PatchMerging, block, channels_first=channels_first
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt
        )
        self.apply(init_trunc_normal)


# Official inverted-residual names (``lib/models/operations.py``) -> timm's ``InvertedResidual``.
_MBCONV_RENAMES = {
    "conv_pw.0.": "conv_pw.",
    "conv_pw.1.": "bn1.",
    "conv_dw.0.": "conv_dw.",
    "conv_dw.1.": "bn2.",
    "conv_pw2.0.": "conv_pwl.",
    "conv_pw2.1.": "bn3.",
}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: EfficientVMamba) -> dict[str, torch.Tensor]:
    """Map an official EfficientVMamba checkpoint (``EfficientVSSM`` in ``classification/models/vmamba_efficient.py``)
    to vizoo's keys.

    Official layout: ``patch_embed.{0,2}``; EVSS stages ``layers.i.blocks.j`` with the patch merging at the end of the
    stage (``layers.i.downsample``); inverted-residual stages ``layers.i`` = Sequential(Permute, block_0, ...,
    block_{d-1}, Permute, downsample), so block j is ``layers.i.{j+1}`` and the merging ``layers.i.{d+2}``;
    ``classifier.{norm,head}``. vizoo merges at the start of the next stage.
    Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if any(k.startswith("stages.") for k in state_dict):
        return check_converted(state_dict, model)
    depths = [len(stage.blocks) for stage in model.stages]
    out = {}
    for key, value in state_dict.items():
        if m := re.match(r"^patch_embed\.([02])\.(.*)$", key):
            key = f"stem.{'conv' if m[1] == '0' else 'norm'}.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.blocks\.(.*)$", key):
            key = f"stages.{m[1]}.blocks.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
            key = f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.(\d+)\.(.*)$", key):
            stage, index, rest = int(m[1]), int(m[2]), m[3]
            if index == depths[stage] + 2:
                key = f"stages.{stage + 1}.downsample.{rest}"
            else:
                for old, new in _MBCONV_RENAMES.items():
                    if rest.startswith(old):
                        rest = new + rest.removeprefix(old)
                        break
                key = f"stages.{stage}.blocks.{index - 1}.{rest}"
        elif key.startswith("classifier.norm."):
            key = "norm." + key.removeprefix("classifier.norm.")
        elif key.startswith("classifier.head."):
            key = "head.fc." + key.removeprefix("classifier.head.")
        out[key] = value
    return check_converted(out, model)


def _create(variant: str, pretrained: bool = False, **kwargs) -> EfficientVMamba:
    return build_vizoo_model(EfficientVMamba, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg(
        "stem.conv", "arXiv:2403.09977", "https://github.com/TerryPei/EfficientVMamba", license="apache-2.0", **kwargs
    )


def _hub(size: str, **kwargs) -> PaperCfg:
    """The README's checkpoint of ``size``: the file ``efficient_vmamba_<size>.ckpt`` of the Hub repo
    TerryPei/EfficientVMamba-<Size>, whose licence is apache-2.0 (the code repository has no licence file)."""
    hub = dict(hf_hub_id=f"TerryPei/EfficientVMamba-{size.title()}", hf_hub_filename=f"efficient_vmamba_{size}.ckpt")
    return _cfg(**hub, **kwargs)


# Official weights: the Hugging Face repos the README's table links, one checkpoint each; pretrained=True downloads
# them into the HF cache.
# paper_*: the paper's table (params in whole millions; the training logs print them to the thousand).
default_cfgs = generate_default_cfgs(
    {
        "efficient_vmamba_tiny.in1k": _hub("tiny", paper_params_m=6, paper_gmacs=0.8, paper_top1=76.5),
        "efficient_vmamba_small.in1k": _hub("small", paper_params_m=11, paper_gmacs=1.3, paper_top1=78.7),
        "efficient_vmamba_base.in1k": _hub("base", paper_params_m=33, paper_gmacs=4.0, paper_top1=81.8),
        "test_efficient_vmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)


@register_model
def efficient_vmamba_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    model_args = dict(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2), drop_path_rate=0.1)
    return _create("efficient_vmamba_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vmamba_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    model_args = dict(dims=(64, 128, 256, 512), depths=(2, 2, 4, 2), drop_path_rate=0.1)
    return _create("efficient_vmamba_small", pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vmamba_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    model_args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), drop_path_rate=0.1)
    return _create("efficient_vmamba_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_efficient_vmamba(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """A tiny EfficientVMamba for tests: both block types, one block per stage."""
    model_args = dict(dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), d_state=4)
    return _create("test_efficient_vmamba", pretrained, **dict(model_args, **kwargs))
