"""Multi-scale NCHW feature maps from any vizoo model or any timm model that supports ``features_only``.

Dense heads see a list of (B, C_i, H / r_i, W / r_i) maps whatever the backbone's own layout: vizoo models go through
timm's ``getter`` wrapper (their ``forward_intermediates``, NCHW), and any other NHWC wrapper is permuted here.
"""

from __future__ import annotations

import difflib
import logging

import timm
import torch
import torch.nn as nn

_logger = logging.getLogger(__name__)

__all__ = ["FeatureBackbone", "last_levels"]


def _is_vizoo_model(name: str) -> bool:
    import vizoo.backbones  # noqa: F401  (registers vizoo's models)

    return name in timm.list_models(module=list(vizoo.backbones.FAMILIES))


def _num_levels(name: str, **kwargs) -> int | None:
    try:
        return len(timm.create_model(name, features_only=True, pretrained=False, **kwargs).feature_info)
    except Exception:  # noqa: BLE001  (only used to word an error message)
        return None


def last_levels(name: str, count: int) -> tuple[int, ...]:
    """Indices of ``name``'s last ``count`` feature levels (all of them if it has fewer): the default levels of the
    dense heads and of VizooBackbone, (0, 1, 2, 3) for a four-stage vizoo model and (0, 1, 2) for three-stage
    MobileMamba. Counted on the meta device; a model without ``feature_info`` gets range(count), which the
    ``features_only`` build then rejects with its own message."""
    with torch.device("meta"):
        levels = len(getattr(timm.create_model(name), "feature_info", range(count)))
    return tuple(range(max(levels - count, 0), levels))


class FeatureBackbone(nn.Module):
    """``name`` built with ``features_only=True``: (B, C_in, H, W) -> list of NCHW maps at ``out_indices``.

    Attributes ``channels`` and ``reductions`` give each map's channel count and stride. No weights are downloaded
    unless ``pretrained=True`` (then timm's usual rules apply, e.g. ``pretrained_cfg_overlay=dict(file=...)``).
    """

    def __init__(
        self,
        name: str,
        out_indices: tuple[int, ...] | None = None,
        pretrained: bool = False,
        in_chans: int = 3,
        **kwargs,
    ):
        """``out_indices``: the feature levels to return; None: the last four (``last_levels``)."""
        super().__init__()
        if not isinstance(name, str):
            raise TypeError(f"backbone must be a model name (str), got {type(name).__name__}")
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown backbone {name!r}.{hint} Run `vizoo list` or timm.list_models() to see names.")
        out_indices = last_levels(name, 4) if out_indices is None else tuple(int(i) for i in out_indices)
        if not out_indices:
            raise ValueError("out_indices is empty; give the backbone levels to use, e.g. (1, 2, 3)")
        feature_kwargs = dict(in_chans=in_chans, **kwargs)
        if _is_vizoo_model(name):
            feature_kwargs["feature_cls"] = "getter"  # forward_intermediates: NCHW maps
        try:
            body = timm.create_model(
                name, features_only=True, out_indices=out_indices, pretrained=pretrained, **feature_kwargs
            )
        except (IndexError, RuntimeError, AssertionError, TypeError, KeyError, ValueError, NotImplementedError) as e:
            if isinstance(e, IndexError) or "out of range" in str(e):
                levels = _num_levels(name, **feature_kwargs)
                have = f"it has {levels} feature levels (indices 0..{levels - 1})" if levels else "see its feature_info"
                raise ValueError(f"out_indices {out_indices} out of range for backbone {name!r}: {have}") from e
            raise ValueError(
                f"backbone {name!r} cannot give feature maps (timm features_only failed: {e}); pick a model with "
                "feature_info, e.g. a vizoo model, resnet18 or convnext_atto"
            ) from e
        channels = body.feature_info.channels()
        if len(channels) != len(out_indices):
            raise ValueError(f"backbone {name!r} gave {len(channels)} levels for out_indices {out_indices}")
        self.body = body
        self.name = name
        self.out_indices = out_indices
        self.channels: list[int] = list(channels)
        self.reductions: list[int] = list(body.feature_info.reduction())
        self.in_chans = in_chans
        self.nhwc = str(getattr(body, "output_fmt", "NCHW")).endswith("NHWC")
        self.pretrained_cfg = dict(getattr(body, "pretrained_cfg", {}) or {})
        _logger.debug("backbone %s: channels %s, strides %s", name, self.channels, self.reductions)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> [(B, channels[i], H / reductions[i], W / reductions[i]) for each level]."""
        features = self.body(x)
        if isinstance(features, dict):
            features = list(features.values())
        if self.nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)

    def no_weight_decay_leaves(self) -> set[str]:
        """Leaf parameter names the backbone keeps out of weight decay (e.g. VMamba's ``A_logs``, ``Ds``)."""
        inner = getattr(self.body, "model", None)
        names = inner.no_weight_decay() if inner is not None and hasattr(inner, "no_weight_decay") else set()
        return {n.rsplit(".", 1)[-1] for n in names}
