"""The ``vizoo clip-train`` command: argument parsing and exit codes (the training is :func:`train_clip`'s)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from vizoo.train.checkpoint import CheckpointError

__all__ = ["add_clip_train_parser", "config_from_args", "run_clip_train"]

EPILOG = """examples:
  vizoo clip-train --train-csv data/train.csv --val-csv data/val.csv --model vmamba_tiny_s1l8 --text base \\
      --epochs 10 --batch-size 256 --amp bf16 --output runs/clip
  torchrun --nproc_per_node 8 -m vizoo clip-train --train-csv data/train.csv --model vmamba_tiny_s1l8 \\
      --batch-size 128 --amp bf16 --output runs/clip
  vizoo clip-train ... --output runs/clip --resume auto      # continue after a crash, exactly
  vizoo clip-train ... --image-checkpoint runs/cls/model.safetensors --lock-image   # LiT on a `vizoo train` tower
"""


def _defaults():
    from vizoo.multimodal.train import ClipTrainConfig

    return ClipTrainConfig()


def add_clip_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``clip-train`` to an argparse subparsers object (``vizoo clip-train``); dispatch with
    :func:`run_clip_train`."""
    from vizoo.multimodal.clip import LOSSES, TEXT_PRESETS

    c = _defaults()
    p = subparsers.add_parser(
        "clip-train",
        help="train a CLIP / SigLIP with a vizoo image tower on a CSV of images and captions (DDP, exact resume, LiT)",
        description="Train open_clip's CLIP with a vizoo image tower on a CSV of image paths and captions. Missing "
        "or unreadable images are skipped and counted.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--train-csv", required=True, help="CSV of image paths (absolute or relative to it) and captions")
    g.add_argument("--val-csv", help="CSV for retrieval recall@1/5 (and zero-shot with --label-column) per epoch")
    g.add_argument("--image-column", default=c.image_column, help=f"image path column (default {c.image_column})")
    g.add_argument("--caption-column", default=c.caption_column, help=f"caption column (default {c.caption_column})")
    g.add_argument("--label-column", help="class-name column of the val CSV: adds zero-shot top-1/top-5")
    g.add_argument(
        "--zero-shot-templates",
        nargs="+",
        default=list(c.zero_shot_templates),
        metavar="TEMPLATE",
        help="zero-shot prompts with {} for the class name (default: 'a photo of a {}.')",
    )
    g.add_argument("--csv-separator", default=c.csv_separator, help="column separator (default ',')")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=c.model, help=f"vizoo image tower (default {c.model})")
    g.add_argument("--text", choices=sorted(TEXT_PRESETS), default=c.text, help=f"text tower (default {c.text})")
    g.add_argument("--embed-dim", type=int, default=c.embed_dim, help=f"joint embedding width (default {c.embed_dim})")
    g.add_argument("--image-size", type=int, help="square input side (default: the tower's)")
    g.add_argument("--loss", choices=LOSSES, default=c.loss, help=f"contrastive loss (default {c.loss})")
    g = p.add_argument_group("LiT: a pretrained, locked image tower")
    g.add_argument(
        "--image-checkpoint",
        help="tower weights loaded strictly: a `vizoo train` output folder, its model.safetensors, a checkpoint "
        "folder, or any backbone weights file",
    )
    g.add_argument("--lock-image", action="store_true", help="freeze the image tower (its projection still trains)")
    g.add_argument("--unlocked-groups", type=int, default=0, help="with --lock-image: last layer groups left to train")
    g = p.add_argument_group("schedule and optimiser")
    g.add_argument("--epochs", type=int, default=c.epochs)
    g.add_argument("--steps", type=int, help="total optimiser steps (default: epochs x steps per epoch)")
    g.add_argument("--batch-size", "-b", type=int, default=c.batch_size, help="batch size per process")
    g.add_argument("--lr", type=float, default=c.lr, help=f"peak AdamW learning rate (default {c.lr})")
    g.add_argument("--min-lr", type=float, default=c.min_lr, help="cosine schedule floor")
    g.add_argument("--warmup-steps", type=int, default=c.warmup_steps)
    g.add_argument("--weight-decay", type=float, default=c.weight_decay)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (default: off)")
    g = p.add_argument_group("performance and bookkeeping")
    g.add_argument("--amp", choices=["bf16", "fp16", "none"], default="none", help="mixed precision (fp16: CUDA)")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--workers", "-j", type=int, default=c.workers, help="data loader processes per training process")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)")
    g.add_argument("--output", default=c.output, help=f"run folder (default {c.output})")
    g.add_argument("--resume", help="checkpoint folder to resume from, or 'auto' (newest in --output)")
    g.add_argument("--seed", type=int, default=c.seed)
    g.add_argument("--checkpoint-every", type=int, default=c.checkpoint_every, help="also checkpoint every N steps")
    g.add_argument("--checkpoint-keep", type=int, default=c.checkpoint_keep, help="keep the newest N checkpoints")
    g.add_argument("--eval-every", type=int, default=c.eval_every, help="evaluate every N epochs (default 1)")
    g.add_argument("--log-every", type=int, default=c.log_every, help="steps between lines of steps.jsonl")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_clip_train)
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~vizoo.multimodal.train.ClipTrainConfig` of parsed ``clip-train`` arguments."""
    from vizoo.multimodal.train import ClipTrainConfig

    fields = {f.name for f in dataclasses.fields(ClipTrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["amp"] = None if values["amp"] == "none" else values["amp"]
    values["zero_shot_templates"] = tuple(values["zero_shot_templates"])
    return ClipTrainConfig(**values)


def run_clip_train(args: argparse.Namespace) -> int:
    """Train from parsed arguments. 0: done; 2: bad input (message on stderr); 1: checkpoint problem."""
    from vizoo.multimodal.train import train_clip

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = train_clip(config_from_args(args))
    except CheckpointError as e:
        print(f"clip-train: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FloatingPointError) as e:
        print(f"clip-train: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        last = result.metrics[-1] if result.metrics else {}
        shown = {k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, float)}
        if shown:
            print("final: " + "  ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in shown.items()))
        print(f"skipped images: {result.skipped_images}")
        print(f"outputs in {result.output} (open_clip folder: {result.output / 'clip'})")
    return 0
