"""Fine-tuning of vizoo's detectors and segmentors: AdamW, warmup + cosine, bf16 autocast, progress bars,
checkpoints and COCO mAP / mIoU evaluation.

:func:`finetune_detector` trains a :class:`vizoo.heads.Detector` on a :class:`vizoo.data.detection.CocoDetection`;
:func:`finetune_segmentor` a :class:`vizoo.heads.Segmentor` on a :class:`vizoo.data.segmentation.SegmentationFolder`.
Checkpoints go through :mod:`vizoo.train.checkpoint` (safetensors weights plus training state, written to a temporary
folder then renamed): one at the end of each epoch under ``output_dir/checkpoints``; ``resume`` continues from one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint

_logger = logging.getLogger(__name__)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "add_finetune_arguments",
    "finetune_argument_error",
    "finetune_detector",
    "finetune_segmentor",
    "load_finetuned",
]


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run. ``amp`` runs forward passes under bf16 autocast (CPU or GPU)."""

    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    grad_clip: float | None = 10.0
    amp: bool = False
    device: str = "cpu"
    num_workers: int = 0
    seed: int = 0
    output_dir: str | None = None
    keep: int = 2
    progress: bool = True
    eval_every: int = 0  # epochs between evaluations; 0: only at the end

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FinetuneConfig:
        """The settings given by the options of ``add_finetune_arguments``."""
        return cls(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            amp=args.amp,
            device=args.device,
            num_workers=args.workers,
            output_dir=args.output,
        )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options of the fine-tuning commands (``vizoo finetune det|seg``), with ``FinetuneConfig``'s
    defaults; read them back with ``FinetuneConfig.from_args`` and check them with ``finetune_argument_error``."""
    defaults = FinetuneConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--workers", type=int, default=defaults.num_workers)
    parser.add_argument("--output", help="checkpoint folder (OUTPUT/checkpoints/step-N)")
    parser.add_argument("--resume", help="a checkpoint folder to continue from")
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help="then export the fine-tuned model to ONNX (a detector with its NMS) at --img-size, with parity checked",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="with --onnx: weights and activations in float16 (a detector's post-processing stays float32)",
    )


def finetune_argument_error(args: argparse.Namespace) -> str | None:
    """The usage error of the options of ``add_finetune_arguments`` taken together (one needs another), or None."""
    if args.fp16 and not args.onnx:
        return "--fp16 is an option of the ONNX export: give --onnx FILE too"
    return None


def export_finetuned(
    model: torch.nn.Module, path: str | os.PathLike, img_size: int | tuple[int, int], fp16: bool = False
) -> float:
    """Export a fine-tuned detector or segmentor to ONNX (dynamic batch; a detector with its post-processing, see
    ``vizoo.export.graph_module``; float16 with ``fp16``), print where, and return onnxruntime's max abs difference
    from PyTorch on photos."""
    from vizoo.export import export_onnx

    result = export_onnx(model.cpu().eval(), path, img_size=img_size, fp16=fp16)
    print(f"onnx: {result.path} ({result.nodes} nodes), onnxruntime vs PyTorch max abs diff {result.max_abs_diff:.1e}")
    return result.max_abs_diff


def load_finetuned(path: str | os.PathLike) -> torch.nn.Module:
    """The detector or segmentor of a fine-tuning checkpoint folder (or its ``last`` file), in eval mode: rebuilt
    from the ``create_detector`` / ``create_segmentor`` arguments the checkpoint keeps, with its weights."""
    from vizoo.heads import create_detector, create_segmentor

    ckpt = load_checkpoint(path)
    architecture = dict(ckpt.state.get("architecture") or {})
    builder = {"detector": create_detector, "segmentor": create_segmentor}.get(architecture.pop("builder", None))
    if builder is None:
        raise CheckpointError(
            f"checkpoint {str(ckpt.path)!r} keeps no architecture: it was not saved by finetune_detector or "
            "finetune_segmentor from a model built by create_detector or create_segmentor with a backbone name. "
            "Build the model as it was trained and load the checkpoint's model.safetensors into it."
        )
    model = builder(**architecture)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: its weights do not fit its architecture ({e})") from e
    return model.eval()


@dataclass
class FinetuneResult:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    metrics: dict = field(default_factory=dict)  # final evaluation
    history: list[dict] = field(default_factory=list)  # evaluations during training, with their epoch
    checkpoint: Path | None = None


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _fit(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: Callable[[torch.nn.Module, object], dict[str, torch.Tensor]],
    evaluate: Callable[[], dict],
    config: FinetuneConfig,
    resume: str | os.PathLike | None,
) -> FinetuneResult:
    from timm.optim import create_optimizer_v2
    from tqdm.auto import tqdm

    device = torch.device(config.device)
    model.to(device)
    optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, total))
    result = FinetuneResult()
    start_epoch = 0
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
        restore_rng(ckpt.state["rng"])
        start_epoch = ckpt.state["epoch"] + 1
        result.losses = list(ckpt.state.get("losses", []))
        result.history = list(ckpt.state.get("history", []))
        _logger.info("resumed from %s at epoch %d", ckpt.path, start_epoch)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        running, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, leave=False)
        for batch in bar:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                losses = loss_fn(model, batch)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch + 1} ({ {k: float(v) for k, v in losses.items()} }); "
                    "lower the learning rate or turn off amp"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            running += float(loss)
            count += 1
            bar.set_postfix(loss=f"{running / count:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        result.losses.append(running / max(count, 1))
        _logger.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, result.losses[-1])
        if config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch + 1 < config.epochs:
            result.history.append({"epoch": epoch + 1, **evaluate()})
        if config.output_dir:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "losses": result.losses,
                "history": result.history,
                "rng": capture_rng(),
                "config": dataclasses.asdict(config),
                "architecture": getattr(model, "architecture", None),
            }
            result.checkpoint = save_checkpoint(
                Path(config.output_dir) / "checkpoints", epoch + 1, model.state_dict(), state, keep=config.keep
            )
    result.metrics = evaluate()
    result.history.append({"epoch": config.epochs, **result.metrics})
    return result


def _loader(dataset, config: FinetuneConfig, collate_fn=None) -> DataLoader:
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(dataset) > config.batch_size,
        num_workers=config.num_workers,
        collate_fn=collate_fn,
        generator=generator,
    )


def finetune_detector(
    model: torch.nn.Module,
    train_set,
    val_set,
    config: FinetuneConfig | None = None,
    resume: str | os.PathLike | None = None,
) -> FinetuneResult:
    """Train ``model`` (a :class:`vizoo.heads.Detector`) on ``train_set`` and report COCO box mAP on ``val_set``.

    Datasets yield (image (3, H, W), target) as :class:`vizoo.data.detection.CocoDetection` does; ``metrics`` has
    "map", "map50", "map75" (pycocotools COCOeval).
    """
    from vizoo.data.detection import collate_detection
    from vizoo.eval import coco_map

    config = config or FinetuneConfig()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)

    def loss_fn(m, batch):
        images, targets = batch
        return m.loss(images.to(device), targets)

    return _fit(
        model,
        _loader(train_set, config, collate_detection),
        loss_fn,
        lambda: coco_map(model, val_set, config.batch_size, device),
        config,
        resume,
    )


def finetune_segmentor(
    model: torch.nn.Module,
    train_set,
    val_set,
    num_classes: int,
    config: FinetuneConfig | None = None,
    ignore_index: int = 255,
    resume: str | os.PathLike | None = None,
) -> FinetuneResult:
    """Train ``model`` ((B, 3, H, W) -> (B, K, H, W) logits) with pixel cross-entropy; report mIoU on ``val_set``.

    Datasets yield (image (3, H, W), mask (H, W) int64) as :class:`vizoo.data.segmentation.SegmentationFolder` does.
    """
    from vizoo.eval import segmentation_miou

    config = config or FinetuneConfig()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)

    def loss_fn(m, batch):
        images, masks = batch
        logits = m(images.to(device))
        return {"loss_ce": F.cross_entropy(logits.float(), masks.to(device), ignore_index=ignore_index)}

    return _fit(
        model,
        _loader(train_set, config),
        loss_fn,
        lambda: segmentation_miou(model, val_set, num_classes, config.batch_size, ignore_index, device),
        config,
        resume,
    )
