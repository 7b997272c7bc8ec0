"""Semantic segmentation as two folders: images, and masks of the same stem saved as PNG with one class index per
pixel (``ignore_index``, 255 by default, for unlabelled pixels); albumentations pipelines move masks with the image.

A sample is ``(image, mask)``: image (3, H, W) float, normalised; mask (H, W) int64.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .detection import to_size
from .images import IMAGE_SUFFIXES

_logger = logging.getLogger(__name__)

__all__ = ["SegmentationFolder", "segmentation_transforms"]


def segmentation_transforms(
    img_size: int | tuple[int, int],
    train: bool,
    *,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    crop_scale: tuple[float, float] = (0.5, 1.0),
):
    """albumentations pipeline on (image, mask); train: random resized crop, h-flip, colour jitter; eval: resize.
    Masks are resampled with nearest neighbour."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    h, w = to_size(img_size)
    if train:
        geometric = [
            A.RandomResizedCrop(size=(h, w), scale=crop_scale, ratio=(0.75, 1.333)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5),
        ]
    else:
        geometric = [A.Resize(h, w)]
    return A.Compose([*geometric, A.Normalize(mean=mean, std=std), ToTensorV2()])


class SegmentationFolder(Dataset):
    """Every image in ``image_dir`` with its mask ``mask_dir/<stem>.png``.

    Raises ``FileNotFoundError`` for a missing folder or masks, ``ValueError`` for a folder without images.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        transform=None,
        classes: tuple[str, ...] | None = None,
        ignore_index: int = 255,
    ):
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"segmentation folder {str(folder)!r} does not exist or is not a directory")
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise ValueError(
                f"image folder {str(self.image_dir)!r} has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self.masks = [self.mask_dir / f"{p.stem}.png" for p in self.images]
        missing = [m.name for m in self.masks if not m.is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"{len(missing)} image(s) in {str(self.image_dir)!r} have no mask in {str(self.mask_dir)!r}: {shown}; "
                "each image needs a PNG mask with the same stem"
            )
        self.classes = classes
        self.ignore_index = ignore_index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed (H, W, 3) uint8 image and (H, W) uint8 class-index mask."""
        from PIL import Image

        image = np.asarray(Image.open(self.images[index]).convert("RGB"))
        mask = np.asarray(Image.open(self.masks[index]))
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask {self.masks[index].name} has shape {mask.shape}, expected {image.shape[:2]} (single channel, "
                "same size as the image)"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            image = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        return image, torch.as_tensor(np.asarray(mask), dtype=torch.int64)
