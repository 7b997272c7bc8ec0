"""MSVMamba: Multi-Scale VMamba, Hierarchy in Hierarchy Visual State Space Model.

Shi et al., NeurIPS 2024. https://arxiv.org/abs/2405.14174
Official code: https://github.com/YuHengsss/MSVMamba (v1 models on ``master``; weights load through
``checkpoint_filter_fn``).

Every block scans one route at full resolution and three routes on a stride-2 map, concatenated into one sequence
(``vizoo.kernels.multiscale_scan``), adds squeeze-excitation to the mixer and a ConvFFN after it. v1 keeps VMamba v0's
4x4 patch stem and patch merging.

Channel-last (NHWC) inside; stages downsample first, so every stage output is a feature map at its stride. H and W
must be divisible by 32.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging

from vizoo.backbones._base import StagedBackbone, run_blocks
from vizoo.backbones._builder import build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers import PatchStem
from vizoo.layers.msvmamba import MSVSSBlock

__all__ = ["MSVMamba"]


class MSVMambaStage(nn.Module):
    """Optional patch merging, then ``depth`` multi-scale VSS blocks. (B, H, W, C) in and out."""

    def __init__(self, in_dim: int, dim: int, downsample: bool, drop_path: list[float], **block_kwargs):
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[MSVSSBlock(dim, drop_path=dp, **block_kwargs) for dp in drop_path])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, self.downsample(x), self.grad_checkpointing)


class MSVMamba(StagedBackbone):
    """MSVMamba (v1) backbone and classifier.

    Args:
        in_chans, num_classes, global_pool: as in timm.
        dims: channels of the four stages.
        depths: blocks per stage.
        d_state, ssm_ratio: SSM state size and inner width ratio (1 and 2 in the paper).
        ffn_expansion: ConvFFN width ratio (2).
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
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        ffn_expansion: int = 2,
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
        self.stem = PatchStem(in_chans, dims[0])
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.Sequential()
        self.feature_info = []
        for i, dim in enumerate(dims):
            self.stages.append(
                MSVMambaStage(
                    dims[i - 1] if i else dim,
                    dim,
                    i > 0,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    ffn_expansion=ffn_expansion,
                    d_state=d_state,
                    ssm_ratio=ssm_ratio,
                    se_reduction=se_reduction,
                    scan_backend=scan_backend,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt
        )
        self.apply(init_trunc_normal)


_STEM_NAMES = {"0": "conv", "2": "norm"}  # official Sequential(Conv2d, Permute, LayerNorm)


def _rename_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("backbone.")
        key = re.sub(r"^patch_embed\.proj\.", "patch_embed.0.", key)  # older releases
        key = re.sub(r"^patch_embed\.norm\.", "patch_embed.2.", key)
        if m := re.match(r"^patch_embed\.(\d+)\.(.*)$", key):
            key = f"stem.{_STEM_NAMES.get(m[1], m[1])}.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.blocks\.(.*)$", key):
            key = f"stages.{m[1]}.blocks.{m[2]}"
        elif m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
            key = f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
        elif key.startswith("classifier.norm."):
            key = "norm." + key.removeprefix("classifier.norm.")
        elif key.startswith("classifier.head."):
            key = "head.fc." + key.removeprefix("classifier.head.")
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MSVMamba) -> dict[str, torch.Tensor]:
    """Map an official MSVMamba v1 checkpoint (``classification/models/vmamba.py`` on ``master``) to vizoo's keys.

    The official model downsamples at the end of stages 0-2 (``layers.i.downsample``); vizoo at the start of stages
    1-3. Accepts the raw state dict or one wrapped in ``{"model": ...}``. Raises ``CheckpointError`` listing missing
    and unexpected keys if the result does not fit ``model``.
    """
    state_dict = state_dict.get("model", state_dict)
    if not any(k.startswith("stages.") for k in state_dict):
        state_dict = _rename_official(state_dict)
    return check_converted(state_dict, model)


def _create_msvmamba(variant: str, pretrained: bool = False, **kwargs) -> MSVMamba:
    return build_vizoo_model(MSVMamba, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> dict:
    return imagenet_cfg(
        "stem.conv", "arXiv:2405.14174", "https://github.com/YuHengsss/MSVMamba", license="mit", **kwargs
    )


# Official weights are release assets of YuHengsss/MSVMamba; vizoo never downloads them itself, load a downloaded
# file with ``pretrained=True, pretrained_cfg_overlay=dict(file=path)``.
default_cfgs = generate_default_cfgs(
    {
        "msvmamba_nano.in1k": _cfg(),
        "msvmamba_micro.in1k": _cfg(),
        "msvmamba_tiny.in1k": _cfg(),
        "test_msvmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
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
def test_msvmamba(pretrained: bool = False, **kwargs) -> MSVMamba:
    """A tiny MSVMamba for tests."""
    model_args = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), d_state=1, ssm_ratio=1.0)
    return _create_msvmamba("test_msvmamba", pretrained, **dict(model_args, **kwargs))
