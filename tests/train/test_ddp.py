"""DDP: a 2-process gloo run under torchrun matches a 1-process run with the same global batch."""

import subprocess
import sys

import torch
from safetensors.torch import load_file

from .conftest import REPO, tool_env

# Randomness that differs per rank by design (mixup, drop_path) is off; augmentation is seeded per sample.
COMMON = [
    "--model", "test_vmamba", "--img-size", "32", "--epochs", "1", "--lr", "2e-3", "--warmup-epochs", "0",
    "--mixup", "0", "--cutmix", "0", "--smoothing", "0.1", "--drop-path", "0", "--model-ema", "false",
    "--aa", "none", "--reprob", "0", "--scale", "0.5", "1", "--workers", "0", "--no-progress",
    "--clip-grad", "1.0",
]  # fmt: skip


def test_two_process_gloo_matches_one_process(lfw_data, tmp_path):
    single = subprocess.run(
        [sys.executable, "-m", "vizoo", "train", *COMMON, "--data-dir", str(lfw_data), "--batch-size",
         "16", "--output", str(tmp_path / "one")],
        cwd=REPO, env=tool_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vizoo", "train", *COMMON, "--data-dir", str(lfw_data), "--batch-size", "8",
         "--output", str(tmp_path / "two")],
        cwd=REPO, env=tool_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr
    assert "2 process(es) on cpu" in ddp.stderr and "global batch 16" in ddp.stderr
    a, b = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)
    # rank 0 alone wrote the logs: one line per step
    assert len((tmp_path / "two" / "steps.jsonl").read_text().splitlines()) == 9
