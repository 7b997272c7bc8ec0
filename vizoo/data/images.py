"""Images as model inputs: scikit-image's bundled photographs, a folder of image files, or synthetic images with a
photograph's spectrum for when scikit-image (the ``demo`` extra) is not installed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# scikit-image sample photographs that ship inside the package (no download).
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "coins",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def to_input(
    images: list[np.ndarray],
    shape: tuple[int, int, int],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """HxW(xC) uint8/float arrays -> (N, C, H, W) float tensor resized (bilinear) and normalised."""
    c, h, w = shape
    batch = []
    for img in images:
        x = torch.tensor(np.array(img), dtype=torch.float32)
        if x.max() > 1.0:
            x = x / 255.0
        x = x[..., None] if x.dim() == 2 else x[..., :3]
        x = x.permute(2, 0, 1)
        x = (
            x.expand(c, -1, -1)
            if x.shape[0] == 1
            else x[:c]
            if c <= x.shape[0]
            else x.mean(0, keepdim=True).expand(c, -1, -1)
        )
        batch.append(F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0])
    x = torch.stack(batch)
    mean = torch.tensor(mean or IMAGENET_DEFAULT_MEAN)[:c] if c == 3 else torch.full((c,), 0.5)
    std = torch.tensor(std or IMAGENET_DEFAULT_STD)[:c] if c == 3 else torch.full((c,), 0.25)
    return (x - mean[:, None, None]) / std[:, None, None]


def photo_batch(shape: tuple[int, int, int], mean=None, std=None, count: int = 4) -> torch.Tensor:
    """``count`` scikit-image sample photographs as a normalised (count, C, H, W) batch."""
    import skimage.data

    names = [SKIMAGE_PHOTOS[i % len(SKIMAGE_PHOTOS)] for i in range(count)]
    return to_input([getattr(skimage.data, name)() for name in names], shape, mean, std)


def synthetic_photos(count: int, size: int = 128) -> list[np.ndarray]:
    """``count`` deterministic (size, size, 3) uint8 images with a photograph's 1/f amplitude spectrum.

    Structure at every scale, as in photographs (whose amplitude spectrum falls as 1/f), rather than white noise,
    whose activations sit far from those of real inputs; the channels share most of their structure, as colour
    channels do. Image i is the same on every machine (numpy's PCG64 stream from seed i).
    """
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    images = []
    for i in range(count):
        rng = np.random.default_rng(i)
        spectrum = rng.standard_normal((4, size, size // 2 + 1)) + 1j * rng.standard_normal((4, size, size // 2 + 1))
        fields = np.fft.irfft2(spectrum * amplitude, s=(size, size))  # (4, size, size): shared, then one per channel
        image = 0.8 * fields[0] + 0.2 * fields[1:]
        low, high = np.percentile(image, (1, 99))
        images.append((np.clip((image - low) / (high - low), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))
    return images


def image_folder(folder: str | os.PathLike, shape: tuple[int, int, int], mean=None, std=None) -> torch.Tensor:
    """Every image file directly in ``folder`` (sorted by name) as a normalised batch; clear errors when none."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"image folder {str(folder)!r} has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "put a few representative images there"
        )
    return to_input([np.asarray(Image.open(p).convert("RGB")) for p in files], shape, mean, std)
