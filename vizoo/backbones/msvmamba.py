"""MSVMamba: Multi-Scale VMamba, Hierarchy in Hierarchy Visual State Space Model.

Shi et al., NeurIPS 2024. https://arxiv.org/abs/2405.14174
Official code: https://github.com/YuHengsss/MSVMamba (v1 models on ``master``, the v3 models on branch ``v2``; weights
of both load through ``checkpoint_filter_fn``).

Every block scans one route at full resolution and three routes on a stride-2 map, concatenated into one sequence
(``vizoo.kernels.multiscale_scan``), adds squeeze-excitation to the mixer and a ConvFFN after it. Two generations
share one model class, one block and one mixer (``vizoo.layers.msvmamba``):

- v1 (``msvmamba_{nano,micro,tiny}``): VMamba v0's 4x4 patch stem and patch merging, ssm_ratio 2, SiLU gate,
  per-token out_norm before the routes are merged, bilinear upsampling, pre-norm ConvFFN x2.
- v3 (``msvmamba_v3_{tiny,small,base}``, config names ``msvmambav3_*_224``): VMamba v2's conv stem and conv3x3
  downsampling, ssm_ratio 1, no gate (``vms_noz``) except in Base (``vms``), one out_norm after the two resolutions
  are summed, nearest upsampling, ConvFFN x4 normalised at its output. No MLP besides the ConvFFN in either. The
  official v3 model runs channel-first (``ln2d``); its parameters have the same shapes as vizoo's channel-last ones.

Counted by ``vizoo.utils.complexity`` at 224² against the paper (fvcore "FLOPs", i.e. MACs): v1 Nano/Micro/Tiny
6.86/11.88/33.05 M parameters and 0.86/1.50/4.56 GMACs (paper 7/12/33 M, 0.9/1.5/4.6 G); v3 Tiny/Small/Base
32.26/50.22/90.59 M and 5.10/8.72/16.21 GMACs (paper 32/50/91 M, 5.0/8.8/16.3 G), all within 5%.

Channel-last (NHWC) inside; stages downsample first, so every stage output is a feature map at its stride. H and W
must be divisible by 32.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers import ConvDownsample, ConvStem, PatchStem, downsample_layer, stem_layer
from vizoo.layers.msvmamba import MSVSSBlock

__all__ = ["MSVMamba"]


class MSVMamba(StagedBackbone):
    """MSVMamba backbone and classifier (v1 and v3; the defaults are v1's).

    Args:
        in_chans, num_classes, global_pool: as in timm.
        dims: channels of the four stages.
        depths: blocks per stage.
        stem: "patch" (v1: 4x4 patchify) or "conv" (v3: two conv3x3 s2).
        downsample: "merge" (v1: 2x2 patch merging) or "conv" (v3: conv3x3 s2).
        d_state, ssm_ratio: SSM state size and inner width ratio (v1: 1 and 2; v3: 1 and 1).
        gate: SiLU(z) gate in the mixer (v1 and v3-Base; off for v3 ``vms_noz``).
        upsample, norm_after_merge, full_res_group: how the mixer combines its two resolutions (see
            ``vizoo.layers.msvmamba.MultiScaleSS2D``; v1: "bilinear", False, 1; v3: "nearest", True, 0).
        ffn_expansion: ConvFFN width ratio (v1: 2; v3: 4).
        ffn_post_norm: normalise the ConvFFN's output instead of its input (v3).
        se_reduction: SE reduction inside the mixer (8; 0 for none).
        scan_backend: selective-scan backend (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and maximum stochastic depth (linear over blocks).
    """

    no_weight_decay_leaves = ("A_logs", "Ds", "dt_projs_bias")

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (1, 2, 9, 2),
        stem: str = "patch",
        downsample: str = "merge",
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        gate: bool = True,
        upsample: str = "bilinear",
        norm_after_merge: bool = False,
        full_res_group: int = 1,
        ffn_expansion: int = 2,
        ffn_post_norm: bool = False,
        se_reduction: int = 8,
        scan_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NHWC"
        self.stem = stem_layer(stem)(in_chans, dims[0])
        block_kwargs = dict(
            ffn_expansion=ffn_expansion,
            ffn_post_norm=ffn_post_norm,
            d_state=d_state,
            ssm_ratio=ssm_ratio,
            gate=gate,
            upsample=upsample,
            norm_after_merge=norm_after_merge,
            full_res_group=full_res_group,
            se_reduction=se_reduction,
            scan_backend=scan_backend,
        )
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            downsample_layer(downsample),
            lambda i, dim, drop_path: MSVSSBlock(dim, drop_path=drop_path, **block_kwargs),
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt
        )
        self.apply(init_trunc_normal)


# Official ``patch_embed`` Sequential indices -> vizoo stem names. v1: Sequential(Conv2d, Permute, LayerNorm); v3
# (``PATCHEMBED: v2``): Sequential(Conv2d, Identity, LayerNorm2d, Identity, GELU, Conv2d, Identity, LayerNorm2d).
_STEM_NAMES = {
    PatchStem: {"0": "conv", "2": "norm"},
    ConvStem: {"0": "conv1", "2": "norm1", "5": "conv2", "7": "norm2"},
}
# v3 downsample (``DOWNSAMPLE: v3``) is Sequential(Identity, Conv2d, Identity, LayerNorm2d); v1's patch merging
# already has vizoo's names (``reduction``, ``norm``).
_CONV_DOWNSAMPLE_NAMES = {"1": "conv", "3": "norm"}


def _rename_official(state_dict: dict[str, torch.Tensor], model: MSVMamba) -> dict[str, torch.Tensor]:
    stem_names = _STEM_NAMES[type(model.stem)]
    conv_downsample = any(isinstance(stage.downsample, ConvDownsample) for stage in model.stages)
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("backbone.")
        key = re.sub(r"^patch_embed\.proj\.", "patch_embed.0.", key)  # older releases
        key = re.sub(r"^patch_embed\.norm\.", "patch_embed.2.", key)
        if m := re.match(r"^patch_embed\.(\d+)\.(.*)$", key):
            key = f"stem.{stem_names.get(m[1], m[1])}.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.blocks\.(.*)$", key):
            key = f"stages.{m[1]}.blocks.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
            rest = m[2]
            if conv_downsample and (d := re.match(r"^(\d+)\.(.*)$", rest)):
                rest = f"{_CONV_DOWNSAMPLE_NAMES.get(d[1], d[1])}.{d[2]}"
            key = f"stages.{int(m[1]) + 1}.downsample.{rest}"
        elif key.startswith("classifier.norm."):
            key = "norm." + key.removeprefix("classifier.norm.")
        elif key.startswith("classifier.head."):
            key = "head.fc." + key.removeprefix("classifier.head.")
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MSVMamba) -> dict[str, torch.Tensor]:
    """Map an official MSVMamba checkpoint (``classification/models/vmamba.py``: v1 on ``master``, v3 on branch
    ``v2``) to vizoo's keys.

    The official model downsamples at the end of stages 0-2 (``layers.i.downsample``); vizoo at the start of stages
    1-3. v3's conv stem and conv downsampling are Sequentials renamed to vizoo's module names; its channel-first
    ``Linear2d`` weights are (out, in) like vizoo's, and are flattened should a file store them as (out, in, 1, 1).
    The two parameter groups of each mixer keep their official order (see ``full_res_group``). Accepts the raw state
    dict or one wrapped in ``{"model": ...}``. Raises ``CheckpointError`` listing missing and unexpected keys if the
    result does not fit ``model``.
    """
    state_dict = state_dict.get("model", state_dict)
    if not any(k.startswith("stages.") for k in state_dict):
        state_dict = _rename_official(state_dict, model)
    target = model.state_dict()
    state_dict = {
        k: v.flatten(1) if k in target and target[k].dim() == 2 and v.dim() == 4 and v.shape[2:] == (1, 1) else v
        for k, v in state_dict.items()
    }
    return check_converted(state_dict, model)


def _create_msvmamba(variant: str, pretrained: bool = False, **kwargs) -> MSVMamba:
    return build_vizoo_model(MSVMamba, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(first_conv: str = "stem.conv", **kwargs) -> PaperCfg:
    return imagenet_cfg(
        first_conv, "arXiv:2405.14174", "https://github.com/YuHengsss/MSVMamba", license="mit", **kwargs
    )


def _v1(folder: str, **kwargs) -> PaperCfg:
    return _cfg(manual_url=f"https://drive.google.com/drive/folders/{folder}", **kwargs)


def _v3(size: str, **kwargs) -> PaperCfg:
    # The Hub repo's licence is MIT (its card); the code repository has no licence file.
    return _cfg("stem.conv1", hf_hub_id="YuhengSSS/MSVMamba", hf_hub_filename=f"msvmambav3_{size}_224.pth", **kwargs)


# Official weights: v1 (master's README) are in Google Drive folders, which no URL can fetch, so pretrained=True names
# the folder and how to load the file; v3 (branch v2's README) are files of the Hugging Face repo YuhengSSS/MSVMamba,
# which pretrained=True downloads into the HF cache. The official evaluation resizes to 256 and center-crops 224
# (crop_pct 0.875), bicubic, for both generations.
# paper_*: the tables of the official README, v1 (master) and v3 (branch v2); FLOPs are fvcore MACs at 224².
default_cfgs = generate_default_cfgs(
    {
        "msvmamba_nano.in1k": _v1(
            "1J41w3ApitQhp2O3wHmJoOs4U032uqebK", paper_params_m=7, paper_gmacs=0.9, paper_top1=77.3
        ),
        "msvmamba_micro.in1k": _v1(
            "1jfl2GmuKcUB8sPwRlyHK_wT0MjqgljYk", paper_params_m=12, paper_gmacs=1.5, paper_top1=79.8
        ),
        "msvmamba_tiny.in1k": _v1(
            "1ddNWk89ohcxxMuVEaJ2Y5A6xeBKgA7lU", paper_params_m=33, paper_gmacs=4.6, paper_top1=82.8
        ),
        "msvmamba_v3_tiny.in1k": _v3("tiny", paper_params_m=32, paper_gmacs=5.0, paper_top1=83.0),
        "msvmamba_v3_small.in1k": _v3("small", paper_params_m=50, paper_gmacs=8.8, paper_top1=84.1),
        "msvmamba_v3_base.in1k": _v3("base", paper_params_m=91, paper_gmacs=16.3, paper_top1=84.4),
        "test_msvmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# v3 settings from the official configs ``classification/configs/msv2/msvmambav3_*_224.yaml`` on branch ``v2``
# (ssm_ratio 1, d_state 1, PATCHEMBED v2, DOWNSAMPLE v3, CONV_FFN_RATIO 4, ADD_SE; ``vms_noz`` except Base's ``vms``).
_V3 = dict(
    stem="conv",
    downsample="conv",
    d_state=1,
    ssm_ratio=1.0,
    gate=False,
    upsample="nearest",
    norm_after_merge=True,
    full_res_group=0,
    ffn_expansion=4,
    ffn_post_norm=True,
)


@register_model
def msvmamba_nano(pretrained: bool = False, **kwargs) -> MSVMamba:
    model_args = dict(dims=(48, 96, 192, 384), depths=(1, 2, 5, 2), d_state=1, ssm_ratio=2.0, drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_nano", pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_micro(pretrained: bool = False, **kwargs) -> MSVMamba:
    model_args = dict(dims=(64, 128, 256, 512), depths=(1, 2, 5, 2), d_state=1, ssm_ratio=2.0, drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_micro", pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_tiny(pretrained: bool = False, **kwargs) -> MSVMamba:
    model_args = dict(dims=(96, 192, 384, 768), depths=(1, 2, 9, 2), d_state=1, ssm_ratio=2.0, drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_v3_tiny(pretrained: bool = False, **kwargs) -> MSVMamba:
    model_args = dict(_V3, dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_v3_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_v3_small(pretrained: bool = False, **kwargs) -> MSVMamba:
    model_args = dict(_V3, dims=(96, 192, 384, 768), depths=(2, 3, 20, 2), drop_path_rate=0.4)
    return _create_msvmamba("msvmamba_v3_small", pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_v3_base(pretrained: bool = False, **kwargs) -> MSVMamba:
    model_args = dict(_V3, dims=(128, 256, 512, 1024), depths=(2, 4, 18, 2), gate=True, drop_path_rate=0.5)
    return _create_msvmamba("msvmamba_v3_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_msvmamba(pretrained: bool = False, **kwargs) -> MSVMamba:
    """A tiny MSVMamba (v1) for tests."""
    model_args = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), d_state=1, ssm_ratio=1.0)
    return _create_msvmamba("test_msvmamba", pretrained, **dict(model_args, **kwargs))
