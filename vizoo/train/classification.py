"""Image classification training (ImageNet recipes) on one process or many under torchrun.

:func:`train` runs a :class:`~vizoo.train.config.TrainConfig`:

- data: :func:`~vizoo.train.data.scan_dataset` folders, albumentations pipelines, eval resize/crop from the model's
  ``crop_pct`` and mean/std from its ``pretrained_cfg``;
- timm: Mixup/CutMix with SoftTargetCrossEntropy (else LabelSmoothingCrossEntropy), ``create_optimizer_v2`` (no
  weight decay on biases, norms and ``model.no_weight_decay()``), a warmup + cosine scheduler stepped every iteration
  (``sched_on_updates``; else every epoch), ModelEmaV3, the variant's registered drop_path_rate unless overridden;
- AMP in bf16 or fp16 (fp16 with a GradScaler), gradient clipping, gradient checkpointing, channels_last, SyncBN;
- distributed: torchrun's RANK/WORLD_SIZE/LOCAL_RANK; nccl on CUDA, gloo on CPU; each rank reads its stride of the
  epoch's permutation; rank 0 alone writes logs and checkpoints;
- checkpoints (:mod:`vizoo.train.checkpoint`) at each epoch end and every ``checkpoint_every`` steps; resuming
  restores every state (RNGs of each rank included) and skips the batches already trained on, so the resumed run
  repeats the uninterrupted one step for step.

Outputs in ``cfg.output``: ``config.yaml``, ``steps.jsonl`` (loss and lr per logged step), ``metrics.jsonl`` and
``metrics.csv`` (per epoch: train loss, val loss, top-1, top-5, EMA top-1/top-5), ``checkpoints/``, and at the end
``model.safetensors`` (and ``model_ema.safetensors``) with ``classes.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, random_seed
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import (
    Checkpoint,
    capture_rng,
    find_resume_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .config import TrainConfig
from .data import (
    ImageFolderDataset,
    ResumableSampler,
    ShardSampler,
    build_eval_transform,
    build_train_transform,
    scan_dataset,
)

__all__ = ["TrainResult", "evaluate", "train"]

_logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; files are written by rank 0)."""

    output: Path
    model: nn.Module
    ema: nn.Module | None
    classes: list[str]
    global_step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)  # per epoch, this invocation's epochs only


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return _Dist(rank, world, local, device, owns)


