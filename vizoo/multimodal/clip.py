"""vizoo backbones as open_clip image towers: configs, creation, freezing, weights in and out, ``local-dir:`` folders.

open_clip builds an image tower from any timm model named by ``vision_cfg['timm_model_name']`` (its ``TimmModel``:
``visual.trunk`` is the timm model, ``visual.head`` an optional projection). vizoo registers one open_clip config per
vizoo model, ``vizoo-<model>``, and adds what open_clip lacks for these towers:

- input checks at creation time: an image size the backbone cannot take, and ``patch_dropout`` (a ViT-only timm
  argument) on a tower that has no patch dropout, fail with a message that says what to do;
- a download-free tokenizer: open_clip's bundled BPE ``SimpleTokenizer`` (OpenAI CLIP's vocabulary);
- a LiT freeze (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", arXiv 2111.07991) that leaves
  exactly the last ``k`` timm layer groups and the projection trainable, also when the projection is the trunk's own
  classifier (``timm_proj`` null), which open_clip's ``TimmModel.lock`` freezes with the trunk;
- strict loading of backbone checkpoints through the family's ``checkpoint_filter_fn`` (open_clip's
  ``pretrained_image_path`` loads with ``strict=False`` and silently loads nothing when prefixes differ);
- the trunk back out as a plain timm state dict, and ``local-dir:`` folders open_clip itself can load.

Half precision: create the model in fp32 and run it under ``torch.autocast`` (open_clip's ``amp``/``amp_bf16``
precisions); vizoo's scans and linear attentions compute in fp32 under autocast. open_clip's ``fp16``/``bf16``
precisions cast the whole tower, scan parameters included, and are refused here.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path

import open_clip
import open_clip.factory
import open_clip.loss
import timm
import torch
import torch.nn as nn
from open_clip.tokenizer import SimpleTokenizer
from timm.models import group_parameters

import vizoo
from vizoo.utils.checkpoint import CheckpointError, check_state_dict, read_state_dict

__all__ = [
    "CONFIG_PREFIX",
    "TEXT_PRESETS",
    "clip_config",
    "create_clip",
    "create_loss",
    "load_backbone",
    "lock_image_tower",
    "prepare_clip",
    "register_configs",
    "resolve_model",
    "save_clip",
    "save_trunk",
    "trunk_state_dict",
    "vizoo_config_names",
]

CONFIG_PREFIX = "vizoo-"
TRUNK_PREFIX = "visual.trunk."

# Text towers (open_clip ``CLIPTextCfg`` keys). "base" is the text tower of open_clip's ViT-B-32 (OpenAI CLIP's 63M
# text transformer); "small" a 6-layer half-width one; "tiny" a 2-layer tower for tests and smoke runs.
TEXT_PRESETS: dict[str, dict] = {
    "tiny": dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
    "small": dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=6),
    "base": dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
}
LOSSES = ("clip", "siglip")
# SigLIP's initial temperature and bias (Zhai et al., arXiv 2303.15343, section 3: t' = log 10, b = -10).
SIGLIP_INIT = dict(init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
# open_clip precisions that cast parameters to half precision (the scan's A/D and step-size biases included).
_CASTING_PRECISIONS = ("fp16", "bf16", "pure_fp16", "pure_bf16")


def vizoo_config_names() -> list[str]:
    """The open_clip config names ``vizoo-<model>`` of every registered vizoo model."""
    return [CONFIG_PREFIX + name for name in vizoo.list_models()]


def _default_image_size(name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    return int(size[-1])


def _size(image_size) -> int | tuple[int, int]:
    if isinstance(image_size, int):
        return image_size
    h, w = image_size
    return h if h == w else (int(h), int(w))


def clip_config(
    name: str,
    embed_dim: int = 512,
    text: str | Mapping = "base",
    image_size: int | tuple[int, int] | None = None,
    pool: str = "",
    proj: str | None = "linear",
    loss: str = "clip",
    drop_path: float | None = None,
    patch_dropout: float = 0.0,
) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of a CLIP with vizoo tower ``name``.

    ``pool`` "" keeps the model's own pooling (average for hierarchical models, the class token for Vim) and
    ``proj`` "linear" adds a projection to ``embed_dim``, as open_clip's ConvNeXt configs do; ``proj`` None makes
    the trunk's classifier the projection (open_clip's MobileCLIP configs). ``text``: a ``TEXT_PRESETS`` name or a
    ``CLIPTextCfg`` dict. ``loss`` "siglip" adds the learnable logit bias and SigLIP's initial temperature.
    """
    name = resolve_model(name)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(text, str):
        if text not in TEXT_PRESETS:
            raise ValueError(f"unknown text preset {text!r}; use one of {sorted(TEXT_PRESETS)} or a CLIPTextCfg dict")
        text_cfg = dict(TEXT_PRESETS[text])
    else:
        text_cfg = dict(text)
    vision_cfg = dict(
        timm_model_name=name,
        timm_model_pretrained=False,
        timm_pool=pool,
        timm_proj=proj,
        timm_proj_bias=False,
        timm_drop=0.0,
        image_size=_default_image_size(name) if image_size is None else _size(image_size),
    )
    if drop_path is not None:
        vision_cfg["timm_drop_path"] = drop_path
    if patch_dropout:
        vision_cfg["patch_dropout"] = patch_dropout
    cfg = dict(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    if loss == "siglip":
        cfg.update(SIGLIP_INIT)
    return cfg


def register_configs() -> list[str]:
    """Register ``vizoo-<model>`` in open_clip's config registry (in memory; nothing is written to disk).

    The entries survive open_clip rescans (``add_model_config`` keeps existing entries). Returns the names."""
    registry = open_clip.factory._MODEL_CONFIGS
    for name in vizoo.list_models():
        registry.setdefault(CONFIG_PREFIX + name, clip_config(name))
    return vizoo_config_names()


def resolve_model(name: str) -> str:
    """A vizoo model name from ``name`` or ``vizoo-<name>``; ``ValueError`` listing close names if unknown."""
    bare = name.removeprefix(CONFIG_PREFIX)
    models = vizoo.list_models()
    if bare in models:
        return bare
    close = difflib.get_close_matches(bare, models, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown vizoo model {name!r}.{hint} `vizoo list` (or vizoo.list_models()) lists them all.")


def _check_image_size(trunk: nn.Module, name: str, image_size) -> None:
    multiple = getattr(trunk, "input_multiple", 1)
    sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if any(s <= 0 or s % multiple for s in sizes):
        fixed = [max(multiple, round(s / multiple) * multiple) for s in sizes]
        raise ValueError(
            f"{name} takes images whose height and width are multiples of {multiple}, got image_size={image_size}; "
            f"use image_size={fixed[0] if fixed[0] == fixed[-1] else tuple(fixed)}"
        )


def create_clip(
    vision: str,
    text: str | Mapping = "base",
    embed_dim: int = 512,
    image_size: int | tuple[int, int] | None = None,
    loss: str = "clip",
    pool: str = "",
    proj: str | None = "linear",
    drop_path: float | None = None,
    patch_dropout: float = 0.0,
    precision: str = "fp32",
    backbone_checkpoint: str | os.PathLike | None = None,
    aug_cfg: dict | None = None,
    **model_kwargs,
):
    """open_clip's CLIP with a vizoo image tower: ``(model, train_transform, val_transform, tokenizer)``.

    Args:
        vision: a vizoo model name (``vmamba_tiny_s1l8``) or its open_clip config name (``vizoo-vmamba_tiny_s1l8``).
        text: a ``TEXT_PRESETS`` name ("tiny", "small", "base": ViT-B/32's text tower) or a ``CLIPTextCfg`` dict.
        embed_dim: the joint embedding width.
        image_size: square side (or (h, w)); the model's default input size if None. Must be a multiple of the
            backbone's ``input_multiple`` (its total stride).
        loss: "clip" (InfoNCE, Radford et al. 2021) or "siglip" (sigmoid loss, Zhai et al. 2023: adds the logit
            bias); ``create_loss(loss)`` gives the matching open_clip loss.
        pool: timm pooling of the trunk ("" keeps the model's own); see ``clip_config``.
        proj: "linear" (default), "mlp", "none", or None (the trunk's classifier is the projection).
        drop_path: stochastic depth of the trunk (None: the model's default).
        patch_dropout: must be 0: vizoo towers have no patch dropout (FLIP-style token dropping needs a plain ViT).
        precision: "fp32", or "amp"/"amp_bf16" (the same fp32 model; run it under ``torch.autocast``).
        backbone_checkpoint: a backbone weights file loaded strictly into the trunk (``load_backbone``).
        aug_cfg: open_clip's ``AugmentationCfg`` dict for the train transform.
        model_kwargs: passed to ``open_clip.create_model_and_transforms`` (e.g. ``device``).

    The tokenizer is open_clip's bundled BPE ``SimpleTokenizer``: it needs no download. The transforms use the
    backbone's normalisation (ImageNet mean/std for vizoo models) and interpolation.
    """
    name = resolve_model(vision)
    if precision in _CASTING_PRECISIONS:
        raise ValueError(
            f"precision={precision!r} casts the whole tower (the scan's parameters included) to half precision; "
            "create the model with precision='fp32' and train under torch.autocast (open_clip's 'amp' or "
            "'amp_bf16' precision)"
        )
    if precision not in ("fp32", "amp", "amp_bf16", "amp_bfloat16"):
        raise ValueError(f"precision must be 'fp32', 'amp' or 'amp_bf16', got {precision!r}")
    if patch_dropout:
        raise ValueError(
            f"patch_dropout={patch_dropout} needs a plain ViT with timm's patch_drop_rate; the vizoo tower {name} "
            "has no patch dropout. Use patch_dropout=0 (or drop_path for regularisation)."
        )
    cfg = clip_config(name, embed_dim, text, image_size, pool, proj, loss, drop_path)
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    mean = tuple(getattr(pretrained_cfg, "mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(pretrained_cfg, "std", None) or open_clip.OPENAI_DATASET_STD)
    interpolation = getattr(pretrained_cfg, "interpolation", None) or "bicubic"
    model, train_tf, val_tf = open_clip.create_model_and_transforms(
        CONFIG_PREFIX + name,
        image_mean=mean,
        image_std=std,
        image_interpolation=interpolation,
        aug_cfg=aug_cfg,
        **{**model_kwargs, **cfg},
    )
    _check_image_size(model.visual.trunk, name, cfg["vision_cfg"]["image_size"])
    if pool in ("abs_attn", "rot_attn"):
        from vizoo.multimodal.hf import native_features_fmt

        if native_features_fmt(model.visual.trunk) != "NCHW":
            raise ValueError(
                f"timm_pool={pool!r} reads an NCHW map, but {name}'s features are "
                f"{native_features_fmt(model.visual.trunk)}; use pool='' (the model's own pooling) or 'avg'"
            )
    prepare_clip(model, cfg)
    if backbone_checkpoint is not None:
        load_backbone(model, backbone_checkpoint)
    tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
    return model, train_tf, val_tf, tokenizer


def prepare_clip(model: nn.Module, model_cfg: dict | None = None) -> nn.Module:
    """Attach vizoo's fixes to an open_clip model with a vizoo tower (``create_clip`` does this; call it on a model
    made by open_clip itself): its ``model_cfg`` (for ``save_clip``) and a ``visual.lock`` that is
    ``lock_image_tower``'s, so ``model.lock_image_tower(k)`` freezes exactly what it says."""
    if model_cfg is not None:
        model.vizoo_model_cfg = copy.deepcopy(model_cfg)
    visual = model.visual
    if hasattr(visual, "trunk"):
        visual.lock = types.MethodType(_lock_visual, visual)
    return model


def create_loss(loss: str = "clip", **kwargs) -> nn.Module:
    """open_clip's ``ClipLoss`` or ``SigLipLoss`` for ``loss`` ("clip" or "siglip")."""
    if loss == "clip":
        return open_clip.loss.ClipLoss(**kwargs)
    if loss == "siglip":
        return open_clip.loss.SigLipLoss(**kwargs)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


# --- freezing --------------------------------------------------------------------------------------------------------


def _classifier_prefix(trunk: nn.Module) -> str:
    classifier = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return (classifier[0] if isinstance(classifier, (list, tuple)) else classifier) + "."


def lock_image_tower(model: nn.Module, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
    """Freeze a vizoo image tower for LiT, leaving exactly the last ``unlocked_groups`` layer groups trainable.

    Groups are timm's (``group_parameters(trunk, trunk.group_matcher())``: the stem, then each block, the final norm
    with the last block), counted without the trunk's classifier. The projection stays trainable whatever
    ``unlocked_groups`` is: ``visual.head`` and, when ``timm_proj`` is null, the trunk's classifier, which open_clip's
    ``TimmModel.lock`` would freeze (or count as the last group). ``model``: an open_clip CLIP or its ``visual``.
    ``freeze_bn_stats`` puts the frozen groups' BatchNorms in eval mode, as open_clip does.
    """
    visual = getattr(model, "visual", model)
    trunk = visual.trunk
    head_prefix = _classifier_prefix(trunk)
    trainable_head = {n for n, _ in trunk.named_parameters() if n.startswith(head_prefix)}
    body = [(n, p) for n, p in trunk.named_parameters() if n not in trainable_head]
    groups = group_parameters(_Named(body), trunk.group_matcher())
    frozen_ids = [g for g in sorted(groups) if g < len(groups) - unlocked_groups]
    frozen = {n for g in frozen_ids for n in groups[g]}
    for n, p in trunk.named_parameters():
        p.requires_grad = n not in frozen
    for p in visual.head.parameters():
        p.requires_grad = True
    if freeze_bn_stats and frozen:
        from open_clip.utils import freeze_batch_norm_2d

        modules = {n.rsplit(".", 1)[0] for n in frozen}
        freeze_batch_norm_2d(trunk, modules)


def _lock_visual(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
    lock_image_tower(self, unlocked_groups, freeze_bn_stats)


class _Named:
    """A stand-in exposing ``named_parameters`` over a chosen list, for timm's ``group_parameters``."""

    def __init__(self, named):
        self._named = named

    def named_parameters(self):
        return iter(self._named)


# --- weights in and out ----------------------------------------------------------------------------------------------


def _trunk(model: nn.Module) -> nn.Module:
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "trunk"):
        raise TypeError(
            f"expected an open_clip model with a timm image tower (visual.trunk), got {type(model).__name__}"
        )
    return visual.trunk


def _filter_fn(trunk: nn.Module):
    module = sys.modules.get(type(trunk).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        raise TypeError(f"{type(trunk).__name__} is not a vizoo backbone with a checkpoint_filter_fn")
    return fn


def load_backbone(model: nn.Module, checkpoint, strict: bool = True) -> nn.Module:
    """Load a backbone checkpoint (a file path or a state dict) into the image tower's trunk, strictly.

    The checkpoint is a vizoo/timm state dict of the backbone or an official one: it goes through the family's
    ``checkpoint_filter_fn`` (key renames, ``pos_embed`` resampling) as ``timm.create_model(..., pretrained=True)``
    would. Every trunk weight must come from it; only the classifier may differ (dropped, the tower keeps its own
    head: none or the projection). Raises ``CheckpointError`` listing missing, unexpected and mis-shaped keys.
    ``model``: an open_clip CLIP, its ``visual``, or a bare trunk. Returns ``model``.
    """
    trunk = _trunk(model) if hasattr(getattr(model, "visual", model), "trunk") else model
    state_dict = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    head = _classifier_prefix(trunk)
    head_root = head.split(".")[0] + "."
    name = (getattr(trunk, "pretrained_cfg", None) or {}).get("architecture", type(trunk).__name__)
    try:
        filtered = _filter_fn(trunk)(state_dict, trunk)
        if strict:
            check_state_dict(filtered, trunk, name, skip_prefixes=(head,))
    except CheckpointError as e:
        raise CheckpointError(f"{e}\n(loading a backbone checkpoint into the image tower of a CLIP model)") from e
    own = trunk.state_dict()
    # The classifier never comes from a backbone checkpoint: the tower's head is the projection or nothing. Other head
    # parameters (e.g. a norm inside the head module) must match.
    filtered = {
        k: v for k, v in filtered.items() if not k.startswith(head) and (k in own or not k.startswith(head_root))
    }
    result = trunk.load_state_dict(filtered, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if strict and (missing or result.unexpected_keys):
        raise CheckpointError(
            f"checkpoint does not fit the {name} tower: missing keys {missing[:12]}, "
            f"unexpected keys {result.unexpected_keys[:12]}"
        )
    return model


def trunk_state_dict(model: nn.Module, include_head: bool = False) -> dict[str, torch.Tensor]:
    """The image tower's trunk as a plain vizoo/timm state dict (the ``visual.trunk.`` prefix removed).

    Without the classifier by default, so it loads strictly into ``timm.create_model(name, num_classes=0)``; with
    ``include_head`` (a ``timm_proj`` null tower, whose classifier is the projection) into
    ``timm.create_model(name, num_classes=embed_dim)``."""
    trunk = _trunk(model)
    head = _classifier_prefix(trunk)
    return {k: v.detach().clone() for k, v in trunk.state_dict().items() if include_head or not k.startswith(head)}


def save_trunk(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``trunk_state_dict(model)`` to a ``.safetensors`` file (any other suffix: ``torch.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.contiguous() for k, v in trunk_state_dict(model).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return path


def save_clip(model: nn.Module, folder: str | os.PathLike, model_cfg: dict | None = None) -> Path:
    """Save an open_clip model as an open_clip ``local-dir:`` folder: ``open_clip_config.json`` (``model_cfg`` and
    ``preprocess_cfg``) and ``open_clip_model.safetensors``.

    Load it with ``open_clip.create_model_and_transforms(f"local-dir:{folder}")`` after ``import vizoo`` (the timm
    names must be registered) and ``open_clip.get_tokenizer(f"local-dir:{folder}")``. ``model_cfg`` defaults to the
    config ``create_clip`` built the model from."""
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    model_cfg = model_cfg if model_cfg is not None else getattr(model, "vizoo_model_cfg", None)
    if model_cfg is None:
        raise ValueError(
            "save_clip needs the open_clip model config: pass model_cfg= (the dict the model was built from; "
            "create_clip records it)"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / HF_SAFE_WEIGHTS_NAME))
    save_config_for_hf(model, folder / HF_CONFIG_NAME, model_config=model_cfg)
    # open_clip's writer keeps mean/std/interpolation/resize_mode; keep the size too (the tower's input size).
    config = json.loads((folder / HF_CONFIG_NAME).read_text())
    config["preprocess_cfg"]["size"] = model_cfg["vision_cfg"]["image_size"]
    (folder / HF_CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return folder
