"""Small real image datasets built from images bundled with scikit-image and scikit-learn (no downloads).

Both return ``(train, val)`` :class:`torch.utils.data.TensorDataset` pairs of ``(images, labels)`` with images
resized to ``img_size``, repeated to 3 channels and normalised with the ImageNet mean/std, so they can be fed
directly to any timm backbone with ``in_chans=3``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import TensorDataset

__all__ = ["LFW_CLASSES", "digits", "lfw_faces", "stratified_split", "to_tensor_datasets"]

LFW_CLASSES: tuple[str, str] = ("non-face", "face")
"""Label names of :func:`lfw_faces` (label 1 = face)."""


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``round(n_c * val_fraction)`` random indices of each class go to validation.

    Returns sorted ``(train_idx, val_idx)``. Every class with at least two samples ends up in both splits.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def to_tensor_datasets(
    images: np.ndarray,
    labels: np.ndarray,
    img_size: int,
    val_fraction: float = 0.25,
    seed: int = 0,
) -> tuple[TensorDataset, TensorDataset]:
    """Turn grayscale ``images`` (N, H, W) with values in [0, 1] into normalised 3-channel train/val datasets."""
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).unsqueeze(1)  # N, 1, H, W
    if tuple(x.shape[-2:]) != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train_idx, val_idx = stratified_split(y.numpy(), val_fraction, seed)
    train_idx_t, val_idx_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return TensorDataset(x[train_idx_t], y[train_idx_t]), TensorDataset(x[val_idx_t], y[val_idx_t])


def lfw_faces(img_size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Faces vs non-faces from ``skimage.data.lfw_subset()``: 200 grayscale 25x25 crops of LFW.

    Per scikit-image's docstring the first 100 images are faces and the last 100 non-faces (background patches
    of the same photos). Labels: 1 = face, 0 = non-face (see :data:`LFW_CLASSES`).
    """
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset())
    if images.shape != (200, 25, 25):
        raise RuntimeError(f"unexpected skimage.data.lfw_subset() shape {images.shape}, expected (200, 25, 25)")
    images = images.astype(np.float32)
    if images.max() > 1.0:  # documented as uint8; recent releases return floats in [0, 1]
        images /= 255.0
    labels = np.concatenate([np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)])
    return to_tensor_datasets(images, labels, img_size, val_fraction, seed)


def digits(img_size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Handwritten digits 0-9 from ``sklearn.datasets.load_digits()``: 1797 grayscale 8x8 images, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    return to_tensor_datasets(images, bunch.target.astype(np.int64), img_size, val_fraction, seed)
