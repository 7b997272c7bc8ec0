import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, class_names, val_fraction=0.25, seed=0):
    """Write grayscale images in [0, 1] as PNGs to root/train/<class>/ and root/val/<class>/ (stratified split)."""
    from PIL import Image

    from vizoo.data import stratified_split

    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        for i in idx:
            folder = root / split / class_names[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.clip(images[i], 0, 1) * 255).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def lfw_folder(root: Path) -> Path:
    """scikit-image's lfw_subset (100 faces, 100 non-faces, 25x25) as an ImageNet-layout folder."""
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset(), dtype=np.float32)
    images = images / 255.0 if images.max() > 1 else images
    labels = np.concatenate([np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)])
    return write_image_folder(root, images, labels, ["non-face", "face"])


@pytest.fixture(scope="session")
def lfw_data(tmp_path_factory) -> Path:
    return lfw_folder(tmp_path_factory.mktemp("lfw"))


def tool_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def run_tool(args, cwd=REPO, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vizoo", "train", *map(str, args)],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        **kwargs,
    )


def small_config(data_dir, output, **overrides):
    """A fast, deterministic config for test_vmamba at 32x32 on the LFW folder."""
    from vizoo.train import TrainConfig

    values = dict(
        model="test_vmamba",
        data_dir=str(data_dir),
        output=str(output),
        img_size=32,
        epochs=1,
        batch_size=16,
        lr=2e-3,
        warmup_epochs=0,
        mixup=0.0,
        cutmix=0.0,
        smoothing=0.0,
        model_ema=False,
        aa=None,
        reprob=0.0,
        scale=(0.5, 1.0),
        workers=0,
        progress=False,
        log_every=1,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def short_run(lfw_data, tmp_path_factory):
    """One epoch (9 steps) with checkpoints at steps 3, 6 and 9; returns the output folder."""
    import torch

    from vizoo.train import train

    out = tmp_path_factory.mktemp("short_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(small_config(lfw_data, out, checkpoint_every=3))
    finally:
        torch.set_num_threads(threads)
    return out
