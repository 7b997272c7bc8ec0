"""VMamba: Visual State Space Model.

Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024. https://arxiv.org/abs/2401.10166
Official code: https://github.com/MzeroMiko/VMamba (weights load through ``checkpoint_filter_fn``).

Two generations share one model class:
- v2 (``vmamba_{tiny,small,base}_s{1l,2l}*``): conv stem, conv3x3 downsampling, SS2D with d_state 1 and no gate,
  GELU MLP after every mixer.
- v0 "vanilla" (``vanilla_vmamba_*``): 4x4 patch stem, patch merging, SS2D with d_state 16, ssm_ratio 2 and a SiLU
  gate, no MLP.

vizoo's model is channel-last (NHWC) inside, like timm's Swin and MambaOut, and its stages downsample first so that
every stage output is a feature map at its stride. Inputs must have H and W divisible by 32: the model refuses other
sizes rather than pad silently (resize, or pad with ``torch.nn.functional.pad``).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers import ConvStem, PatchStem, VSSBlock, downsample_layer, stem_layer

__all__ = ["VMamba"]


class VMamba(StagedBackbone):
    """VMamba backbone and classifier.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: pooling before the classifier ("avg", "max", "" for none).
        dims: channels of the four stages.
        depths: blocks per stage.
        stem: "conv" (v2: two conv3x3 s2) or "patch" (v0: 4x4 patchify).
        downsample: "conv" (v2: conv3x3 s2) or "merge" (v0: 2x2 patch merging).
        mlp_ratio: MLP width after each mixer (0 for no MLP, as in v0).
        d_state, ssm_ratio, gate, conv_bias: SS2D settings (see ``vizoo.layers.SS2D``).
        scan_backend: selective-scan backend for every block (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and the maximum stochastic depth (linear over blocks).
    """

    no_weight_decay_leaves = ("A_logs", "Ds", "dt_projs_bias")  # the SSM's A, D and step-size biases

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (2, 2, 8, 2),
        stem: str = "conv",
        downsample: str = "conv",
        mlp_ratio: float = 4.0,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        gate: bool = False,
        conv_bias: bool = False,
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

        ssm_kwargs = dict(
            d_state=d_state, ssm_ratio=ssm_ratio, gate=gate, conv_bias=conv_bias, scan_backend=scan_backend
        )
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            downsample_layer(downsample),
            lambda i, dim, drop_path: VSSBlock(dim, drop_path=drop_path, mlp_ratio=mlp_ratio, **ssm_kwargs),
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt
        )
        self.apply(init_trunc_normal)


# Official key -> vizoo key, applied in order. Older releases used ``patch_embed.proj``/``ln_1``/``self_attention``.
_LEGACY_RENAMES = [
    (r"^patch_embed\.proj\.", "patch_embed.0."),
    (r"^patch_embed\.norm\.", "patch_embed.2."),
    (r"\.ln_1\.", ".norm."),
    (r"\.self_attention\.", ".op."),
    (r"^norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
]
_STEM_RENAMES = {
    ConvStem: {"0": "conv1", "2": "norm1", "5": "conv2", "7": "norm2"},
    PatchStem: {"0": "conv", "2": "norm"},
}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VMamba) -> dict[str, torch.Tensor]:
    """Map an official VMamba checkpoint (``classification/models/vmamba.py`` layout) to vizoo's keys.

    The official model downsamples at the end of stages 0-2 (``layers.i.downsample``); vizoo at the start of stages
    1-3 (``stages.{i+1}.downsample``). 1x1-conv weights saved as (out, in, 1, 1) are reshaped to (out, in).
    Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if not any(k.startswith("stages.") for k in state_dict):
        state_dict = _rename_official(state_dict, model)
    target = model.state_dict()
    for k, v in state_dict.items():
        if k in target and v.dim() == 4 and target[k].dim() == 2 and v.shape[2:] == (1, 1):
            state_dict[k] = v.flatten(1)
    return check_converted(state_dict, model)


def _rename_official(state_dict: dict[str, torch.Tensor], model: VMamba) -> dict[str, torch.Tensor]:
    stem_names = _STEM_RENAMES[type(model.stem)]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _LEGACY_RENAMES:
            key = re.sub(pattern, repl, key)
        if m := re.match(r"^patch_embed\.(\d+)\.(.*)$", key):
            key = f"stem.{stem_names.get(m[1], m[1])}.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.blocks\.(.*)$", key):
            key = f"stages.{m[1]}.blocks.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
            # v3 downsample is Sequential(Identity, Conv2d, Identity, LayerNorm); patch merging keeps its names.
            rest = {"1.": "conv.", "3.": "norm."}.get(m[2][:2], m[2][:2]) + m[2][2:]
            key = f"stages.{int(m[1]) + 1}.downsample.{rest}"
        elif key.startswith("classifier.norm."):
            key = "norm." + key.removeprefix("classifier.norm.")
        elif key.startswith("classifier.head."):
            key = "head.fc." + key.removeprefix("classifier.head.")
        out[key] = value
    return out


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    return build_vizoo_model(VMamba, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(first_conv: str = "stem.conv1", **kwargs) -> PaperCfg:
    return imagenet_cfg(first_conv, "arXiv:2401.10166", "https://github.com/MzeroMiko/VMamba", license="mit", **kwargs)


_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"


def _v2(file: str, **kwargs) -> PaperCfg:
    return _cfg(url=_RELEASES + "%23v2cls/" + file, **kwargs)


def _v0(file: str, **kwargs) -> PaperCfg:
    return _cfg("stem.conv", url=_RELEASES + "%23v0cls/" + file, **kwargs)


# Official weights: the release assets ``#v2cls`` and ``#v0cls`` that the README's table and assets/performance.md
# link, one checkpoint per variant, the one the table reports (Vanilla-VMamba-B: the drop-path-0.6 EMA checkpoint of
# epoch 241, "VMamba-B*", 83.7). pretrained=True downloads them into the torch hub cache.
# paper_*: the table of the VMamba README (arXiv 2401.10166); its FLOPs are fvcore MACs at 224².
default_cfgs = generate_default_cfgs(
    {
        "vmamba_tiny_s1l8.in1k": _v2(
            "vssm1_tiny_0230s_ckpt_epoch_264.pth", paper_params_m=30, paper_gmacs=4.9, paper_top1=82.6
        ),
        "vmamba_small_s1l20.in1k": _v2(
            "vssm1_small_0229s_ckpt_epoch_240.pth", paper_params_m=49, paper_gmacs=8.6, paper_top1=83.3
        ),
        "vmamba_base_s1l20.in1k": _v2(
            "vssm1_base_0229s_ckpt_epoch_225.pth", paper_params_m=87, paper_gmacs=15.2, paper_top1=83.8
        ),
        "vmamba_tiny_s2l5.in1k": _v2(
            "vssm_tiny_0230_ckpt_epoch_262.pth", paper_params_m=31, paper_gmacs=4.9, paper_top1=82.5
        ),
        "vmamba_small_s2l15.in1k": _v2(
            "vssm_small_0229_ckpt_epoch_222.pth", paper_params_m=50, paper_gmacs=8.7, paper_top1=83.6
        ),
        "vmamba_base_s2l15.in1k": _v2(
            "vssm_base_0229_ckpt_epoch_237.pth", paper_params_m=89, paper_gmacs=15.4, paper_top1=83.9
        ),
        "vanilla_vmamba_tiny.in1k": _v0(
            "vssmtiny_dp01_ckpt_epoch_292.pth", paper_params_m=23, paper_gmacs=5.6, paper_top1=82.2
        ),
        "vanilla_vmamba_small.in1k": _v0(
            "vssmsmall_dp03_ckpt_epoch_238.pth", paper_params_m=44, paper_gmacs=11.2, paper_top1=83.5
        ),
        "vanilla_vmamba_base.in1k": _v0(
            "vssmbase_dp06_ckpt_epoch_241.pth", paper_params_m=76, paper_gmacs=18.0, paper_top1=83.7
        ),
        "test_vmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# The papers' settings; drop_path_rate is each variant's training value from the official configs.
_V2 = dict(stem="conv", downsample="conv", mlp_ratio=4.0, d_state=1, gate=False, conv_bias=False)
_V0 = dict(stem="patch", downsample="merge", mlp_ratio=0.0, d_state=16, ssm_ratio=2.0, gate=True, conv_bias=True)


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2)
    return _create_vmamba("vmamba_tiny_s1l8", pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.3)
    return _create_vmamba("vmamba_small_s1l20", pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V2, dims=(128, 256, 512, 1024), depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.5)
    return _create_vmamba("vmamba_base_s1l20", pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), ssm_ratio=2.0, drop_path_rate=0.2)
    return _create_vmamba("vmamba_tiny_s2l5", pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3)
    return _create_vmamba("vmamba_small_s2l15", pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V2, dims=(128, 256, 512, 1024), depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6)
    return _create_vmamba("vmamba_base_s2l15", pretrained, **dict(model_args, **kwargs))


@register_model
def vanilla_vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V0, dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), drop_path_rate=0.2)
    return _create_vmamba("vanilla_vmamba_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def vanilla_vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    model_args = dict(_V0, dims=(96, 192, 384, 768), depths=(2, 2, 27, 2), drop_path_rate=0.3)
    return _create_vmamba("vanilla_vmamba_small", pretrained, **dict(model_args, **kwargs))


@register_model
def vanilla_vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    # drop_path 0.5 as in the official training yaml; the official model factory says 0.6.
    model_args = dict(_V0, dims=(128, 256, 512, 1024), depths=(2, 2, 27, 2), drop_path_rate=0.5)
    return _create_vmamba("vanilla_vmamba_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """A tiny v2 VMamba for tests and the demo (0.8 M parameters with 1000 classes)."""
    model_args = dict(_V2, dims=(24, 48, 96, 192), depths=(1, 1, 2, 1), ssm_ratio=1.0, mlp_ratio=2.0)
    return _create_vmamba("test_vmamba", pretrained, **dict(model_args, **kwargs))
