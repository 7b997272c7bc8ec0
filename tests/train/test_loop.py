"""The epoch loop both trainers share (``vizoo.train.loop.TrainingRun``), driven by the smallest trainer: a linear
classifier of scikit-learn's digits. A run stopped after an epoch and resumed ends with the weights, logs and
position of the uninterrupted run; a non-finite loss stops the run with the trainer's hint before any step."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vizoo.train.data import ResumableSampler
from vizoo.train.loop import TrainingRun
from vizoo.train.runtime import DistInfo, read_jsonl


class Digits(Dataset):
    """scikit-learn's 8 x 8 digits as (64 pixels in [0, 1], label), indexed by the sampler's (index, epoch) pairs."""

    def __init__(self):
        digits = load_digits()
        self.x = torch.tensor(digits.data, dtype=torch.float32) / 16
        self.y = torch.tensor(digits.target)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key):
        index, _ = key
        return self.x[index], self.y[index]


@dataclasses.dataclass(kw_only=True)
class LinearRun(TrainingRun):
    total_epochs: int
    poison_step: int | None = None  # the global step whose loss is made NaN

    NON_FINITE_HINT = "lower the learning rate"

    @property
    def epochs(self) -> int:
        return self.total_epochs

    def train_step(self, batch, epoch: int, i: int) -> float:
        x, y = batch
        loss = self.loss_fn(self.model(x), y)
        if self.global_step + 1 == self.poison_step:
            loss = loss * float("nan")
        return self.optimizer_step(loss, epoch, i)


def linear_run(out, epochs: int, resume: str | None = None, poison_step: int | None = None) -> LinearRun:
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    dataset = Digits()
    sampler = ResumableSampler(len(dataset), 128, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    cfg = SimpleNamespace(
        model="linear",
        batch_size=128,
        progress=False,
        log_every=1,
        eval_every=1,
        checkpoint_every=5,
        checkpoint_keep=2,
        clip_grad=1.0,
        resume=resume,
        to_dict=lambda: {"model": "linear"},
    )
    return LinearRun(
        cfg=cfg,
        d=DistInfo(),
        out=out,
        module=model,
        model=model,
        loader=DataLoader(dataset, batch_size=128, sampler=sampler),
        sampler=sampler,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 10),
        amp_dtype=None,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        loss_fn=nn.CrossEntropyLoss(),
        total_epochs=epochs,
        poison_step=poison_step,
    )


def train(run: LinearRun) -> list[dict]:
    run.out.mkdir(parents=True, exist_ok=True)
    return run.train_epochs(*run.resume())


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    whole = linear_run(tmp_path / "whole", epochs=3)
    rows = train(whole)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns

    train(linear_run(tmp_path / "split", epochs=1))
    resumed = linear_run(tmp_path / "split", epochs=3, resume="auto")
    assert [r["epoch"] for r in train(resumed)] == [2, 3]
    assert resumed.global_step == whole.global_step == 3 * whole.steps_per_epoch
    for name, weight in whole.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[name], weight), name
    for log in ("steps.jsonl", "metrics.jsonl"):  # the same rows, but for each epoch's wall-clock seconds
        rows_split, rows_whole = (
            [without_time(r) for r in read_jsonl(tmp_path / run / log)] for run in ("split", "whole")
        )
        assert rows_split == rows_whole, log


def without_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "epoch_s"}


def test_non_finite_loss_stops_before_the_step_with_the_trainers_hint(tmp_path):
    run = linear_run(tmp_path / "nan", epochs=2, poison_step=15)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 1; lower the learning rate"):
        train(run)
    assert run.global_step == 14  # the poisoned step took no optimizer step
    assert all(torch.isfinite(p).all() for p in run.module.parameters())
