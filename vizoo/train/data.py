"""Image-folder datasets, albumentations pipelines and resumable samplers for classification training.

Layout: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg`` (ImageNet's layout, and any ImageFolder). Class
names are the sorted folder names; ``train/`` and ``val/`` must hold the same set.

Determinism: every sample's augmentation is a pure function of ``(seed, epoch, index)`` (the albumentations pipeline
is reseeded per sample), and the sampler's order is a pure function of ``(seed, epoch)``. So a run resumed in the
middle of an epoch sees exactly the batches the uninterrupted run would have seen, with any number of loader workers.

Unreadable images are **skipped**: a file that cannot be decoded is logged (with a running count per loader process)
and replaced by the next readable image of the dataset, so batch shapes and the sample order stay the same.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "IMAGE_SUFFIXES",
    "FolderSplit",
    "ImageFolderDataset",
    "ResumableSampler",
    "ShardSampler",
    "build_eval_transform",
    "build_train_transform",
    "scan_dataset",
    "scan_folder",
]

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class FolderSplit:
    """One split of an ImageFolder: sorted class names and ``(path, label)`` samples."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]


def scan_folder(root: str | os.PathLike, what: str = "data") -> FolderSplit:
    """List ``root/<class>/<image>``; raises ValueError for a missing folder, no classes or an empty class folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"{what} folder {str(root)!r} does not exist; pass --data-dir pointing at a folder with one "
            "sub-folder per class (or train/ and val/ folders laid out so)"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{what} folder {str(root)!r} has no class sub-folders; put the images of each class in "
            f"{str(root)}/<class name>/"
        )
    samples: list[tuple[str, int]] = []
    empty = []
    for label, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            empty.append(name)
        samples.extend((f, label) for f in files)
    if empty:
        raise ValueError(
            f"{what} folder {str(root)!r} has class folder(s) without images: {', '.join(empty[:10])}"
            f"{' ...' if len(empty) > 10 else ''} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add images or remove the folder(s)"
        )
    return FolderSplit(root, classes, samples)


def scan_dataset(data_dir: str | os.PathLike, train_split: str = "train", val_split: str = "val"):
    """``(train, val)`` FolderSplits of ``data_dir``; ``val`` is None when there is no ``val/`` folder.

    Raises ValueError when ``data_dir`` or ``data_dir/train`` is missing, a class folder is empty, or the class sets
    of ``train/`` and ``val/`` differ (the message lists the classes present on one side only).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(
            f"data directory {str(data_dir)!r} does not exist; pass --data-dir with {train_split}/ and "
            f"{val_split}/ folders holding one folder per class"
        )
    if not (data_dir / train_split).is_dir():
        raise ValueError(
            f"data directory {str(data_dir)!r} has no {train_split}/ folder; expected "
            f"{str(data_dir)}/{train_split}/<class>/<image> (and {val_split}/ laid out the same way)"
        )
    train = scan_folder(data_dir / train_split, "training")
    if not (data_dir / val_split).is_dir():
        return train, None
    val = scan_folder(data_dir / val_split, "validation")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ValueError(
            f"class folders differ between {train_split}/ ({len(train.classes)}) and {val_split}/ "
            f"({len(val.classes)}) in {str(data_dir)!r}: only in {train_split}/: {only_train[:10]}, only in "
            f"{val_split}/: {only_val[:10]}; both must hold the same class folders"
        )
    return train, val


def _interpolation(name: str) -> int:
    import cv2

    return {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}.get(
        name, cv2.INTER_CUBIC
    )


