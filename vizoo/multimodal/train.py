"""CLIP / SigLIP training of open_clip models with vizoo image towers, on a CSV of image paths and captions.

:func:`train_clip` runs a :class:`ClipTrainConfig` (``vizoo clip-train`` builds one from its flags):

- data: a CSV with an image-path column and a caption column (names and separator configurable; paths absolute or
  relative to the CSV's folder). Rows whose image file is missing, or whose path or caption is empty, are dropped
  and counted before training; an image that cannot be decoded is skipped when it is met (its pair is replaced by
  the next readable pair, so batch shapes stay the same) and counted. The counts go to the log, to every metrics row
  and to the result; one bad image never stops a run. A CSV without the columns, or without a single usable row,
  is an error that says what to fix.
- model: :func:`~vizoo.multimodal.create_clip` (open_clip's CLIP with a vizoo tower), open_clip's ``ClipLoss`` or
  ``SigLipLoss``, its train transform (augmentation reseeded per sample from ``(seed, epoch, index)``);
- LiT (Zhai et al., arXiv 2111.07991): ``lock_image`` freezes the tower (:func:`~vizoo.multimodal.lock_image_tower`,
  the projection and the text side train) after ``image_checkpoint`` (a ``vizoo train`` output) is loaded into it
  strictly (:func:`~vizoo.multimodal.load_backbone`); a fully locked trunk runs in eval mode, as in the paper;
- the pieces of ``vizoo train`` (:mod:`vizoo.train`): torchrun's process group (gloo on CPU, nccl on CUDA), the
  resumable per-rank sampler, atomic checkpoints with every RNG state, ``--resume`` that repeats the uninterrupted run
  step for step, jsonl/CSV logs and the tqdm bar. Under several processes each rank's features are gathered with
  their gradients and each rank takes the loss of its own rows against the global batch (open_clip's
  ``local_loss`` + ``gather_with_grad``), so N processes of batch B train as one of batch N * B;
- AMP: bf16 autocast (CPU or CUDA) or fp16 with a gradient scaler (CUDA); the model stays fp32;
- evaluation on a val CSV at each epoch end (rank 0): image-text retrieval recall@1/5 (the captions of rows with the
  same image are that image's captions) and, with ``label_column``, zero-shot top-1/top-5 over the column's classes.

Outputs in ``cfg.output``: ``config.json``, ``steps.jsonl`` (loss, lr and logit scale per logged step),
``metrics.jsonl`` and ``metrics.csv`` (per epoch), ``checkpoints/``, and at the end the model as an open_clip
``local-dir:`` folder ``clip/`` (:func:`~vizoo.multimodal.save_clip`) and its trunk as ``trunk.safetensors``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vizoo.multimodal.clip import (
    LOSSES,
    create_clip,
    create_loss,
    load_backbone,
    lock_image_tower,
    resolve_model,
    save_clip,
)
from vizoo.multimodal.clip import save_trunk as _save_trunk
from vizoo.multimodal.evaluate import evaluate_retrieval, evaluate_zero_shot
from vizoo.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
)
from vizoo.train.data import ResumableSampler, sample_seed
from vizoo.train.loop import TrainingRun
from vizoo.train.runtime import DistInfo, setup_distributed

__all__ = [
    "ClipTrainConfig",
    "ClipTrainResult",
    "ImageTextCsv",
    "ImageTextCsvDataset",
    "read_image_text_csv",
    "train_clip",
]

_logger = logging.getLogger(__name__)

# The most unreadable images in a row a sample may skip over before the run stops (the data is broken, not one file).
_MAX_CONSECUTIVE_BAD = 64


@dataclass
class ClipTrainConfig:
    """Settings of one CLIP training run (the flags of ``vizoo clip-train``, with ``-`` for ``_``)."""

    # data
    train_csv: str = ""
    val_csv: str | None = None
    image_column: str = "filepath"
    caption_column: str = "caption"
    label_column: str | None = None  # a class-name column of the val CSV: adds zero-shot top-1/top-5
    zero_shot_templates: tuple[str, ...] = ("a photo of a {}.",)
    csv_separator: str = ","
    # model
    model: str = "vmamba_tiny_s1l8"
    text: str = "base"  # a TEXT_PRESETS name
    embed_dim: int = 512
    image_size: int | None = None  # None: the backbone's input size
    loss: str = "clip"
    # LiT
    image_checkpoint: str | None = None
    lock_image: bool = False
    unlocked_groups: int = 0
    # schedule and optimiser (open_clip's defaults for AdamW)
    epochs: int = 1
    steps: int | None = None  # total optimiser steps (default: epochs x steps per epoch)
    batch_size: int = 64  # per process
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.2
    opt_betas: tuple[float, float] = (0.9, 0.98)
    opt_eps: float = 1e-6
    clip_grad: float | None = None
    # performance
    amp: str | None = None  # "bf16" or "fp16"
    grad_checkpointing: bool = False
    workers: int = 4
    device: str | None = None  # None: cuda:LOCAL_RANK when CUDA is available, else cpu
    # bookkeeping
    output: str = "outputs/clip"
    resume: str | None = None  # a checkpoint folder, or "auto"
    seed: int = 0
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at the end of each epoch only)
    checkpoint_keep: int = 3
    eval_every: int = 1  # epochs
    log_every: int = 1
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ClipTrainResult:
    """What :func:`train_clip` returns (on every rank; files are written by rank 0)."""

    output: Path
    model: nn.Module
    tokenizer: Callable
    global_step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)  # per epoch, this invocation's epochs only
    skipped_images: int = 0  # training rows dropped or skipped: missing, empty or unreadable (over all ranks)


# --- data ------------------------------------------------------------------------------------------------------------


@dataclass
class ImageTextCsv:
    """The usable rows of an image-text CSV. ``paths``: resolved image files; ``rows``: each pair's 1-based line in
    the CSV (the header is line 1); ``labels``: the label column's values (None without one). ``dropped``: rows left
    out, ``(line, reason)``."""

    csv: Path
    paths: list[str]
    captions: list[str]
    rows: list[int]
    labels: list[str] | None
    dropped: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.paths)


def read_image_text_csv(
    path: str | os.PathLike,
    image_column: str = "filepath",
    caption_column: str = "caption",
    label_column: str | None = None,
    separator: str = ",",
) -> ImageTextCsv:
    """Read an image-text CSV: image paths (absolute, or relative to the CSV's folder) and captions.

    Rows with an empty path or caption (or label), or whose image file does not exist, are dropped and listed in
    ``dropped``. Raises ValueError when the file is missing, lacks a column, or has no usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {str(path)!r} does not exist; pass a CSV with an image-path and a caption column")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=separator)
        columns = reader.fieldnames or []
        wanted = [c for c in (image_column, caption_column, label_column) if c is not None]
        absent = [c for c in wanted if c not in columns]
        if absent:
            flags = {image_column: "--image-column", caption_column: "--caption-column", label_column: "--label-column"}
            raise ValueError(
                f"{str(path)!r} has no column(s) {', '.join(map(repr, absent))} (its columns, split at "
                f"{separator!r}: {', '.join(map(repr, columns)) or 'none'}); name the right ones with "
                f"{', '.join(flags[c] for c in absent)}, or set --csv-separator (e.g. $'\\t' for a TSV)"
            )
        rows = list(reader)
    out = ImageTextCsv(path, [], [], [], [] if label_column else None, [])
    for line, row in enumerate(rows, start=2):
        image, caption = (row.get(image_column) or "").strip(), (row.get(caption_column) or "").strip()
        label = (row.get(label_column) or "").strip() if label_column else None
        if not image or not caption or (label_column and not label):
            out.dropped.append((line, "empty image path, caption or label"))
            continue
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        if not file.is_file():
            out.dropped.append((line, f"no file {str(file)!r}"))
            continue
        out.paths.append(str(file))
        out.captions.append(caption)
        out.rows.append(line)
        if out.labels is not None:
            out.labels.append(label)
    if not out.paths:
        examples = "; ".join(f"line {line}: {why}" for line, why in out.dropped[:3])
        raise ValueError(
            f"{str(path)!r} has no usable row ({len(rows)} row(s): {examples or 'the file has a header only'}); image "
            "paths must be absolute or relative to the CSV's folder, and captions non-empty"
        )
    return out


def _log_dropped(table: ImageTextCsv) -> None:
    if table.dropped:
        shown = "; ".join(f"line {line}: {why}" for line, why in table.dropped[:5])
        _logger.warning(
            "%s: skipped %d of %d rows (%s%s)",
            table.csv,
            len(table.dropped),
            len(table.dropped) + len(table),
            shown,
            " ..." if len(table.dropped) > 5 else "",
        )


def _open_rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


class ImageTextCsvDataset(Dataset):
    """``(image (3, H, W), tokens (context_length,), unreadable CSV lines)`` of an :class:`ImageTextCsv`.

    Indices are ints or ``(index, epoch)`` pairs (:class:`~vizoo.train.data.ResumableSampler`'s); the transform runs
    under a torch RNG seeded from ``(seed, epoch, index)``, so augmentation does not depend on loader workers or on
    where a run resumed. An image that cannot be decoded is logged and replaced, with its caption, by the next
    readable pair; the CSV lines of the images skipped so are returned, for the trainer to count.
    """

    def __init__(self, table: ImageTextCsv, transform: Callable, tokenizer: Callable, seed: int = 0):
        self.table, self.transform, self.tokenizer, self.seed = table, transform, tokenizer, seed

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        n, bad = len(self.table), []
        for attempt in range(min(n, _MAX_CONSECUTIVE_BAD)):
            i = (index + attempt) % n
            try:
                image = _open_rgb(self.table.paths[i])
            except Exception as e:  # PIL raises several types for truncated or non-image files
                bad.append(self.table.rows[i])
                _logger.warning("skipping unreadable image %s (CSV line %d): %s", self.table.paths[i], bad[-1], e)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                pixels = self.transform(image)
            return pixels, self.tokenizer([self.table.captions[i]])[0], bad
        raise RuntimeError(
            f"{len(bad)} consecutive images of {str(self.table.csv)!r} from line {self.table.rows[index]} on could not "
            "be read; check the image files"
        )


def _collate(batch):
    images, tokens, bad = zip(*batch)
    return torch.stack(images), torch.stack(tokens), [line for lines in bad for line in lines]


class _ValImages(Dataset):
    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(_open_rgb(self.paths[i]))


@dataclass
class _ValSet:
    """A val CSV for evaluation: its distinct readable images, each one's captions (and class index)."""

    loader: DataLoader
    captions: list[list[str]]
    labels: torch.Tensor | None
    classnames: list[str] | None
    skipped: int


def _build_val(cfg: ClipTrainConfig, transform: Callable) -> _ValSet:
    table = read_image_text_csv(cfg.val_csv, cfg.image_column, cfg.caption_column, cfg.label_column, cfg.csv_separator)
    _log_dropped(table)
    order: dict[str, int] = {}
    captions: list[list[str]] = []
    labels: list[str] = []
    unreadable: set[str] = set()
    for i, (file, caption) in enumerate(zip(table.paths, table.captions)):
        if file in unreadable:
            continue
        if file not in order:
            try:
                _open_rgb(file)
            except Exception as e:
                unreadable.add(file)
                _logger.warning("val: skipping unreadable image %s (CSV line %d): %s", file, table.rows[i], e)
                continue
            order[file] = len(order)
            captions.append([])
            labels.append(table.labels[i] if table.labels is not None else "")
        captions[order[file]].append(caption)
    if not order:
        raise ValueError(f"no image of the val CSV {str(cfg.val_csv)!r} can be read; check the image files")
    classnames = sorted(set(labels)) if table.labels is not None else None
    label_ids = torch.tensor([classnames.index(v) for v in labels]) if classnames else None
    loader = DataLoader(_ValImages(list(order), transform), batch_size=cfg.batch_size, num_workers=cfg.workers)
    skipped = len(table.dropped) + sum(1 for i, f in enumerate(table.paths) if f in unreadable)
    return _ValSet(loader, captions, label_ids, classnames, skipped)


# --- the run ---------------------------------------------------------------------------------------------------------


def _check_config(cfg: ClipTrainConfig) -> None:
    if not cfg.train_csv:
        raise ValueError("no training CSV given; pass --train-csv with an image-path and a caption column")
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.amp not in (None, "bf16", "fp16"):
        raise ValueError(f"--amp must be bf16, fp16 or none, got {cfg.amp!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or (cfg.steps is not None and cfg.steps < 1):
        raise ValueError(
            f"--epochs, --steps and --batch-size must be >= 1, got {cfg.epochs}, {cfg.steps} and {cfg.batch_size}"
        )
    if cfg.lock_image and not cfg.image_checkpoint:
        raise ValueError(
            "--lock-image freezes the image tower, which would stay random: pass --image-checkpoint with a pretrained "
            "tower (e.g. the model.safetensors of a `vizoo train` run)"
        )
    if cfg.unlocked_groups and not cfg.lock_image:
        raise ValueError("--unlocked-groups applies to a locked tower: add --lock-image")
    if cfg.label_column and not cfg.val_csv:
        raise ValueError("--label-column names a column of the val CSV for zero-shot evaluation: add --val-csv")
    for template in cfg.zero_shot_templates:
        if template.format("a") == template.format("b"):
            raise ValueError(f"zero-shot template {template!r} has no {{}} for the class name")


def _image_checkpoint(path: str, model_name: str) -> dict[str, torch.Tensor] | str:
    """The tower weights of ``path``: a ``vizoo train`` output folder (its ``model.safetensors``), a training
    checkpoint folder or its ``last`` file (verified), or a weights file. Raises ValueError when the checkpoint
    records another model."""
    p = Path(path)
    if p.is_dir() and not (p / "state.pt").is_file():
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(
                f"--image-checkpoint {path!r} is a folder without model.safetensors or state.pt; pass a `vizoo train` "
                "output folder, one of its checkpoints/step-* folders, or a weights file"
            )
        p = p / "model.safetensors"
    if p.is_dir() or p.name == "last":
        ckpt = load_checkpoint(p)
        trained, weights = ckpt.state.get("model_name"), ckpt.model
    elif not p.is_file():
        raise CheckpointError(f"--image-checkpoint {path!r} does not exist")
    else:
        trained, weights = None, str(p)
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), "pt") as f:
                trained = (f.metadata() or {}).get("model")
    if trained and trained != model_name:
        raise ValueError(
            f"--image-checkpoint {path!r} holds a {trained!r} tower but --model is {model_name!r}; pass "
            f"--model {trained}"
        )
    return weights


