"""Shared model building for vizoo families: timm's ``build_model_with_cfg`` with safe local checkpoint reading, the
ImageNet default cfg, the loud check of converted official checkpoints and the official weight init."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg

from vizoo.utils.checkpoint import check_state_dict, read_state_dict


def build_vizoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    checkpoint_filter_fn: Callable,
    feature_cfg: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``variant`` with timm; a local ``pretrained_cfg_overlay=dict(file=...)`` is read by vizoo.

    vizoo reads the file itself (``read_state_dict``) so that official training checkpoints with non-tensor objects
    load without executing pickled code, and an unreadable file gives an error that says so.
    """
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    if pretrained and overlay and overlay.get("file"):
        overlay = dict(overlay, state_dict=read_state_dict(overlay["file"]), file=None)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg or dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def imagenet_cfg(first_conv: str, paper_id: str, origin_url: str, **kwargs) -> dict:
    """A timm pretrained cfg for an ImageNet-1k classifier at 224² (ImageNet mean/std, bicubic, crop 0.875)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv,
        "classifier": "head.fc",
        "paper_ids": paper_id,
        "origin_url": origin_url,
        **kwargs,
    }


def check_converted(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Check a converted official checkpoint against ``model`` loudly (``CheckpointError`` listing the keys).

    The classifier may differ (fine-tuning) and so may the first conv's input channels (``in_chans``).
    """
    cfg = getattr(model, "pretrained_cfg", {})
    check_state_dict(
        state_dict,
        model,
        cfg.get("architecture", type(model).__name__),
        skip_prefixes=("head.",),
        skip_shape_check=(f"{cfg.get('first_conv', '')}.weight",),
    )
    return state_dict


def init_trunc_normal(module: nn.Module, layer_types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> None:
    """The official codes' init: truncated-normal weights (std 0.02) and zero bias for ``layer_types``."""
    if isinstance(module, layer_types):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
