"""The ``vizoo train`` command: argument parsing and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .checkpoint import CheckpointError
from .config import add_train_arguments, config_from_args

__all__ = ["add_train_parser", "run_train"]

EPILOG = """examples:
  vizoo train --config configs/cls/vmamba.yaml --model vmamba_tiny_s1l8 --data-dir /data/imagenet
  torchrun --nproc_per_node 8 -m vizoo train -c configs/cls/vmamba.yaml --model vmamba_tiny_s1l8 \\
      --data-dir /data/imagenet --amp bf16 --output runs/tiny
  vizoo train ... --output runs/tiny --resume auto     # continue after a crash, exactly
"""


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse subparsers object (``vizoo train``); dispatch with :func:`run_train`."""
    p = subparsers.add_parser(
        "train",
        help="train an image classifier (ImageNet recipes, DDP, exact resume)",
        description="Train an image classifier on ImageNet-layout folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run training from parsed arguments. 0: done; 2: bad input (message on stderr); 1: checkpoint problem."""
    from .classification import train

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = config_from_args(args)
        result = train(cfg)
    except CheckpointError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FloatingPointError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    if rank == 0 and result.metrics:
        last = result.metrics[-1]
        if "top1" in last:
            print(
                f"final: val top-1 {last['top1']:.2f}%  top-5 {last['top5']:.2f}%"
                + (f"  (EMA top-1 {last['ema_top1']:.2f}%)" if "ema_top1" in last else "")
            )
        print(f"outputs in {result.output}")
    return 0