@dataclass(kw_only=True)
class _Run(TrainingRun):
    """One CLIP run on the shared loop (:class:`~vizoo.train.loop.TrainingRun`): ``module`` is the unwrapped CLIP,
    which ``total_steps`` train (the last epoch may end early)."""

    cfg: ClipTrainConfig
    tokenizer: Callable
    train_table: ImageTextCsv
    val: _ValSet | None
    total_steps: int
    unreadable: set[int] = field(default_factory=set)  # CSV lines found unreadable (this rank, and all after a resume)

    NON_FINITE_HINT = "lower --lr, add --warmup-steps, or use --amp bf16"

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_steps(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def train_mode(self) -> None:
        """Train mode, but a fully locked trunk infers (LiT runs the frozen tower as at test time)."""
        self.model.train()
        if self.cfg.lock_image and self.cfg.unlocked_groups == 0:
            self.module.visual.trunk.eval()

    def train_step(self, batch: tuple, epoch: int, i: int) -> float:
        """One optimiser step (AMP, gradient clipping), the logit-scale clamp and the schedule's step; the batch's
        unreadable rows are noted."""
        images, tokens, unreadable = batch
        self.unreadable.update(unreadable)
        device = self.d.device
        images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(*self.model(images, tokens))
        value = self.optimizer_step(loss, epoch, i)
        with torch.no_grad():  # CLIP's cap on the temperature: a logit scale of at most 100
            self.module.logit_scale.clamp_(0, math.log(100))
        self.scheduler.step_update(num_updates=self.global_step)
        return value

    def step_row(self) -> dict[str, Any]:
        return {"logit_scale": self.module.logit_scale.exp().item()}

    def check_resume(self, ckpt: Checkpoint) -> None:
        st, cfg = ckpt.state, self.cfg
        if st.get("model_name") != cfg.model or st.get("text") != cfg.text or st.get("loss") != cfg.loss:
            raise ValueError(
                f"checkpoint {str(ckpt.path)!r} holds a {st.get('model_name')!r} CLIP (text {st.get('text')!r}, loss "
                f"{st.get('loss')!r}); pass --model {st.get('model_name')} --text {st.get('text')} --loss "
                f"{st.get('loss')}"
            )
        mine = (self.global_batch, self.steps_per_epoch, self.total_steps)
        theirs = (st.get("global_batch"), st.get("steps_per_epoch"), st.get("total_steps"))
        if mine != theirs:
            raise ValueError(
                f"checkpoint {str(ckpt.path)!r} was written with global batch {theirs[0]}, {theirs[1]} steps per "
                f"epoch and {theirs[2]} steps; this run has {mine[0]}, {mine[1]} and {mine[2]}. Resume with the same "
                "number of processes, --batch-size, --epochs/--steps and CSV"
            )

    def restore(self, ckpt: Checkpoint) -> None:
        self.unreadable = set(ckpt.state.get("unreadable_rows", ()))

    def rank_state(self) -> list[int]:
        return sorted(self.unreadable)

    def checkpoint_state(self, rank_states: list) -> dict[str, Any]:
        cfg = self.cfg
        unreadable = sorted({line for lines in rank_states for line in lines})
        return dict(text=cfg.text, loss=cfg.loss, total_steps=self.total_steps, unreadable_rows=unreadable)

    def skipped(self) -> int:
        """Training rows left out so far: dropped when the CSV was read, and found unreadable by any rank."""
        lines = set(self.unreadable)
        if self.d.world_size > 1:
            gathered: list = [None] * self.d.world_size
            dist.all_gather_object(gathered, sorted(lines))
            lines = {line for part in gathered for line in part}
        return len(self.train_table.dropped) + len(lines)

    def add_epoch_metrics(self, row: dict[str, Any], epoch: int, eval_epoch: bool) -> None:
        """Skipped rows and, on eval epochs, the val CSV's retrieval recalls and zero-shot accuracy (rank 0; the
        others wait)."""
        row["skipped_images"] = self.skipped()
        if self.cfg.val_csv and eval_epoch:
            if self.d.main:
                row.update(self.evaluate())
            if self.d.world_size > 1:
                dist.barrier()

    def evaluate(self) -> dict[str, float]:
        val, device, cfg = self.val, self.d.device, self.cfg
        out: dict[str, float] = {"val_skipped_images": val.skipped}
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            recalls = evaluate_retrieval(self.module, self.tokenizer, val.loader, val.captions, cfg.batch_size, device)
            out.update({f"val_{k}": v for k, v in recalls.items()})
            if val.classnames is not None:
                batches = ((x, y) for x, y in zip(val.loader, val.labels.split(cfg.batch_size)))
                acc = evaluate_zero_shot(
                    self.module, self.tokenizer, val.classnames, list(cfg.zero_shot_templates), batches, device=device
                )
                out.update({f"val_zero_shot_{k}": v for k, v in acc.items()})
        return out

    def start_logging(self) -> None:
        """Rank 0: write ``config.json`` and log the run's summary."""
        cfg, d = self.cfg, self.d
        (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.module.parameters())
        _logger.info(
            "training a %s CLIP (text %s, embed %d, loss %s%s) on %d pairs of %s: %d steps (%d epoch(s) x %d), global "
            "batch %d (%d process(es) on %s), lr %.3g, warmup %d steps, amp %s; %.2fM of %.2fM parameters train",
            cfg.model,
            cfg.text,
            cfg.embed_dim,
            cfg.loss,
            f", LiT with {cfg.unlocked_groups} unlocked group(s)" if cfg.lock_image else "",
            len(self.train_table),
            cfg.train_csv,
            self.total_steps,
            self.epochs,
            self.steps_per_epoch,
            self.global_batch,
            d.world_size,
            d.device.type,
            cfg.lr,
            cfg.warmup_steps,
            cfg.amp,
            trainable / 1e6,
            total / 1e6,
        )


def train_clip(cfg: ClipTrainConfig) -> ClipTrainResult:
    """Train a CLIP as described by ``cfg`` (see the module docstring). Returns the trained model."""
    _check_config(cfg)
    table = read_image_text_csv(cfg.train_csv, cfg.image_column, cfg.caption_column, separator=cfg.csv_separator)
    d = setup_distributed(cfg.device)
    try:
        run = _build_run(cfg, d, table)
        t_start = time.perf_counter()
        metrics = run.fit()
        skipped = run.skipped()
        if d.main:
            save_clip(run.module, run.out / "clip")
            _save_trunk(run.module, run.out / "trunk.safetensors")
            _logger.info(
                "finished at step %d in %.1fs (%d training row(s) skipped: missing, empty or unreadable); the model is "
                "in %s (open_clip local-dir:), its trunk in %s",
                run.global_step,
                time.perf_counter() - t_start,
                skipped,
                run.out / "clip",
                run.out / "trunk.safetensors",
            )
        return ClipTrainResult(run.out, run.module, run.tokenizer, run.global_step, metrics, skipped)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _build_run(cfg: ClipTrainConfig, d: DistInfo, table: ImageTextCsv) -> _Run:
    """Seed, then build the CLIP (tower weights loaded and locked for LiT), the loaders, optimiser, schedule, loss."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import random_seed

    out = Path(cfg.output)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _log_dropped(table)
    random_seed(cfg.seed, d.rank)
    module, train_tf, val_tf, tokenizer = create_clip(
        cfg.model, text=cfg.text, embed_dim=cfg.embed_dim, image_size=cfg.image_size, loss=cfg.loss
    )
    if cfg.image_checkpoint:
        load_backbone(module, _image_checkpoint(cfg.image_checkpoint, resolve_model(cfg.model)))
        _logger.info("loaded the image tower from %s (strictly: every trunk weight)", cfg.image_checkpoint)
    if cfg.lock_image:
        lock_image_tower(module, cfg.unlocked_groups, freeze_bn_stats=True)
    module.to(d.device)
    if cfg.grad_checkpointing:
        module.set_grad_checkpointing(True)
    dataset = ImageTextCsvDataset(table, train_tf, tokenizer, seed=cfg.seed)
    sampler = ResumableSampler(len(dataset), cfg.batch_size, d.rank, d.world_size, seed=cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=d.device.type == "cuda",
        drop_last=True,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the loader off the global torch RNG
    )
    val = _build_val(cfg, val_tf) if cfg.val_csv and d.main else None
    total_steps = cfg.steps or cfg.epochs * sampler.batches_per_epoch
    optimizer = create_optimizer_v2(
        module, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps, betas=tuple(cfg.opt_betas)
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total_steps,
        lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.lr / max(cfg.warmup_steps, 1),
        warmup_prefix=True,
        t_in_epochs=False,
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
    if amp_dtype == torch.float16 and d.device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    loss_kwargs: dict[str, Any] = dict(rank=d.rank, world_size=d.world_size, cache_labels=True)
    if cfg.loss == "clip":  # each rank: its rows against the gathered global batch (gradients flow through the gather)
        loss_kwargs.update(local_loss=True, gather_with_grad=True)
    loss_fn = create_loss(cfg.loss, **loss_kwargs)
    return _Run(
        cfg=cfg,
        d=d,
        out=out,
        module=module,
        tokenizer=tokenizer,
        train_table=table,
        loader=loader,
        sampler=sampler,
        val=val,
        optimizer=optimizer,
        scheduler=scheduler,
        amp_dtype=amp_dtype,
        scaler=scaler,
        loss_fn=loss_fn,
        total_steps=total_steps,
        model=module,
    )
