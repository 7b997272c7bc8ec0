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

import logging
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
from .loop import TrainingRun
from .runtime import DistInfo, all_reduce_sum, setup_distributed

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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype=None,
    d: DistInfo | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the loader; summed over ranks when distributed."""
    d = d or DistInfo(device=device)
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
    loss_sum, top1, top5, n = all_reduce_sum([loss_sum, top1, top5, n], d)
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
    d = setup_distributed(cfg.device)
    try:
        return _train(cfg, d, train_split, val_split, classes)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(kw_only=True)
class _Run(TrainingRun):
    """One classification run on the shared loop (:class:`~vizoo.train.loop.TrainingRun`): ``loader`` reads the
    train split, and the EMA averages ``module``."""

    cfg: TrainConfig
    classes: list[str]
    val_loader: DataLoader | None
    img_size: int
    lr: float
    ema: ModelEmaV3 | None
    mixup: Mixup | None

    NON_FINITE_HINT = "lower --lr, raise --warmup-epochs, or use --amp bf16 instead of fp16"

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], epoch: int, i: int) -> float:
        """One optimizer step on batch ``i`` (mixup, AMP, gradient clipping), then the EMA and a per-update scheduler
        step."""
        cfg, d = self.cfg, self.d
        x, y = (t.to(d.device, non_blocking=True) for t in batch)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(d.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.model(x), y)
        value = self.optimizer_step(loss, epoch, i)
        if self.ema is not None and self.global_step == 1:
            # Start the average from the model after its first step, so that state fitted on the first batch
            # (EcoFormer's hashing buffers) is copied rather than averaged with its unfitted initial values.
            self.ema.set(self.module)
        elif self.ema is not None:
            self.ema.update(self.module, step=self.global_step)
        if cfg.sched_on_updates:
            self.scheduler.step_update(num_updates=self.global_step)
        return value

    def end_epoch(self, epoch: int) -> None:
        if not self.cfg.sched_on_updates:
            self.scheduler.step(epoch + 1)

    def check_resume(self, ckpt: Checkpoint) -> None:
        cfg, classes, st = self.cfg, self.classes, ckpt.state
        steps_per_epoch, global_batch = self.steps_per_epoch, self.global_batch
        if st.get("num_classes") != len(classes):
            raise ValueError(
                f"checkpoint {str(ckpt.path)!r} was trained with num_classes={st.get('num_classes')} but "
                f"{cfg.data_dir!r} has {len(classes)} classes; resume with the data the run started with, or start a "
                "new run (another --output, no --resume)"
            )
        if st.get("model_name") != cfg.model:
            raise ValueError(
                f"checkpoint {str(ckpt.path)!r} holds a {st.get('model_name')!r} but --model is "
                f"{cfg.model!r}; pass --model {st.get('model_name')}"
            )
        if st.get("global_batch") != global_batch or st.get("steps_per_epoch") != steps_per_epoch:
            raise ValueError(
                f"checkpoint {str(ckpt.path)!r} was written with global batch {st.get('global_batch')} and "
                f"{st.get('steps_per_epoch')} steps per epoch; this run has {global_batch} and {steps_per_epoch}. "
                "Resume with the same number of processes, --batch-size and data"
            )
        if st.get("classes") and st["classes"] != classes:
            _logger.warning("class names differ from the checkpoint's (same count); continuing")

    def restore(self, ckpt: Checkpoint) -> None:
        if self.ema is None:
            return
        if ckpt.ema is None:
            _logger.warning("checkpoint has no EMA weights; the EMA restarts from the resumed weights")
            self.ema.module.load_state_dict(ckpt.model)
        else:
            self.ema.module.load_state_dict(ckpt.ema)

    def checkpoint_state(self, rank_states: list) -> dict[str, Any]:
        return dict(num_classes=len(self.classes), classes=self.classes)

    def checkpoint_ema(self) -> dict[str, torch.Tensor] | None:
        return self.ema.module.state_dict() if self.ema is not None else None

    def add_epoch_metrics(self, row: dict[str, Any], epoch: int, eval_epoch: bool) -> None:
        """Val loss, top-1 and top-5 of the model and, with an EMA, of the EMA, on eval epochs."""
        if self.val_loader is None or not eval_epoch:
            return
        d, cfg = self.d, self.cfg
        m = evaluate(self.module, self.val_loader, d.device, self.amp_dtype, d, cfg.channels_last)
        row.update(val_loss=m["loss"], top1=m["top1"], top5=m["top5"])
        if self.ema is not None:
            m = evaluate(self.ema.module, self.val_loader, d.device, self.amp_dtype, d, cfg.channels_last)
            row.update(ema_val_loss=m["loss"], ema_top1=m["top1"], ema_top5=m["top5"])

    def start_logging(self) -> None:
        """Rank 0: write ``config.yaml``, open the tensorboard writer (with --tensorboard) and log the run's summary."""
        import yaml

        cfg, d = self.cfg, self.d
        (self.out / "config.yaml").write_text(
            yaml.safe_dump(
                dict(cfg.to_dict(), scale=list(cfg.scale), ratio=list(cfg.ratio), opt_betas=list(cfg.opt_betas)),
                sort_keys=False,
            )
        )
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                _logger.warning("--tensorboard: tensorboard is not installed (pip install tensorboard); skipped")
        _logger.info(
            "training %s (%d classes) on %d images (%d val) at %dx%d: %d epochs x %d steps, global batch %d "
            "(%d process(es) on %s), lr %.3g, warmup %s epochs, drop_path %s, mixup %s, cutmix %s, EMA %s, amp %s",
            cfg.model,
            len(self.classes),
            len(self.loader.dataset),
            len(self.val_loader.dataset) if self.val_loader else 0,
            self.img_size,
            self.img_size,
            cfg.epochs,
            self.steps_per_epoch,
            self.global_batch,
            d.world_size,
            d.device.type,
            self.lr,
            cfg.warmup_epochs,
            "variant default" if cfg.drop_path is None else cfg.drop_path,
            cfg.mixup,
            cfg.cutmix,
            cfg.model_ema,
            cfg.amp,
        )


