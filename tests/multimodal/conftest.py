"""Shared fixtures for vizoo.multimodal: real photos from scikit-image, the digits as PNG files with image-text CSVs,
an image tower pretrained on them by `vizoo train`, one torch thread."""

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def photos():
    """(2, 3, 64, 64) two real photos (scikit-image's astronaut and cat), ImageNet-normalised."""
    from skimage import data
    from skimage.transform import resize

    images = [resize(img, (64, 64), anti_aliasing=True) for img in (data.astronaut(), data.chelsea())]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture
def one_thread():
    """Tiny convolutions and scans: on a shared CPU, more threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_csv(tmp_path_factory):
    """scikit-learn's digits as 32x32 PNGs with ``train.csv`` and ``heldout.csv`` (``vm.write_digits_csv``)."""
    from vizoo.multimodal.data import write_digits_csv

    return write_digits_csv(tmp_path_factory.mktemp("digits_csv"), image_size=32)


# The image tower of the LiT test: test_vmamba trained by `vizoo train` to classify the digits' training images.
# Calibrated on CPU (seeds 0-2): two epochs (84 steps of 32) reach 0.89-0.90 held-out top-1 (one epoch: 0.85).
TOWER_EPOCHS = 2


@pytest.fixture(scope="session")
def digits_tower(digits_csv, tmp_path_factory):
    """The output folder of a `vizoo train` run of test_vmamba on the digits' training images (class folders next to
    the CSVs), with ``model.safetensors``."""
    from vizoo.train import TrainConfig, train

    root = digits_csv["train"].parent
    out = tmp_path_factory.mktemp("digits_tower")
    cfg = TrainConfig(
        model="test_vmamba",
        data_dir=str(root),
        val_split="heldout",
        output=str(out),
        img_size=32,
        epochs=TOWER_EPOCHS,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=0,
        mixup=0.0,
        cutmix=0.0,
        smoothing=0.0,
        model_ema=False,
        aa=None,
        reprob=0.0,
        scale=(0.5, 1.0),
        hflip=0.0,
        workers=0,
        progress=False,
        seed=0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return out
