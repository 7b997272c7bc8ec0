"""An offline image-text set: scikit-learn's handwritten digits with templated captions ("a photo of the digit seven").

It ships with scikit-learn (1797 grayscale 8x8 images, 10 classes), so CLIP-style training and zero-shot evaluation
can be shown and tested without downloads. Two disjoint template sets: ``TRAIN_TEMPLATES`` caption the training
split, ``HELDOUT_TEMPLATES`` (wordings never used in training) caption the held-out split and serve as zero-shot
prompts, so a zero-shot score on the held-out split measures new images *and* new wordings.

``digits_image_text`` gives a split as tensors; ``write_digits_csv`` writes both splits as PNG files with image-text
CSVs (the input of ``vizoo clip-train``) in a folder that is also an ImageNet-layout folder for ``vizoo train``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vizoo.data.toy import stratified_split

__all__ = [
    "DIGIT_NAMES",
    "HELDOUT_TEMPLATES",
    "TRAIN_TEMPLATES",
    "ImageTextSet",
    "digits_image_text",
    "write_digits_csv",
]

DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""Class names of the digits, by label."""

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "an image of a {}.",
    "a scan of the digit {}.",
    "a blurry {}.",
    "a small drawing of a {}.",
    "{}",
)
"""Caption templates of the training split."""

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a picture of the number {}.",
    "a low resolution photo of a {}.",
    "this is the digit {}.",
)
"""Caption templates of the held-out split, disjoint from ``TRAIN_TEMPLATES``: zero-shot prompts for held-out images."""

SPLITS = ("train", "heldout")


@dataclass
class ImageTextSet:
    """Images with one caption each.

    ``images``: (N, 3, S, S) float tensor, normalised for the tower. ``captions``: N strings. ``labels``: (N,) class
    indices. ``classnames``: the name of each label. ``templates``: the templates the captions were drawn from (to
    re-caption each step, or as zero-shot prompts).
    """

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def digits_image_text(
    split: str = "train",
    templates: Sequence[str] | None = None,
    image_size: int = 64,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    heldout_fraction: float = 0.25,
    seed: int = 0,
) -> ImageTextSet:
    """scikit-learn's digits as an image-text set: one split, its images resized for a tower, one caption per image.

    Args:
        split: "train" or "heldout": a stratified split (``heldout_fraction`` of each class held out, fixed by
            ``seed``), the same images for every ``image_size``.
        templates: caption templates with a ``{}`` for the digit's name; ``TRAIN_TEMPLATES`` for "train" and
            ``HELDOUT_TEMPLATES`` for "heldout" if None. Image ``i`` gets template ``i mod len(templates)`` after a
            seeded shuffle, so every template captions about as many images of each digit.
        image_size: the tower's input side; the 8x8 images are resized bicubically (clamped to [0, 1]) and repeated
            to 3 channels.
        mean: the tower's normalisation mean (vizoo towers: ImageNet's, as their val transform;
            ``model.visual.preprocess_cfg["mean"]`` of an open_clip model).
        std: the tower's normalisation std (``model.visual.preprocess_cfg["std"]``).
        heldout_fraction: the share of each class held out.
        seed: fixes the split and the template order.
    """
    templates = _check_split_and_templates(split, templates, image_size)
    pixels, y, _ = _digits_pixels(split, image_size, heldout_fraction, seed)
    x = pixels.expand(-1, 3, -1, -1)
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
    images = ((x - mean_t) / std_t).contiguous()
    captions = _captions(y, templates, seed)
    return ImageTextSet(images, captions, y, DIGIT_NAMES, tuple(templates))


def _check_split_and_templates(split: str, templates: Sequence[str] | None, image_size: int) -> tuple[str, ...]:
    """The split's templates (``TRAIN_TEMPLATES`` / ``HELDOUT_TEMPLATES`` if None), or a ValueError saying what
    to do."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if templates is None:
        templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
    if isinstance(templates, str) or not templates:
        raise ValueError("templates must be a non-empty list of strings with a {} for the digit's name")
    for template in templates:
        if template.format("a") == template.format("b"):
            raise ValueError(f"template {template!r} has no {{}} for the digit's name")
    return tuple(templates)


def _digits_pixels(
    split: str, image_size: int, heldout_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One split of the digits: ``(pixels (N, 1, S, S) in [0, 1], labels (N,), indices into load_digits())``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, heldout_idx = stratified_split(labels, heldout_fraction, seed)
    idx = train_idx if split == "train" else heldout_idx
    x = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return x, torch.from_numpy(labels[idx]), idx


def _captions(labels: torch.Tensor, templates: Sequence[str], seed: int) -> list[str]:
    """Image ``i`` gets template ``i mod len(templates)`` after a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(len(labels)) % len(templates)
    return [templates[t].format(DIGIT_NAMES[c]) for t, c in zip(order, labels.tolist())]


def write_digits_csv(
    root: str | os.PathLike,
    image_size: int = 32,
    heldout_fraction: float = 0.25,
    seed: int = 0,
    train_templates: Sequence[str] | None = None,
    heldout_templates: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write the digits as PNG files and image-text CSVs, the input of ``vizoo clip-train``; returns the CSV paths.

    Layout (the same images, splits and captions as ``digits_image_text`` with the same ``heldout_fraction`` and
    ``seed``)::

        root/train.csv                 filepath,caption,label  (filepath relative to the CSV's folder)
        root/heldout.csv
        root/train/<digit name>/<index>.png      8-bit grayscale, image_size x image_size
        root/heldout/<digit name>/<index>.png

    ``root`` is also an ImageNet-layout folder for ``vizoo train --data-dir root --val-split heldout`` (class folders
    named by ``DIGIT_NAMES``), so an image tower pretrained there sees the same images (the LiT recipe). ``label`` holds
    the digit's name, for zero-shot evaluation (``vizoo clip-train --label-column label``).
    """
    from PIL import Image

    root = Path(root)
    paths = {}
    for split, templates in (("train", train_templates), ("heldout", heldout_templates)):
        templates = _check_split_and_templates(split, templates, image_size)
        pixels, labels, idx = _digits_pixels(split, image_size, heldout_fraction, seed)
        captions = _captions(labels, templates, seed)
        arrays = (pixels[:, 0] * 255).round().to(torch.uint8).numpy()
        rows = []
        for array, label, index, caption in zip(arrays, labels.tolist(), idx.tolist(), captions):
            relative = Path(split) / DIGIT_NAMES[label] / f"{index:04d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / relative)
            rows.append({"filepath": relative.as_posix(), "caption": caption, "label": DIGIT_NAMES[label]})
        paths[split] = root / f"{split}.csv"
        with open(paths[split], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["filepath", "caption", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return paths
