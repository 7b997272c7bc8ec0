"""``vizoo prune``: block-prune a timm ViT on calibration images, compact it, save it, optionally export to ONNX.

``vizoo/cli.py`` adds it with ``add_prune_parser``; the parser's ``func`` is :func:`run_prune`, which returns an exit
code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import timm
from timm.utils import random_seed

from vizoo.utils.checkpoint import CheckpointError, read_state_dict
from vizoo.utils.complexity import count_macs, count_params

from .block import block_prune, check_vit, compact
from .io import save_pruned

__all__ = ["add_prune_parser", "run_prune"]


def add_prune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prune`` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("prune", help="block-prune a timm ViT/DeiT, compact it to smaller dense layers, save it")
    p.add_argument("model", help="timm ViT/DeiT name, e.g. deit_small_patch16_224")
    p.add_argument("--checkpoint", help="local weights for the model (timm pretrained_cfg_overlay file)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of qkv/proj/fc1/fc2 weights to remove")
    p.add_argument("--block", type=int, nargs=2, default=(32, 32), metavar=("ROWS", "COLS"), help="tile size")
    p.add_argument("--calib", default="photos", help="'photos' (scikit-image samples) or a folder of images")
    p.add_argument("--calib-count", type=int, default=8, help="number of scikit-image photos to calibrate on")
    p.add_argument("--latency-weight", type=float, default=1.0, help="0: score per weight, 1: score per ms saved")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init used without --checkpoint")
    p.add_argument("--output", required=True, help="path stem; writes STEM.safetensors and STEM.json")
    p.add_argument("--onnx", action="store_true", help="also export STEM.onnx and check it in onnxruntime")
    p.set_defaults(func=run_prune)
    return p


def run_prune(args: argparse.Namespace) -> int:
    """Run ``vizoo prune``; prints a summary and returns 0, or 1/2 with a message on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not timm.is_model(args.model):
        print(f"vizoo: error: unknown model {args.model!r}; run `vizoo list` or pick a timm ViT", file=sys.stderr)
        return 2
    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    random_seed(args.seed)
    try:
        model = _build(args.model, args.checkpoint, **kwargs)
        check_vit(model)
        images = _calibration_images(model, args.calib, args.calib_count)
        size = tuple(images.shape[1:])
        dense_params, dense_macs = count_params(model), count_macs(model, size)
        block_prune(model, args.sparsity, images.split(4), block=tuple(args.block), latency_weight=args.latency_weight)
    except (TypeError, ValueError) as e:  # a bad checkpoint, not a plain ViT, no images, a bad sparsity or tile
        print(f"vizoo: error: {e}", file=sys.stderr)
        return 2
    compact(model)
    weights, meta = save_pruned(model, args.output, arch=args.model)
    params, macs = count_params(model), count_macs(model, size)
    print(f"sparsity {model.pruning_report['sparsity']:.3f}  heads {model.pruning_report['heads']}")
    print(f"params {dense_params / 1e6:.2f} M -> {params / 1e6:.2f} M ({params / dense_params:.2f}x)")
    print(f"GMACs  {dense_macs / 1e9:.3f} -> {macs / 1e9:.3f} ({macs / dense_macs:.2f}x)")
    print(f"saved {weights} and {meta}")
    if args.onnx:
        from vizoo.export import export_onnx

        result = export_onnx(model, Path(args.output).with_suffix(".onnx"), img_size=size[1:])
        print(f"ONNX {result.path}: {result.nodes} nodes, onnxruntime max |diff| {result.max_abs_diff:.2e}")
    return 0


def _build(name: str, checkpoint: str | None, **kwargs):
    """The timm model ``name`` in eval mode, with the weights in ``checkpoint`` (through timm's loader and the model's
    checkpoint filter) or a seeded random init; ``CheckpointError`` for a missing, corrupt or mismatched file."""
    if checkpoint is None:
        return timm.create_model(name, **kwargs).eval()
    read_state_dict(checkpoint)  # says what is wrong with a missing or unreadable file
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint), **kwargs).eval()
    except RuntimeError as e:  # load_state_dict: missing or unexpected keys, shapes that differ
        lines = str(e).strip().splitlines()
        shown = "\n".join(lines[:6] + ([f"... ({len(lines) - 6} more lines)"] if len(lines) > 6 else []))
        raise CheckpointError(
            f"checkpoint {checkpoint!r} does not fit {name}:\n{shown}\nIs it a checkpoint of this variant? Pick the "
            "matching model name."
        ) from e


def _calibration_images(model, calib: str, count: int):
    """The calibration batch at the ViT's input size: ``count`` scikit-image photos, or every image in a folder."""
    from vizoo.data import image_folder, photo_batch

    size, cfg = (3, *model.patch_embed.img_size), model.pretrained_cfg
    if calib == "photos":
        return photo_batch(size, mean=cfg.get("mean"), std=cfg.get("std"), count=count)
    return image_folder(calib, size, mean=cfg.get("mean"), std=cfg.get("std"))
