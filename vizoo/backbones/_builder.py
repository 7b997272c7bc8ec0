"""Shared model building for vizoo families: timm's ``build_model_with_cfg`` plus safe local checkpoint reading."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from timm.models import build_model_with_cfg

from vizoo.utils.checkpoint import read_state_dict


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