def _train(cfg: TrainConfig, d: DistInfo, train_split, val_split, classes: list[str]) -> TrainResult:
    """Build the run, resume it if asked, wrap it for DDP, train the remaining epochs, write the final weights."""
    run = _build_run(cfg, d, train_split, val_split, classes)
    t_start = time.perf_counter()
    metrics = run.fit()
    if d.main:
        _write_final_weights(run)
        _logger.info(
            "finished %d epoch(s) in %.1fs; outputs in %s",
            len(metrics),
            time.perf_counter() - t_start,
            run.out,
        )
    ema = run.ema.module if run.ema is not None else None
    return TrainResult(run.out, run.module, ema, classes, run.global_step, metrics)


def _build_run(cfg: TrainConfig, d: DistInfo, train_split, val_split, classes: list[str]) -> _Run:
    """Seed, then build the model, data loaders, optimizer, LR scheduler, AMP scaler, EMA and loss.

    The seed comes first so that the initial weights depend on it alone (the loaders draw from their own generators,
    not the global RNG); the EMA copies the model after it is placed on the device and SyncBN-converted.
    """
    out = Path(cfg.output)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    random_seed(cfg.seed, d.rank)
    module = _build_model(cfg, len(classes))
    train_loader, sampler, val_loader, img_size = _build_loaders(cfg, d, module, train_split, val_split)
    module = _place_model(cfg, d, module)
    lr, warmup_lr, min_lr = cfg.resolved_lrs(d.world_size)
    optimizer = create_optimizer_v2(
        module, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps, betas=tuple(cfg.opt_betas)
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
        updates_per_epoch=sampler.batches_per_epoch,
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(module, decay=cfg.model_ema_decay) if cfg.model_ema else None
    mixup, loss_fn = _build_loss(cfg, len(classes))
    return _Run(
        cfg=cfg,
        d=d,
        out=out,
        classes=classes,
        module=module,
        loader=train_loader,
        sampler=sampler,
        val_loader=val_loader,
        img_size=img_size,
        lr=lr,
        optimizer=optimizer,
        scheduler=scheduler,
        amp_dtype=amp_dtype,
        scaler=scaler,
        ema=ema,
        mixup=mixup,
        loss_fn=loss_fn,
        model=module,
    )


def _build_loaders(
    cfg: TrainConfig, d: DistInfo, model: nn.Module, train_split, val_split
) -> tuple[DataLoader, ResumableSampler, DataLoader | None, int]:
    """The train loader (its resumable sampler reads this rank's stride), the val loader (None without a val split)
    and the image size; resize, crop, mean and std come from the model's ``pretrained_cfg`` unless ``cfg`` sets them.
    """
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
    pin = d.device.type == "cuda"
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=pin,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the loaders off the global torch RNG
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
    return train_loader, sampler, val_loader, img_size


def _place_model(cfg: TrainConfig, d: DistInfo, model: nn.Module) -> nn.Module:
    """Move the model to the device; gradient checkpointing, channels_last and SyncBN (CUDA, several processes)."""
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
    return model


def _build_loss(cfg: TrainConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup/CutMix (None when both alphas are 0) and the loss that fits the targets it makes: soft-target cross
    entropy after mixing (which applies the label smoothing), else label smoothing, else plain cross entropy."""
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
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def _write_final_weights(run: _Run) -> None:
    """Rank 0: ``model.safetensors`` (and ``model_ema.safetensors``), ``classes.txt``; closes tensorboard."""
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in run.module.state_dict().items()},
        str(run.out / "model.safetensors"),
        metadata={"model": run.cfg.model, "num_classes": str(len(run.classes))},
    )
    if run.ema is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in run.ema.module.state_dict().items()},
            str(run.out / "model_ema.safetensors"),
            metadata={"model": run.cfg.model},
        )
    (run.out / "classes.txt").write_text("\n".join(run.classes) + "\n")
    if run.writer is not None:
        run.writer.close()
