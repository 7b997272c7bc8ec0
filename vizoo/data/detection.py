"""COCO-format detection datasets (through pycocotools) and albumentations pipelines that move boxes with the image.

A sample is ``(image, target)``: image (3, H, W) float, normalised; target ``{"boxes": (G, 4) x1y1x2y2 float in the
transformed image's pixels, "labels": (G,) int64 in [0, K), "image_id": int, "orig_size": (h, w), "size": (H, W)}``.
Category ids are mapped to contiguous labels in sorted id order (``dataset.cat_ids[label]`` gives the id back).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

_logger = logging.getLogger(__name__)

__all__ = ["CocoDetection", "collate_detection", "detection_transforms", "to_size"]


def to_size(img_size: int | tuple[int, int]) -> tuple[int, int]:
    """An int or (height, width) -> (height, width)."""
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def detection_transforms(
    img_size: int | tuple[int, int],
    train: bool,
    *,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    min_visibility: float = 0.3,
):
    """albumentations pipeline on (image, bboxes as pascal_voc, labels); train: random resized crop, h-flip and
    colour jitter; eval: resize. Boxes less than ``min_visibility`` visible after a crop are dropped."""
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
    return A.Compose(
        [*geometric, A.Normalize(mean=mean, std=std), ToTensorV2()],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True
        ),
    )


class CocoDetection(Dataset):
    """Images listed in a COCO annotation file, read from ``image_dir``; crowd boxes and empty boxes are skipped.

    Raises ``FileNotFoundError`` for a missing annotation file or image files, ``ValueError`` for a file without
    images or categories.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, transform=None):
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {str(ann_file)!r} does not exist")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(ann_file))
        self.ann_file = ann_file
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise ValueError(f"{str(ann_file)!r} lists no images; a COCO file needs a non-empty 'images' list")
        self.cat_ids = sorted(self.coco.cats)
        if not self.cat_ids:
            raise ValueError(f"{str(ann_file)!r} has no categories; add a 'categories' list")
        self.classes = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self._label = {c: i for i, c in enumerate(self.cat_ids)}
        missing = [
            self.coco.imgs[i]["file_name"]
            for i in self.ids
            if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()
        ]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"{str(ann_file)!r} points to {len(missing)} image(s) missing from {str(self.image_dir)!r}: {shown}; "
                "check image_dir or the file_name entries"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Untransformed (H, W, 3) uint8 image, (G, 4) x1y1x2y2 boxes and (G,) labels."""
        from PIL import Image

        info = self.coco.imgs[self.ids[index]]
        image = np.asarray(Image.open(self.image_dir / info["file_name"]).convert("RGB"))
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(self.ids[index], []):
            x, y, bw, bh = ann["bbox"]
            if ann.get("iscrowd", 0) or bw <= 1 or bh <= 1:
                continue
            boxes.append([x, y, min(x + bw, image.shape[1]), min(y + bh, image.shape[0])])
            labels.append(self._label[ann["category_id"]])
        return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, boxes, labels = self.load(index)
        orig_size = image.shape[:2]
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            image, boxes, labels = out["image"], np.asarray(out["bboxes"]), np.asarray(out["labels"])
        else:
            image = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": int(self.ids[index]),
            "orig_size": tuple(int(s) for s in orig_size),
            "size": tuple(int(s) for s in image.shape[-2:]),
        }
        return image, target


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack same-size images into (B, 3, H, W); targets stay a list."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
