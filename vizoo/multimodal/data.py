"""An offline image-text set: scikit-learn's handwritten digits with templated captions ("a photo of the digit seven").

It ships with scikit-learn (1797 grayscale 8x8 images, 10 classes), so CLIP-style training and zero-shot evaluation
can be shown and tested without downloads. Two disjoint template sets: ``TRAIN_TEMPLATES`` caption the training
split, ``HELDOUT_TEMPLATES`` (wordings never used in training) caption the held-out split and serve as zero-shot
prompts, so a zero-shot score on the held-out split measures new images *and* new wordings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vizoo.data.toy import stratified_split

__all__ = ["DIGIT_NAMES", "HELDOUT_TEMPLATES", "TRAIN_TEMPLATES", "ImageTextSet", "digits_image_text"]

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
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, heldout_idx = stratified_split(labels, heldout_fraction, seed)
    idx = train_idx if split == "train" else heldout_idx
    x = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    x = x.expand(-1, 3, -1, -1)
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
    images = ((x - mean_t) / std_t).contiguous()
    y = torch.from_numpy(labels[idx])
    order = np.random.default_rng(seed).permutation(len(idx)) % len(templates)
    captions = [templates[t].format(DIGIT_NAMES[c]) for t, c in zip(order, y.tolist())]
    return ImageTextSet(images, captions, y, DIGIT_NAMES, tuple(templates))
