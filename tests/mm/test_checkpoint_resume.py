"""mmengine 0.10.7's own checkpoints on torch >= 2.6: a Runner saves, and a new Runner resumes from its work_dir."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import vizoo.mm  # noqa: F401  (installs the loader)


class _Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x, y, mode="loss"):
        return dict(loss=((self.fc(x) - y) ** 2).mean())


class _Points(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(2, generator=g)
        return dict(x=x, y=x.sum(0, keepdim=True))


def _runner(work_dir, max_iters, resume=False, load_from=None):
    return Runner(
        model=_Toy(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_Points(),
            batch_size=4,
            sampler=dict(type="InfiniteSampler", shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=2)),
        resume=resume,
        load_from=load_from,
        log_level="WARNING",
    )


def test_runner_saves_and_resumes(tmp_path):
    first = _runner(tmp_path / "work", 2)
    first.train()
    ckpt = tmp_path / "work" / "iter_2.pth"
    assert ckpt.is_file()
    # What mmengine saves is not weights-only loadable: this is what breaks on torch >= 2.6.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(ckpt)

    second = _runner(tmp_path / "work", 4, resume=True)
    second.train()
    assert second.iter == 4
    assert (tmp_path / "work" / "iter_4.pth").is_file()
    # The message hub came back from the checkpoint (its HistoryBuffers are what needs full unpickling).
    assert "train/loss" in second.message_hub.log_scalars


def test_foreign_files_load_weights_only(tmp_path):
    first = _runner(tmp_path / "work", 2)
    first.train()
    foreign = tmp_path / "elsewhere" / "iter_2.pth"
    foreign.parent.mkdir()
    foreign.write_bytes((tmp_path / "work" / "iter_2.pth").read_bytes())

    # Weights of a checkpoint from elsewhere load (load_from / init_cfg), without unpickling its objects.
    model = _Toy()
    load_checkpoint(model, str(foreign))
    torch.testing.assert_close(model.fc.weight, first.model.fc.weight)

    # Resuming from a file outside the Runner's work_dir is refused, saying what to do.
    with pytest.raises(RuntimeError, match="copy it into the work_dir"):
        _runner(tmp_path / "other_work", 4, resume=True, load_from=str(foreign)).train()
