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

# The folder writer is shared with ``vizoo convert`` (``vizoo.hub``), which needs neither open_clip nor transformers.
from vizoo.hub import native_features_fmt, save_for_transformers

__all__ = ["native_features_fmt", "save_for_transformers"]
