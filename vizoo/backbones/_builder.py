"""Shared model building for vizoo families: timm's ``build_model_with_cfg`` with official weights downloaded once and
read safely, the ImageNet default cfg (with the paper's figures and where the weights are), the loud check of
converted official checkpoints and the official weight init."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg, resolve_pretrained_cfg

from vizoo.backbones._pretrained import cached_weights_file, explain_cached_file
from vizoo.utils.checkpoint import CheckpointError, check_state_dict, read_state_dict


def build_vizoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    checkpoint_filter_fn: Callable,
    feature_cfg: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``variant`` with timm, loading official weights through vizoo when ``pretrained``.

    ``pretrained=True`` takes the weights of the pretrained cfg (the ``name.tag`` asked for, else the default tag),
    downloaded once into the torch hub / HF cache (``vizoo.backbones._pretrained``), or a local
    ``pretrained_cfg_overlay=dict(file=...)``. vizoo reads the file itself (``read_state_dict``) so that official
    training checkpoints with non-tensor objects load without executing pickled code; ``checkpoint_filter_fn``
    converts the official layout and timm loads the result strictly. An unreadable or mismatched downloaded file
    raises ``CheckpointError`` saying to delete the cached copy. ``features_fmt`` ("NCHW" or "NHWC") sets the layout
    of ``forward_features`` (``set_features_fmt``).
    """
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    features_fmt = kwargs.pop("features_fmt", None)
    # timm's factory arguments for placement (timm >= 1.0.21): build under the device, then cast.
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    downloaded = cfg = None
    if pretrained and not (overlay and (overlay.get("file") or overlay.get("state_dict"))):
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay)
        downloaded = cached_weights_file(cfg, kwargs.get("cache_dir"))
        if downloaded:
            overlay = dict(overlay or {}, file=downloaded)
    try:
        if pretrained and overlay and overlay.get("file"):
            overlay = dict(overlay, state_dict=read_state_dict(overlay["file"]), file=None)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = build_model_with_cfg(
                model_cls,
                variant,
                pretrained,
                pretrained_cfg_overlay=overlay,
                pretrained_filter_fn=checkpoint_filter_fn,
                feature_cfg=feature_cfg or dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
                **kwargs,
            )
    except CheckpointError as e:
        if downloaded:
            raise explain_cached_file(e, downloaded, cfg) from e
        raise
    # timm keeps the overlay's state dict in the built model's pretrained_cfg (and a feature wrapper's copy): drop
    # it, the weights are in the model now.
    for module in model.modules():
        if isinstance(getattr(module, "pretrained_cfg", None), dict):
            module.pretrained_cfg.pop("state_dict", None)
    if dtype is not None:
        model.to(dtype=dtype)
    if features_fmt is not None:
        if not hasattr(model, "set_features_fmt"):
            raise ValueError(
                f"features_fmt sets the layout of forward_features, which a features_only {variant} does not have; "
                "its feature maps are NCHW already"
            )
        model.set_features_fmt(features_fmt)
    return model


@dataclass
class PaperCfg(PretrainedCfg):
    """timm's pretrained cfg plus the figures the variant's paper publishes, kept as printed there.

    "The paper" is the published table of the variant: the paper's, or the official repository's README / model zoo
    where that is the table the authors maintain. A figure the source does not give stays None. timm builds a plain
    ``PretrainedCfg`` from a dict and refuses unknown keys, so the families' cfgs are instances of this class, and the
    figures are read from the registry: ``timm.get_pretrained_cfg(name).paper_top1`` or
    ``vizoo.model_table.paper_figures(name)``. The paper-table tests in ``tests/backbones/`` compare the built models
    against them, and ``vizoo.model_table`` lists them.
    """

    paper_params_m: float | None = None  # parameters, millions
    paper_gmacs: float | None = None  # multiply-accumulates ("FLOPs" in these papers), billions, at input_size
    paper_top1: float | None = None  # ImageNet-1k top-1 (%), the plain figure (no distillation, MESA or fine-tune)
    # EcoFormer reports multiplications, additions and energy instead of MACs (billions; billions of pJ).
    paper_mul_b: float | None = None
    paper_add_b: float | None = None
    paper_energy_bpj: float | None = None
    # Where released weights are that no URL can fetch (Google Drive, Baidu pan, a Hub repo whose file names are not
    # published): ``pretrained=True`` then raises an error naming this address and how to load the file fetched by
    # hand (``vizoo.backbones._pretrained``).
    manual_url: str | None = None

    def to_dict(self, remove_source: bool = False, remove_null: bool = True) -> dict:
        """timm's dict without the fields timm lacks (paper figures, ``manual_url``). A built model's
        ``pretrained_cfg`` is this dict, and timm saves it into the ``config.json`` of ``save_for_hf`` folders, which
        timm reads back into a plain ``PretrainedCfg``: unknown fields would make such a folder unloadable."""
        cfg = super().to_dict(remove_source=remove_source, remove_null=remove_null)
        return {k: v for k, v in cfg.items() if k not in VIZOO_FIELDS}


PAPER_FIGURES = tuple(f for f in PaperCfg.__dataclass_fields__ if f.startswith("paper_") and f != "paper_ids")
VIZOO_FIELDS = tuple(f for f in PaperCfg.__dataclass_fields__ if f not in PretrainedCfg.__dataclass_fields__)


def imagenet_cfg(first_conv: str, paper_id: str, origin_url: str, **kwargs) -> PaperCfg:
    """A timm pretrained cfg for an ImageNet-1k classifier at 224² (ImageNet mean/std, bicubic, crop 0.875);
    ``kwargs`` override any field, the ``paper_*`` figures included.

    ``min_input_size`` defaults to 32², the smallest input of the stride-32 families (H and W must be multiples of
    32, ``StagedBackbone.input_multiple``); a family with another limit sets its own. timm's model tests pick it
    when the default input is larger than they want."""
    cfg = {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, 32, 32),
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
    return PaperCfg(**cfg)


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
