"""VSSD: Vision Mamba with Non-Causal State Space Duality.

Shi et al., arXiv 2407.18559 (ICCV 2025). https://arxiv.org/abs/2407.18559
Official code: https://github.com/YuHengsss/VSSD (the Aug 2024 release; weights load through ``checkpoint_filter_fn``).

Mamba2's mixer with the causal mask and decay dropped (NC-SSD) is linear attention with per-token key weights from the
step sizes: it runs through ``vizoo.kernels.linear_attention`` (pure matmuls, no scan). The last stage uses softmax
attention. Stem and downsample are MLLA's conv blocks, shared with Spatial-Mamba.

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
from vizoo.layers.vssd import VSSDBlock

__all__ = ["VSSD"]


class VSSD(StagedBackbone):
    """VSSD backbone and classifier.

    Args:
        in_chans, num_classes, global_pool: as in timm.
        dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: heads per stage (NC-SSD head dim is ``2 * dim / heads``).
        attn_types: mixer per stage, "ncssd" or "standard" (softmax attention).
        d_state: NC-SSD state size (64; 48 for Micro).
        mlp_ratio: MLP width ratio.
        attn_backend: linear-attention backend (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and maximum stochastic depth (linear over blocks).
    """

    no_weight_decay_leaves = ("A_log", "D", "dt_bias")

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 4, 8, 4),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        attn_types: tuple[str, ...] = ("ncssd", "ncssd", "ncssd", "standard"),
        d_state: int = 64,
        mlp_ratio: float = 4.0,
        attn_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NHWC"
        self.stem = MllaStem(in_chans, dims[0])
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            MllaDownsample,
            lambda i, dim, drop_path: VSSDBlock(
                dim,
                drop_path=drop_path,
                num_heads=num_heads[i],
                attn_type=attn_types[i],
                mlp_ratio=mlp_ratio,
                **(dict(d_state=d_state, attn_backend=attn_backend) if attn_types[i] == "ncssd" else {}),
            ),
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt
        )
        self.apply(init_trunc_normal)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VSSD) -> dict[str, torch.Tensor]:
    """Map an official VSSD checkpoint (``classification/models/mamba2.py``, ``VMAMBA2``) to vizoo's keys.

    The official model downsamples at the end of stages 0-2; vizoo at the start of stages 1-3. Accepts the raw state
    dict or one wrapped in ``{"model": ...}``. Raises ``CheckpointError`` listing missing and unexpected keys.
    """
    state_dict = state_dict.get("model", state_dict)
    if not any(k.startswith("stages.") for k in state_dict):
        state_dict = rename_mlla_layout(state_dict)
    return check_converted(state_dict, model)


def _create_vssd(variant: str, pretrained: bool = False, **kwargs) -> VSSD:
    return build_vizoo_model(VSSD, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs) -> PaperCfg:
    return imagenet_cfg(
        "stem.conv1.conv", "arXiv:2407.18559", "https://github.com/YuHengsss/VSSD", license="apache-2.0", **kwargs
    )


def _hub(file: str, **kwargs) -> PaperCfg:
    return _cfg(hf_hub_id="YuhengSSS/VSSD", hf_hub_filename=file, **kwargs)


# Official weights: files of the Hugging Face repo YuhengSSS/VSSD that the README's tables link; pretrained=True
# downloads them into the HF cache. ``.in1k`` is the main table's checkpoint (the paper's figure); ``.mesa_in1k``
# the README's second table, the same models trained with MESA (no Micro).
# paper_*: the README of the Aug-2024 code (top-1 as each table gives it); FLOPs are fvcore MACs at 224².
_MICRO, _TINY = dict(paper_params_m=14, paper_gmacs=2.3), dict(paper_params_m=24, paper_gmacs=4.5)
_SMALL, _BASE = dict(paper_params_m=40, paper_gmacs=7.4), dict(paper_params_m=89, paper_gmacs=16.1)
default_cfgs = generate_default_cfgs(
    {
        "vssd_micro.in1k": _hub("vssd_micro_best.pth", **_MICRO, paper_top1=82.5),
        "vssd_tiny.in1k": _hub("vssd_tiny_best_ema.pth", **_TINY, paper_top1=83.6),
        "vssd_tiny.mesa_in1k": _hub("vssd_tiny_e300_with_mesa.pth", **_TINY, paper_top1=84.1),
        "vssd_small.in1k": _hub("vssd_small_best_ema.pth", **_SMALL, paper_top1=84.1),
        "vssd_small.mesa_in1k": _hub("vssd_small_e300_with_mesa.pth", **_SMALL, paper_top1=84.5),
        "vssd_base.in1k": _hub("vssd_base_best_ema.pth", **_BASE, paper_top1=84.7),
        "vssd_base.mesa_in1k": _hub("vssd_base_e300_with_mesa.pth", **_BASE, paper_top1=85.4),
        "test_vssd.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)


@register_model
def vssd_micro(pretrained: bool = False, **kwargs) -> VSSD:
    # drop_path 0.2: the official model reads MODEL.VMAMBA2.DROP_PATH_RATE (default 0.2); the 0.1 in the micro yaml is
    # MODEL.DROP_PATH_RATE, which the official builder never passes to the model.
    model_args = dict(
        dims=(48, 96, 192, 384), depths=(2, 2, 8, 4), num_heads=(2, 4, 8, 16), d_state=48, drop_path_rate=0.2
    )
    return _create_vssd("vssd_micro", pretrained, **dict(model_args, **kwargs))


@register_model
def vssd_tiny(pretrained: bool = False, **kwargs) -> VSSD:
    model_args = dict(dims=(64, 128, 256, 512), depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_vssd("vssd_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def vssd_small(pretrained: bool = False, **kwargs) -> VSSD:
    model_args = dict(dims=(64, 128, 256, 512), depths=(3, 4, 21, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.4)
    return _create_vssd("vssd_small", pretrained, **dict(model_args, **kwargs))


@register_model
def vssd_base(pretrained: bool = False, **kwargs) -> VSSD:
    model_args = dict(dims=(96, 192, 384, 768), depths=(3, 4, 21, 5), num_heads=(3, 6, 12, 24), drop_path_rate=0.6)
    return _create_vssd("vssd_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_vssd(pretrained: bool = False, **kwargs) -> VSSD:
    """A tiny VSSD for tests."""
    model_args = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), d_state=8, mlp_ratio=2.0)
    return _create_vssd("test_vssd", pretrained, **dict(model_args, **kwargs))
