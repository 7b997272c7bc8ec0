"""Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion.

Xiao et al., ICLR 2025. https://arxiv.org/abs/2410.15091
Official code: https://github.com/EdwardChasel/Spatial-Mamba (weights load through ``checkpoint_filter_fn``).

One row-major selective scan per block returns its hidden states (``vizoo.kernels.selective_scan_states``); the states
of neighbouring pixels are fused on the 2D map by three dilated depthwise convs (merged into one 11x11 ``F.conv2d``
in eval mode, no custom CUDA) before the C read-out. Stem and downsample are MLLA's conv blocks.

Channel-last (NHWC) inside; stages downsample first, so every stage output is a feature map at its stride. H and W
must be divisible by 32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.backbones.mlla import rename_mlla_layout
from vizoo.layers.mlla_stem import MllaDownsample, MllaStem
from vizoo.layers.spatial_mamba import SpatialMambaBlock

__all__ = ["SpatialMamba"]


class SpatialMamba(StagedBackbone):
    """Spatial-Mamba backbone and classifier.

    Args:
        in_chans, num_classes, global_pool: as in timm.
        dims: channels of the four stages (each twice the previous in the paper).
        depths: blocks per stage.
        d_state, expand: SSM state size and inner width ratio (1 and 2 in the paper).
        mlp_ratio: MLP width ratio.
        scan_backend: backend of the state scan (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and maximum stochastic depth (linear over blocks).
    """

    no_weight_decay_leaves = ("A_logs", "Ds", "dt_projs_bias")

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 4, 8, 4),
        d_state: int = 1,
        expand: float = 2.0,
        mlp_ratio: float = 4.0,
        scan_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NHWC"
        self.stem = MllaStem(in_chans, dims[0])
        block_kwargs = dict(mlp_ratio=mlp_ratio, d_state=d_state, expand=expand, scan_backend=scan_backend)
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            MllaDownsample,
            lambda i, dim, drop_path: SpatialMambaBlock(dim, drop_path=drop_path, **block_kwargs),
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt
        )
        self.apply(init_trunc_normal)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SpatialMamba) -> dict[str, torch.Tensor]:
    """Map an official Spatial-Mamba checkpoint (``classification/models/spatialmamba.py``) to vizoo's keys.

    Accepts the raw state dict or one wrapped in ``{"model": ...}``; drops the eval-time ``_merge_weight`` buffers
    (vizoo merges the kernels on the fly). Raises ``CheckpointError`` listing missing and unexpected keys.
    """
    state_dict = state_dict.get("model", state_dict)
    if not any(k.startswith("stages.") for k in state_dict):
        state_dict = rename_mlla_layout(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("_merge_weight")}
    return check_converted(state_dict, model)


def _create_spatial_mamba(variant: str, pretrained: bool = False, **kwargs) -> SpatialMamba:
    return build_vizoo_model(SpatialMamba, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg(
        "stem.conv1.conv",
        "arXiv:2410.15091",
        "https://github.com/EdwardChasel/Spatial-Mamba",
        license="apache-2.0",
        **kwargs,
    )


# Official weights: Google Drive files linked from the README's table, which no URL can fetch: pretrained=True names
# them and how to load the file.
# paper_*: the table of the official README; its FLOPs are fvcore MACs at 224².
_DRIVE = "https://drive.google.com/file/d/{}/view"
default_cfgs = generate_default_cfgs(
    {
        "spatial_mamba_tiny.in1k": _cfg(
            manual_url=_DRIVE.format("19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW"),
            paper_params_m=27,
            paper_gmacs=4.5,
            paper_top1=83.5,
        ),
        "spatial_mamba_small.in1k": _cfg(
            manual_url=_DRIVE.format("1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O"),
            paper_params_m=43,
            paper_gmacs=7.1,
            paper_top1=84.6,
        ),
        "spatial_mamba_base.in1k": _cfg(
            manual_url=_DRIVE.format("1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM"),
            paper_params_m=96,
            paper_gmacs=15.8,
            paper_top1=85.3,
        ),
        "test_spatial_mamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)


@register_model
def spatial_mamba_tiny(pretrained: bool = False, **kwargs) -> SpatialMamba:
    model_args = dict(dims=(64, 128, 256, 512), depths=(2, 4, 8, 4), d_state=1, drop_path_rate=0.2)
    return _create_spatial_mamba("spatial_mamba_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def spatial_mamba_small(pretrained: bool = False, **kwargs) -> SpatialMamba:
    model_args = dict(dims=(64, 128, 256, 512), depths=(2, 4, 21, 5), d_state=1, drop_path_rate=0.3)
    return _create_spatial_mamba("spatial_mamba_small", pretrained, **dict(model_args, **kwargs))


@register_model
def spatial_mamba_base(pretrained: bool = False, **kwargs) -> SpatialMamba:
    model_args = dict(dims=(96, 192, 384, 768), depths=(2, 4, 21, 5), d_state=1, drop_path_rate=0.5)
    return _create_spatial_mamba("spatial_mamba_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_spatial_mamba(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """A tiny Spatial-Mamba for tests."""
    model_args = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), d_state=1, mlp_ratio=2.0)
    return _create_spatial_mamba("test_spatial_mamba", pretrained, **dict(model_args, **kwargs))
