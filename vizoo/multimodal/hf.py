"""vizoo backbones in transformers: ``TimmWrapperModel`` folders whose features are laid out as consumers expect.

``transformers.TimmWrapperModel`` builds ``timm.create_model(architecture, num_classes=0, **model_args)`` from a
folder's ``config.json`` and returns ``forward_features`` as ``last_hidden_state``, ``forward_head`` of it as
``pooler_output`` and ``forward_intermediates`` as ``hidden_states``. vizoo's hierarchical models are channel-last
inside and their ``forward_features`` is NHWC (B, h, w, C), while consumers of a map-shaped tower read it as NCHW:
FastVLM takes ``last_hidden_state.flatten(2).permute(0, 2, 1)``, which on an NHWC map crashes (or, when h equals C,
silently mixes tokens).

The fix is a model argument, ``features_fmt``, that every vizoo map model takes:
``timm.create_model(name, features_fmt="NCHW")`` gives a model whose ``forward_features`` is NCHW, whose
``forward_head`` takes that map back, and whose ``forward_intermediates`` returns its final features in the same layout
(``vizoo.backbones._base.StagedBackbone.set_features_fmt``). Weights and the computation inside are unchanged.
``save_for_transformers`` writes ``features_fmt="NCHW"`` into ``model_args``, so ``TimmWrapperModel.from_pretrained``
hands consumers an NCHW map. Nothing in transformers is patched.

Vim is a token model: its features are (B, N + 1, C) with the class token in the middle, as timm's ViTs give
(B, 1 + N, C); ``features_fmt`` is refused for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import timm
import torch.nn as nn

from vizoo.backbones._base import check_fmt
from vizoo.backbones.vim import Vim

__all__ = ["native_features_fmt", "save_for_transformers"]


def native_features_fmt(model: nn.Module) -> str:
    """The layout of ``model.forward_features`` as built: "NHWC" or "NCHW" for map models, "NLC" for Vim."""
    if isinstance(model, Vim):
        return "NLC"
    return getattr(model, "output_fmt", "NCHW")


def save_for_transformers(
    model: nn.Module | str, folder: str | os.PathLike, features_fmt: str | None = "NCHW", **create_kwargs
) -> Path:
    """Save a vizoo model as a timm-style folder (``config.json`` + ``model.safetensors``, timm's ``save_for_hf``)
    that ``transformers.TimmWrapperModel.from_pretrained(folder)`` loads after ``import vizoo.multimodal``.

    ``model``: a vizoo timm model, or a name (built with ``create_kwargs``). ``features_fmt`` ("NCHW" by default)
    is recorded in ``model_args`` for map models so ``last_hidden_state`` is (B, C, h, w), as FastVLM-style
    consumers read it; None keeps the model's own layout. Vim folders carry no ``features_fmt``.
    ``num_classes`` is left out of ``model_args``: transformers passes its own (0 for ``TimmWrapperModel``,
    ``num_labels`` for ``TimmWrapperForImageClassification``), taken from the config's root ``num_classes``.
    """
    from timm.models import save_for_hf

    if isinstance(model, str):
        model = timm.create_model(model, **create_kwargs)
    folder = Path(folder)
    save_for_hf(model, str(folder), safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k not in ("num_classes", "features_fmt")}
    if features_fmt is not None and native_features_fmt(model) != "NLC":
        check_fmt("features_fmt", features_fmt)
        model_args["features_fmt"] = features_fmt
    config["model_args"] = model_args
    config_path.write_text(json.dumps(config, indent=2))
    return folder