def _all_reduce_sum(values: list[float], d: _Dist) -> list[float]:
    if d.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype=None,
    d: _Dist | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the loader; summed over ranks when distributed."""
    d = d or _Dist(device=device)
    was_training = model.training
    model.eval()
    loss_sum = top1 = top5 = n = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[-1])
        hits = logits.topk(k, dim=-1).indices == y[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=-1).sum().item()
        n += len(y)
    model.train(was_training)
    loss_sum, top1, top5, n = _all_reduce_sum([loss_sum, top1, top5, n], d)
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    import timm

    import vizoo  # noqa: F401  (registers vizoo's models in timm)

    if not timm.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}; `vizoo list` shows vizoo's models, timm.list_models() timm's")
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=cfg.in_chans)
    if cfg.drop:
        kwargs["drop_rate"] = cfg.drop
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    if cfg.initial_checkpoint:
        # The model's own filter maps official layouts, and a classifier of another size is dropped (fine-tuning).
        kwargs["pretrained_cfg_overlay"] = dict(file=cfg.initial_checkpoint)
    return timm.create_model(cfg.model, pretrained=bool(cfg.initial_checkpoint), **kwargs)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return rows


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _check_resume(ckpt: Checkpoint, cfg: TrainConfig, classes: list[str], steps_per_epoch: int, global_batch: int):
    st = ckpt.state
    if st.get("num_classes") != len(classes):
        raise ValueError(
            f"checkpoint {str(ckpt.path)!r} was trained with num_classes={st.get('num_classes')} but "
            f"{cfg.data_dir!r} has {len(classes)} classes; resume with the data the run started with, or start a new "
            "run (another --output, no --resume)"
        )
    if st.get("model_name") != cfg.model:
        raise ValueError(
            f"checkpoint {str(ckpt.path)!r} holds a {st.get('model_name')!r} but --model is "
            f"{cfg.model!r}; pass --model {st.get('model_name')}"
        )
    if st.get("global_batch") != global_batch or st.get("steps_per_epoch") != steps_per_epoch:
        raise ValueError(
            f"checkpoint {str(ckpt.path)!r} was written with global batch {st.get('global_batch')} and "
            f"{st.get('steps_per_epoch')} steps per epoch; this run has {global_batch} and {steps_per_epoch}. Resume "
            "with the same number of processes, --batch-size and data"
        )
    if st.get("classes") and st["classes"] != classes:
        _logger.warning("class names differ from the checkpoint's (same count); continuing")


def train(cfg: TrainConfig) -> TrainResult:
    """Train a classifier as described by ``cfg`` (see the module docstring). Returns the trained model."""
    if not cfg.data_dir:
        raise ValueError("no data directory given; pass --data-dir with train/ and val/ class folders")
    if cfg.amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be bf16, fp16 or None, got {cfg.amp!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    train_split, val_split = scan_dataset(cfg.data_dir, cfg.train_split, cfg.val_split)
    classes = train_split.classes
    d = _setup_distributed(cfg)
    try:
        return _train(cfg, d, train_split, val_split, classes)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: _Dist, train_split, val_split, classes: list[str]) -> TrainResult:
    out = Path(cfg.output)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    random_seed(cfg.seed, d.rank)

    # model and data pipelines
    model = _build_model(cfg, len(classes))
    data_cfg = resolve_data_config({}, model=model)
    img_size = cfg.img_size or data_cfg["input_size"][-1]
    crop_pct = cfg.crop_pct or data_cfg.get("crop_pct") or 0.875
    mean, std = data_cfg["mean"], data_cfg["std"]
    interp = data_cfg.get("interpolation", "bicubic")
    train_tf = build_train_transform(
        img_size, mean, std, cfg.scale, cfg.ratio, cfg.hflip, cfg.color_jitter, cfg.aa, cfg.reprob, interp
    )
    eval_tf = build_eval_transform(img_size, mean, std, crop_pct, interp)
    train_ds = ImageFolderDataset(train_split, train_tf, seed=cfg.seed, in_chans=cfg.in_chans)
    sampler = ResumableSampler(len(train_ds), cfg.batch_size, d.rank, d.world_size, seed=cfg.seed)
    steps_per_epoch = sampler.batches_per_epoch
    global_batch = cfg.global_batch(d.world_size)
    pin = d.device.type == "cuda"
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # keeps the loaders off the global torch RNG
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=pin,
        drop_last=True,
        generator=loader_gen,
        persistent_workers=False,
    )
    val_loader = None
    if val_split is not None:
        val_ds = ImageFolderDataset(val_split, eval_tf, seed=cfg.seed, in_chans=cfg.in_chans)
        val_loader = DataLoader(
            val_ds,
            batch_size=cfg.batch_size,
            sampler=ShardSampler(len(val_ds), d.rank, d.world_size),
            num_workers=cfg.workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    model.to(d.device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and d.world_size > 1:
        if d.device.type != "cuda":
            _logger.warning("--sync-bn needs CUDA; ignored on %s", d.device)
        else:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    lr, warmup_lr, min_lr = cfg.resolved_lrs(d.world_size)
    optimizer = create_optimizer_v2(
        model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps, betas=tuple(cfg.opt_betas)
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        warmup_prefix=True,
        step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=steps_per_epoch,
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None

    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        if cfg.batch_size % 2:
            raise ValueError(f"mixup/cutmix need an even batch size per process, got {cfg.batch_size}")
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob,
            mode=cfg.mixup_mode,
            label_smoothing=cfg.smoothing,
            num_classes=len(classes),
        )
        loss_fn: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()

    # resume
    start_epoch, start_batch, global_step, loss_acc = 0, 0, 0, (0.0, 0)
    ckpt = None
    if cfg.resume == "auto":
        ckpt = find_resume_checkpoint(out)
        if ckpt is None:
            _logger.info("--resume auto: no checkpoint in %s, starting from scratch", out / "checkpoints")
    elif cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
    if ckpt is not None:
        _check_resume(ckpt, cfg, classes, steps_per_epoch, global_batch)
        st = ckpt.state
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        if ema is not None:
            if ckpt.ema is None:
                _logger.warning("checkpoint has no EMA weights; the EMA restarts from the resumed weights")
                ema.module.load_state_dict(ckpt.model)
            else:
                ema.module.load_state_dict(ckpt.ema)
        start_epoch, start_batch, global_step = st["epoch"], st["step_in_epoch"], st["step"]
        loss_acc = tuple(st.get("epoch_loss", (0.0, 0)))
        rngs = st.get("rng") or []
        if len(rngs) == d.world_size:
            restore_rng(rngs[d.rank])
        else:
            _logger.warning(
                "checkpoint has RNG states of %d processes, this run has %d; reseeding", len(rngs), d.world_size
            )
        _logger.info(
            "resumed from %s: epoch %d, step %d of %d in the epoch, global step %d",
            ckpt.path,
            start_epoch + 1,
            start_batch,
            steps_per_epoch,
            global_step,
        )
        if d.main:  # drop log lines the killed run wrote after this checkpoint
            for name in ("steps.jsonl", "metrics.jsonl"):
                rows = _read_jsonl(out / name)
                _rewrite_jsonl(out / name, [r for r in rows if r.get("step", 0) <= global_step])
        del ckpt

    module = model  # the unwrapped model: what is saved and returned
    if d.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if pin else None)

    writer = None
    if d.main:
        import yaml

        (out / "config.yaml").write_text(
            yaml.safe_dump(
                dict(cfg.to_dict(), scale=list(cfg.scale), ratio=list(cfg.ratio), opt_betas=list(cfg.opt_betas)),
                sort_keys=False,
            )
        )
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                _logger.warning("--tensorboard: tensorboard is not installed (pip install tensorboard); skipped")
        _logger.info(
            "training %s (%d classes) on %d images (%d val) at %dx%d: %d epochs x %d steps, global batch %d "
            "(%d process(es) on %s), lr %.3g, warmup %s epochs, drop_path %s, mixup %s, cutmix %s, EMA %s, amp %s",
            cfg.model,
            len(classes),
            len(train_ds),
            len(val_loader.dataset) if val_loader else 0,
            img_size,
            img_size,
            cfg.epochs,
            steps_per_epoch,
            global_batch,
            d.world_size,
            d.device.type,
            lr,
            cfg.warmup_epochs,
            "variant default" if cfg.drop_path is None else cfg.drop_path,
            cfg.mixup,
            cfg.cutmix,
            cfg.model_ema,
            cfg.amp,
        )

    def checkpoint(epoch: int, step_in_epoch: int, acc: tuple[float, int]) -> None:
        rngs = [None] * d.world_size
        if d.world_size > 1:
            dist.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if d.main:
            state = dict(
                model_name=cfg.model,
                num_classes=len(classes),
                classes=classes,
                epoch=epoch,
                step_in_epoch=step_in_epoch,
                steps_per_epoch=steps_per_epoch,
                global_batch=global_batch,
                world_size=d.world_size,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                rng=rngs,
                config=cfg.to_dict(),
                epoch_loss=acc,
            )
            path = save_checkpoint(
                out / "checkpoints",
                global_step,
                module.state_dict(),
                state,
                ema.module.state_dict() if ema is not None else None,
                keep=cfg.checkpoint_keep,
            )
            _logger.debug("wrote %s", path)
        if d.world_size > 1:
            dist.barrier()

    metrics_rows = _read_jsonl(out / "metrics.jsonl") if d.main else []
    new_metrics: list[dict[str, Any]] = []
    model.train()
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        first = start_batch if epoch == start_epoch else 0
        if epoch != start_epoch:
            loss_acc = (0.0, 0)
        sampler.set_epoch(epoch, first)
        bar = None
        batches = train_loader
        if d.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(
                train_loader,
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                file=sys.stderr,
                disable=None,
                dynamic_ncols=True,
            )
            batches = bar
        t_epoch = time.perf_counter()
        for i, (x, y) in enumerate(batches, start=first):
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(d.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(x), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}; lower --lr, "
                    "raise --warmup-epochs, or use --amp bf16 instead of fp16"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad and cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            if ema is not None and global_step == 1:
                # Start the average from the model after its first step, so that state fitted on the first batch
                # (EcoFormer's hashing buffers) is copied rather than averaged with its unfitted initial values.
                ema.set(module)
            elif ema is not None:
                ema.update(module, step=global_step)
            if cfg.sched_on_updates:
                scheduler.step_update(num_updates=global_step)
            loss_acc = (loss_acc[0] + loss.item(), loss_acc[1] + 1)
            if global_step % max(cfg.log_every, 1) == 0:
                mean_loss = _all_reduce_sum([loss.item()], d)[0] / d.world_size
                if d.main:
                    row = {
                        "epoch": epoch,
                        "step": global_step,
                        "step_in_epoch": i + 1,
                        "loss": mean_loss,
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                    with open(out / "steps.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, global_step)
                        writer.add_scalar("train/lr", row["lr"], global_step)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_acc[0] / loss_acc[1]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                checkpoint(epoch, i + 1, loss_acc)
        if bar is not None:
            bar.close()
        if not cfg.sched_on_updates:
            scheduler.step(epoch + 1)

        row: dict[str, Any] = {"epoch": epoch + 1, "step": global_step}
        tl = _all_reduce_sum([loss_acc[0], float(loss_acc[1])], d)
        row["train_loss"] = tl[0] / max(tl[1], 1.0)
        row["lr"] = optimizer.param_groups[0]["lr"]
        last_epoch = epoch + 1 == cfg.epochs
        if val_loader is not None and (last_epoch or (epoch + 1) % max(cfg.eval_every, 1) == 0):
            m = evaluate(module, val_loader, d.device, amp_dtype, d, cfg.channels_last)
            row.update(val_loss=m["loss"], top1=m["top1"], top5=m["top5"])
            if ema is not None:
                m = evaluate(ema.module, val_loader, d.device, amp_dtype, d, cfg.channels_last)
                row.update(ema_val_loss=m["loss"], ema_top1=m["top1"], ema_top5=m["top5"])
        row["epoch_s"] = time.perf_counter() - t_epoch
        new_metrics.append(row)
        if d.main:
            metrics_rows.append(row)
            _rewrite_jsonl(out / "metrics.jsonl", metrics_rows)
            _write_csv(out / "metrics.csv", metrics_rows)
            if writer is not None:
                for k, v in row.items():
                    if k not in ("epoch", "step"):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            _logger.info(
                "epoch %d/%d: %s",
                epoch + 1,
                cfg.epochs,
                "  ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"
                ),
            )
        checkpoint(epoch + 1, 0, (0.0, 0))

    if d.main:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
            str(out / "model.safetensors"),
            metadata={"model": cfg.model, "num_classes": str(len(classes))},
        )
        if ema is not None:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()},
                str(out / "model_ema.safetensors"),
                metadata={"model": cfg.model},
            )
        (out / "classes.txt").write_text("\n".join(classes) + "\n")
        if writer is not None:
            writer.close()
        _logger.info(
            "finished %d epoch(s) in %.1fs; outputs in %s", cfg.epochs - start_epoch, time.perf_counter() - t_start, out
        )
    return TrainResult(out, module, ema.module if ema is not None else None, classes, global_step, new_metrics)
