"""Exact resume: a run killed with SIGKILL mid-epoch and resumed with --resume auto repeats the uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from vizoo.train import load_checkpoint, train

from .conftest import REPO, small_config, tool_env

# The full recipe's randomness is on: mixup/cutmix (numpy RNG), drop_path (torch RNG), RandAugment-like policy and
# random erasing (per-sample seeds), label smoothing, EMA, and a loader worker process.
RECIPE = dict(
    epochs=2,
    mixup=0.8,
    cutmix=1.0,
    smoothing=0.1,
    drop_path=0.1,
    aa="rand-m9-mstd0.5-inc1",
    reprob=0.25,
    model_ema=True,
    model_ema_decay=0.9,
    warmup_epochs=1,
    workers=1,
    checkpoint_every=4,
    clip_grad=1.0,
)


def _flags(cfg) -> list[str]:
    return [
        "--model", cfg.model, "--data-dir", cfg.data_dir, "--output", cfg.output, "--img-size", str(cfg.img_size),
        "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr),
        "--warmup-epochs", str(cfg.warmup_epochs), "--mixup", str(cfg.mixup), "--cutmix", str(cfg.cutmix),
        "--smoothing", str(cfg.smoothing), "--drop-path", str(cfg.drop_path), "--aa", cfg.aa,
        "--reprob", str(cfg.reprob), "--model-ema", "true", "--model-ema-decay", str(cfg.model_ema_decay),
        "--scale", *map(str, cfg.scale), "--workers", str(cfg.workers), "--checkpoint-every",
        str(cfg.checkpoint_every), "--clip-grad", str(cfg.clip_grad), "--log-every", "1", "--seed", str(cfg.seed),
        "--no-progress",
    ]  # fmt: skip


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}


def test_sigkill_mid_epoch_then_resume(lfw_data, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed subprocess runs with OMP_NUM_THREADS=1: same arithmetic
    try:
        killed = small_config(lfw_data, tmp_path / "killed", **RECIPE)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vizoo", "train", *_flags(killed)],
            cwd=REPO,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        pointer = tmp_path / "killed" / "checkpoints" / "last"
        while not pointer.exists() and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
        assert proc.returncode == -signal.SIGKILL, output
        ckpt = load_checkpoint(pointer)
        k = ckpt.state["step"]
        assert 0 < ckpt.state["step_in_epoch"] < ckpt.state["steps_per_epoch"], "expected a mid-epoch checkpoint"

        reference = train(small_config(lfw_data, tmp_path / "reference", **RECIPE))
        resumed = train(small_config(lfw_data, tmp_path / "killed", resume="auto", **RECIPE))
    finally:
        torch.set_num_threads(threads)
    ref, res = _losses(tmp_path / "reference"), _losses(tmp_path / "killed")
    assert sorted(res) == sorted(ref)  # lines the killed run wrote after step k were dropped, then rewritten
    assert abs(res[k + 1] - ref[k + 1]) <= 1e-6, (k, res[k + 1], ref[k + 1])
    assert max(abs(res[s] - ref[s]) for s in ref if s > k) <= 1e-5
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    for a, b in zip(reference.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