def _rand_augment(spec: str):
    """A RandAugment-like albumentations policy from a timm-style spec ``rand-m<M>-n<N>`` (defaults m9, n2).

    N ops drawn from geometric and photometric ones, each at a strength proportional to M/10. It approximates timm's
    RandAugment (albumentations has no RandAugment); ``mstd``/``inc`` fields are accepted and ignored.
    """
    import albumentations as A

    fields = dict(
        (f[0], f[1:]) if f[0] in "mn" and f[1:].replace(".", "").isdigit() else (f, "") for f in spec.split("-")[1:]
    )
    m = float(fields.get("m", 9)) / 10.0
    n = int(fields.get("n", 2))
    ops = [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
        A.Posterize(num_bits=(max(1, int(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0), p=1.0),
        A.ColorJitter(brightness=0.9 * m, contrast=0.9 * m, saturation=0.9 * m, hue=0.0, p=1.0),
        A.Sharpen(alpha=(0.0, min(1.0, m)), p=1.0),
    ]
    return A.SomeOf(ops, n=n, replace=True, p=1.0)


def build_train_transform(
    img_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    auto_augment: str | None = None,
    reprob: float = 0.0,
    interpolation: str = "bicubic",
):
    """RandomResizedCrop, horizontal flip, RandAugment-like policy or colour jitter, normalise, random erasing."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
    ops = [
        A.RandomResizedCrop(
            size=(h, w), scale=tuple(scale), ratio=tuple(ratio), interpolation=_interpolation(interpolation)
        ),
    ]
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if auto_augment:
        if not auto_augment.startswith("rand"):
            raise ValueError(
                f"auto_augment {auto_augment!r} is not supported; use a RandAugment spec such as "
                "'rand-m9-mstd0.5-inc1' or leave it empty for colour jitter"
            )
        ops.append(_rand_augment(auto_augment))
    elif color_jitter > 0:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0))
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    if reprob > 0:
        ops.append(A.Erasing(p=reprob, fill="random"))
    ops.append(ToTensorV2())
    return A.Compose(ops)


def build_eval_transform(
    img_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
):
    """Resize the short side to ``img_size / crop_pct``, centre crop ``img_size``, normalise."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
    resize = int(math.floor(max(h, w) / crop_pct))
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize, interpolation=_interpolation(interpolation)),
            A.CenterCrop(height=h, width=w),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends on (seed, epoch, index) only."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class ImageFolderDataset(Dataset):
    """``(image tensor (C, H, W), label)`` pairs of a :class:`FolderSplit`.

    Indices are ints or ``(index, epoch)`` pairs (what :class:`ResumableSampler` yields); the augmentation of a sample
    is reseeded from ``(seed, epoch, index)`` so it does not depend on loader workers or on where a run resumed.
    """

    def __init__(self, split: FolderSplit, transform, seed: int = 0, in_chans: int = 3):
        self.split = split
        self.transform = transform
        self.seed = seed
        self.in_chans = in_chans
        self.unreadable = 0

    def __len__(self) -> int:
        return len(self.split.samples)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        n = len(self.split.samples)
        for attempt in range(min(n, 64)):
            path, label = self.split.samples[(index + attempt) % n]
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("L" if self.in_chans == 1 else "RGB"))
                return (arr[..., None] if arr.ndim == 2 else arr), label
            except Exception as e:  # PIL raises several types for truncated or non-image files
                self.unreadable += 1
                _logger.warning(
                    "skipping unreadable image %s (%s); %d unreadable so far in this loader process",
                    path,
                    e,
                    self.unreadable,
                )
        raise RuntimeError(
            f"64 consecutive images from {self.split.samples[index][0]!r} on could not be read; "
            "check the data directory"
        )

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        image, label = self._load(index)
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(sample_seed(self.seed, epoch, index))
        return self.transform(image=image)["image"], label


class ResumableSampler(Sampler):
    """Shuffled (or ordered) training indices for one rank, as ``(index, epoch)`` pairs, able to start mid-epoch.

    The epoch's permutation comes from ``(seed, epoch)``; it is cut to a multiple of ``world_size * batch_size`` and
    rank ``r`` takes elements ``r, r + world_size, ...``, so the union of the ranks' ``j``-th batches is the
    ``j``-th batch of a 1-process run with the global batch. ``set_epoch(epoch, start_batch)`` skips the batches a
    resumed run has already trained on, without loading them.
    """

    def __init__(
        self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_batch = 0, 0
        self.batches_per_epoch = n // (world_size * batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{n} training images are fewer than one global batch ({world_size} process(es) x "
                f"batch {batch_size}); lower --batch-size or add images"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order = order[: self.batches_per_epoch * self.world_size * self.batch_size]
        mine = order[self.rank :: self.world_size]
        return iter([(i, self.epoch) for i in mine[self.start_batch * self.batch_size :]])


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of ``range(n)``: every sample once over all ranks (no padding)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
