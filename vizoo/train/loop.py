"""The epoch loop that vizoo's trainers share: resuming, optimizer steps, step and epoch logs, checkpoints.

A trainer's run subclasses :class:`TrainingRun`, which holds the parts and the position of one run, and fills in what
differs between trainers: the step on a batch (:meth:`TrainingRun.train_step`), the number of epochs, the epoch's
extra metrics, and what its checkpoints hold beyond the common state. Classification (:mod:`vizoo.train.classification`)
and CLIP (:mod:`vizoo.multimodal.train`) training run through it.

Every rank runs the same loop; rank 0 alone writes ``steps.jsonl``, ``metrics.jsonl``, ``metrics.csv`` and the
checkpoints, and the other ranks wait for each checkpoint. A checkpoint holds every rank's RNG states, so a resumed
run repeats the uninterrupted one step for step.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import Checkpoint, capture_rng, find_resume_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from .data import ResumableSampler
from .runtime import DistInfo, all_reduce_sum, read_jsonl, rewrite_jsonl, write_csv

__all__ = ["TrainingRun"]

_logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainingRun:
    """One run's parts and its position.

    ``module`` is the unwrapped model: what is saved and evaluated. ``model`` is what the steps call: ``module`` itself,
    or its DistributedDataParallel wrapper under several processes. ``cfg`` is the trainer's config; the loop reads its
    ``model``, ``batch_size``, ``progress``, ``log_every``, ``eval_every``, ``checkpoint_every``, ``checkpoint_keep``,
    ``clip_grad``, ``resume`` and ``to_dict()``.
    """

    cfg: Any
    d: DistInfo
    out: Path
    module: nn.Module
    model: nn.Module
    loader: DataLoader
    sampler: ResumableSampler
    optimizer: torch.optim.Optimizer
    scheduler: Any
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    writer: Any = None  # tensorboard's SummaryWriter on rank 0, where the trainer opens one
    global_step: int = 0  # optimizer steps since the run started, resumed ones included
    epoch_loss: tuple[float, int] = (0.0, 0)  # this rank's (sum of batch losses, batches) in the epoch so far

    # What a non-finite loss's error suggests, after "loss is nan at epoch E, step S; ".
    NON_FINITE_HINT = "lower --lr or use --amp bf16"

    # ------------------------------------------------------------------------------------ filled in by a trainer

    @property
    def epochs(self) -> int:
        """Epochs the whole run trains."""
        raise NotImplementedError

    def train_step(self, batch: Any, epoch: int, i: int) -> float:
        """One step on batch ``i`` of ``epoch``, through :meth:`optimizer_step`; returns this rank's loss."""
        raise NotImplementedError

    def epoch_steps(self, epoch: int) -> int:
        """Steps in ``epoch`` (all of the sampler's batches unless the run ends within it)."""
        return self.steps_per_epoch

    def check_resume(self, ckpt: Checkpoint) -> None:
        """Raise ValueError, saying what to pass, when ``ckpt`` was written by a run this one cannot continue."""

    def restore(self, ckpt: Checkpoint) -> None:
        """Restore what the trainer's checkpoints add to the common state."""

    def rank_state(self) -> Any:
        """What this rank adds to a checkpoint beside its RNG states (gathered from every rank)."""
        return None

    def checkpoint_state(self, rank_states: list) -> dict[str, Any]:
        """What the trainer's checkpoints add to the common state, given every rank's :meth:`rank_state`."""
        return {}

    def checkpoint_ema(self) -> dict[str, torch.Tensor] | None:
        """EMA weights to checkpoint beside the model's, if the run keeps an average."""
        return None

    def start_logging(self) -> None:
        """Rank 0, before the first step: write the run's config and log its summary."""

    def train_mode(self) -> None:
        """Put the model in training mode before the epochs."""
        self.model.train()

    def step_row(self) -> dict[str, Any]:
        """What the trainer adds to a logged step's row."""
        return {}

    def add_epoch_metrics(self, row: dict[str, Any], epoch: int, eval_epoch: bool) -> None:
        """Add the trainer's metrics of ``epoch`` to its row; ``eval_epoch``: an eval epoch (every ``eval_every`` and
        the last). Every rank calls it."""

    def end_epoch(self, epoch: int) -> None:
        """After the last step of ``epoch`` (an epoch-wise scheduler steps here)."""

    # ----------------------------------------------------------------------------------------- the shared loop

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.d.world_size

    def fit(self) -> list[dict[str, Any]]:
        """Resume if asked (:meth:`resume`), wrap ``module`` for DistributedDataParallel under several processes, log
        the run's summary (rank 0) and train the remaining epochs. Returns the metric rows of the epochs trained here.
        """
        start_epoch, start_batch = self.resume()
        if self.d.world_size > 1:
            device_ids = [self.d.device.index] if self.d.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        if self.d.main:
            self.start_logging()
        return self.train_epochs(start_epoch, start_batch)

    def resume(self) -> tuple[int, int]:
        """Restore the run from ``cfg.resume``: a checkpoint, or "auto" for the newest in ``out/checkpoints`` if any.

        Loads the weights, optimizer, scheduler, scaler, this rank's RNG states, the global step, the epoch's loss so
        far and what the trainer adds (:meth:`restore`), and drops the log lines the interrupted run wrote after the
        checkpoint. Returns the epoch and the batch in it to start at: (0, 0) when there is nothing to resume.
        """
        resume, d = self.cfg.resume, self.d
        ckpt = None
        if resume == "auto":
            ckpt = find_resume_checkpoint(self.out)
            if ckpt is None:
                _logger.info("--resume auto: no checkpoint in %s, starting from scratch", self.out / "checkpoints")
        elif resume:
            ckpt = load_checkpoint(resume)
        if ckpt is None:
            return 0, 0
        self.check_resume(ckpt)
        st = ckpt.state
        self.module.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.global_step, self.epoch_loss = st["step"], tuple(st.get("epoch_loss", (0.0, 0)))
        self.restore(ckpt)
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
            st["epoch"] + 1,
            st["step_in_epoch"],
            self.steps_per_epoch,
            self.global_step,
        )
        if d.main:  # drop log lines the killed run wrote after this checkpoint
            for name in ("steps.jsonl", "metrics.jsonl"):
                rows = read_jsonl(self.out / name)
                rewrite_jsonl(self.out / name, [r for r in rows if r.get("step", 0) <= self.global_step])
        return st["epoch"], st["step_in_epoch"]

    def train_epochs(self, start_epoch: int, start_batch: int) -> list[dict[str, Any]]:
        """Train from batch ``start_batch`` of epoch ``start_epoch`` to the end; after each epoch record its metrics
        and write a checkpoint. Returns the metric rows of the epochs trained here."""
        metrics_rows = read_jsonl(self.out / "metrics.jsonl") if self.d.main else []  # earlier invocations' rows too
        new_rows: list[dict[str, Any]] = []
        self.train_mode()
        for epoch in range(start_epoch, self.epochs):
            t_epoch = time.perf_counter()
            self.train_epoch(epoch, start_batch if epoch == start_epoch else 0)
            row = self.epoch_metrics(epoch)
            row["epoch_s"] = time.perf_counter() - t_epoch
            new_rows.append(row)
            if self.d.main:
                metrics_rows.append(row)
                self.log_epoch(row, metrics_rows)
            self.epoch_loss = (0.0, 0)
            self.write_checkpoint(epoch + 1, 0)
        return new_rows

    def train_epoch(self, epoch: int, first: int) -> None:
        """One epoch's steps from batch ``first`` (past those a resumed run already trained on), with a progress bar
        on rank 0, a step log every ``log_every`` steps and a checkpoint every ``checkpoint_every``."""
        cfg = self.cfg
        steps = self.epoch_steps(epoch)
        self.sampler.set_epoch(epoch, first)
        bar = None
        if self.d.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps,
                initial=first,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                leave=False,
                file=sys.stderr,
                disable=None,
                dynamic_ncols=True,
            )
        for i, batch in enumerate(itertools.islice(self.loader, steps - first), start=first):
            loss = self.train_step(batch, epoch, i)
            self.epoch_loss = (self.epoch_loss[0] + loss, self.epoch_loss[1] + 1)
            if self.global_step % max(cfg.log_every, 1) == 0:
                self.log_step(epoch, i + 1, loss)
            if bar is not None:
                bar.update()
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{self.epoch_loss[0] / self.epoch_loss[1]:.4f}", lr=f"{lr:.2e}")
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 and i + 1 < steps:
                self.write_checkpoint(epoch, i + 1)
        if bar is not None:
            bar.close()
        self.end_epoch(epoch)

    def optimizer_step(self, loss: torch.Tensor, epoch: int, i: int) -> float:
        """Backward (through the AMP scaler), gradient clipping at ``cfg.clip_grad``, the optimizer step; advances
        ``global_step``. Returns the loss's value; raises FloatingPointError on a non-finite loss."""
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at epoch {epoch + 1}, step {i + 1}; {self.NON_FINITE_HINT}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad and self.cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        return value

    def log_step(self, epoch: int, step_in_epoch: int, loss: float) -> None:
        """Average the step's loss over ranks (every rank takes part); rank 0 appends it, the lr and the trainer's
        :meth:`step_row` to ``steps.jsonl`` and tensorboard."""
        mean_loss = all_reduce_sum([loss], self.d)[0] / self.d.world_size
        if not self.d.main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        row = dict(epoch=epoch, step=self.global_step, step_in_epoch=step_in_epoch, loss=mean_loss, lr=lr)
        row.update(self.step_row())
        with open(self.out / "steps.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.add_scalar("train/loss", mean_loss, self.global_step)
            self.writer.add_scalar("train/lr", lr, self.global_step)

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        """The epoch's row: train loss (mean over ranks), lr and the trainer's metrics (:meth:`add_epoch_metrics`)."""
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.global_step}
        total = all_reduce_sum([self.epoch_loss[0], float(self.epoch_loss[1])], self.d)
        row["train_loss"] = total[0] / max(total[1], 1.0)
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        eval_epoch = epoch + 1 == self.epochs or (epoch + 1) % max(self.cfg.eval_every, 1) == 0
        self.add_epoch_metrics(row, epoch, eval_epoch)
        return row

    def log_epoch(self, row: dict[str, Any], metrics_rows: list[dict[str, Any]]) -> None:
        """Rank 0: rewrite ``metrics.jsonl`` and ``metrics.csv`` with all rows so far, add the epoch's row to
        tensorboard and log it."""
        rewrite_jsonl(self.out / "metrics.jsonl", metrics_rows)
        write_csv(self.out / "metrics.csv", metrics_rows)
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])
        _logger.info(
            "epoch %d/%d: %s",
            row["epoch"],
            self.epochs,
            "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"),
        )

    def write_checkpoint(self, epoch: int, step_in_epoch: int) -> None:
        """Checkpoint the run at batch ``step_in_epoch`` of ``epoch``: every rank's RNG states and
        :meth:`rank_state` are gathered, rank 0 writes the weights (and EMA), optimizer, scheduler, scaler, position
        and the trainer's :meth:`checkpoint_state`; all ranks wait for it."""
        cfg, d = self.cfg, self.d
        mine = (capture_rng(), self.rank_state())
        gathered: list = [None] * d.world_size
        if d.world_size > 1:
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        if d.main:
            state = dict(
                model_name=cfg.model,
                epoch=epoch,
                step_in_epoch=step_in_epoch,
                steps_per_epoch=self.steps_per_epoch,
                global_batch=self.global_batch,
                world_size=d.world_size,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=[rng for rng, _ in gathered],
                config=cfg.to_dict(),
                epoch_loss=self.epoch_loss,
                **self.checkpoint_state([extra for _, extra in gathered]),
            )
            path = save_checkpoint(
                self.out / "checkpoints",
                self.global_step,
                self.module.state_dict(),
                state,
                self.checkpoint_ema(),
                keep=cfg.checkpoint_keep,
            )
            _logger.debug("wrote %s", path)
        if d.world_size > 1:
            dist.barrier()
