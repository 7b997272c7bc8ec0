"""Save and reload compacted ViTs: a safetensors checkpoint plus a JSON of the architecture and per-block widths.

``save_pruned(model, "out/deit_s_50")`` writes ``out/deit_s_50.safetensors`` and ``out/deit_s_50.json``. The JSON
holds the timm architecture name (``model.pretrained_cfg["architecture"]`` unless ``arch`` is given), the
constructor kwargs that fix the unpruned shapes (img_size, patch_size, in_chans, num_classes, embed_dim, depth,
num_heads, qkv_bias, plus any ``model_kwargs``), and per block its head count, head dim and MLP hidden width.
:func:`load_pruned` calls ``timm.create_model(arch, pretrained=False, **kwargs)``, resizes each block's qkv/proj and
fc1/fc2 to the recorded widths and loads the checkpoint strictly, so any mismatch fails with the keys.
Masked (not yet compacted) models are compacted on save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from .block import check_vit, compact, prunable_linears

__all__ = ["is_saved_pruned", "load_pruned", "save_pruned"]

FORMAT = "vizoo-pruned-vit/1"


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def is_saved_pruned(path: str | os.PathLike) -> bool:
    """Whether ``path`` (with or without suffix) names both files that :func:`save_pruned` writes."""
    return all(p.is_file() for p in _paths(path))


def save_pruned(
    model: nn.Module, path: str | os.PathLike, arch: str | None = None, model_kwargs: dict | None = None
) -> tuple[Path, Path]:
    """Write ``path``.safetensors and ``path``.json for a compacted (or masked, then compacted) timm ViT."""
    vit = check_vit(model)
    if any(parametrize.is_parametrized(m, "weight") for m in prunable_linears(vit).values()):
        compact(vit)
    arch = arch or (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise ValueError("cannot tell the timm architecture of this model; pass arch='vit_small_patch16_224' or so")
    pe = vit.patch_embed
    kwargs = dict(
        img_size=list(pe.img_size),
        patch_size=list(pe.patch_size),
        in_chans=pe.proj.in_channels,
        num_classes=vit.num_classes,
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        qkv_bias=vit.blocks[0].attn.qkv.bias is not None,
    )
    hd = vit.blocks[0].attn.head_dim
    if vit.embed_dim % hd == 0:  # a dense head count that builds; resize_blocks then sets the real ones
        kwargs["num_heads"] = vit.embed_dim // hd
    kwargs.update(model_kwargs or {})
    widths = [
        {"num_heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "mlp_hidden": b.mlp.fc1.out_features}
        for b in vit.blocks
    ]
    weights, meta = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in vit.state_dict().items()}
    save_file(state, str(weights), metadata={"format": FORMAT})
    meta.write_text(json.dumps({"format": FORMAT, "arch": arch, "kwargs": kwargs, "widths": widths}, indent=1))
    return weights, meta


def resize_blocks(model: nn.Module, widths: list[dict]) -> nn.Module:
    """Give each block of a timm ViT ``num_heads`` x ``head_dim`` attention and an MLP of ``mlp_hidden`` (in place).

    New layers are freshly initialised; load a checkpoint afterwards.
    """
    vit = check_vit(model)
    if len(widths) != len(vit.blocks):
        raise ValueError(f"{len(widths)} block widths for a model with {len(vit.blocks)} blocks")
    dim = vit.embed_dim
    for blk, w in zip(vit.blocks, widths):
        a, k, hd, h = blk.attn, int(w["num_heads"]), int(w["head_dim"]), int(w["mlp_hidden"])
        a.qkv = nn.Linear(dim, 3 * k * hd, bias=a.qkv.bias is not None)
        a.proj = nn.Linear(k * hd, a.proj.out_features, bias=a.proj.bias is not None)
        a.num_heads, a.head_dim, a.attn_dim, a.scale = k, hd, k * hd, hd**-0.5
        m = blk.mlp
        m.fc1 = nn.Linear(m.fc1.in_features, h, bias=m.fc1.bias is not None)
        m.fc2 = nn.Linear(h, m.fc2.out_features, bias=m.fc2.bias is not None)
    return model


def load_pruned(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (``path`` with or without suffix); returns it in eval mode."""
    weights, meta_path = _paths(path)
    for p in (weights, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found; save_pruned writes both {weights.name} and {meta_path.name}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a vizoo pruned-ViT description (format {meta.get('format')!r})")
    model = timm.create_model(meta["arch"], pretrained=False, **meta["kwargs"])
    resize_blocks(model, meta["widths"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.to(device).eval()
