"""Real detection and segmentation data from scikit-image's ``coins`` photograph (no download).

Coins are found by classical image processing: background subtraction (a large grey opening), Otsu's threshold,
opening, small-object removal and the convex hull of each object. The top row, where the uneven lighting defeats the
threshold, is left out; the three lower rows give 18 coins with clean masks. Tiles are cut from the left part
(training) and the right part (validation), so validation coins are never seen in training; training tiles are also
flipped. Coins less than ``min_visible`` inside a tile are marked ``iscrowd`` (ignored by COCOeval and by training).

``build_coins_datasets(root)`` writes::

    root/images/{train,val}/*.png              RGB tiles
    root/annotations/{train,val}.json          COCO detection, one category "coin"
    root/masks/{train,val}/*.png               0 background, 1 coin
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

__all__ = ["COINS_CLASSES", "build_coins_datasets", "coin_labels"]

#: Segmentation classes of the coins data (index = mask value).
COINS_CLASSES: tuple[str, str] = ("background", "coin")

_ROWS = (88, 303)  # rows 2-4 of the photograph
_SPLIT_X = 240  # training tiles from x < 240, validation tiles from x >= 240


def coin_labels() -> tuple[np.ndarray, np.ndarray]:
    """The coins photograph (303, 384) uint8 and its label map (303, 384) int (0 background, 1..n one per coin)."""
    import skimage.data
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology

    image = skimage.data.coins()
    x = image.astype(np.float64)
    flat = x - ndi.uniform_filter(ndi.grey_opening(x, size=(71, 71)), 31)
    mask = flat > filters.threshold_otsu(flat)
    mask = morphology.binary_opening(mask, morphology.disk(2))
    mask = measure.label(mask) > 0
    labels = measure.label(mask)
    for region in measure.regionprops(labels):
        if region.area < 300:
            labels[labels == region.label] = 0
    mask = morphology.convex_hull_object(labels > 0)
    return image, measure.label(mask)


def _tiles(height: int, width: int, tile: int, step: int) -> list[tuple[int, int]]:
    ys = sorted({*range(0, height - tile + 1, step), height - tile})
    xs = sorted({*range(0, width - tile + 1, step), width - tile})
    return [(y, x) for y in ys for x in xs]


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def build_coins_datasets(
    root: str | os.PathLike,
    tile: int = 128,
    size: int = 96,
    step: int = 24,
    min_visible: float = 0.4,
) -> dict[str, Path]:
    """Write the coins detection (COCO) and segmentation (folders) datasets under ``root``; return their paths.

    Tiles of ``tile`` source pixels every ``step`` pixels, saved at ``size`` x ``size``. Keys of the result:
    ``{split}_images``, ``{split}_ann``, ``{split}_masks`` for split in ("train", "val").
    """
    from PIL import Image

    root = Path(root)
    image, labels = coin_labels()
    top, bottom = _ROWS
    image, labels = image[top:bottom], labels[top:bottom]
    areas = np.bincount(labels.ravel())
    scale = size / tile
    paths: dict[str, Path] = {}
    for split, (x0, x1) in {"train": (0, _SPLIT_X), "val": (_SPLIT_X, image.shape[1])}.items():
        region_img, region_lab = image[:, x0:x1], labels[:, x0:x1]
        img_dir, mask_dir, ann_dir = root / "images" / split, root / "masks" / split, root / "annotations"
        for d in (img_dir, mask_dir, ann_dir):
            d.mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "coin"}]}
        flips = ("none", "h", "v") if split == "train" else ("none",)
        for y, x in _tiles(*region_img.shape, tile, step):
            for flip in flips:
                crop_img, crop_lab = region_img[y : y + tile, x : x + tile], region_lab[y : y + tile, x : x + tile]
                if flip == "h":
                    crop_img, crop_lab = crop_img[:, ::-1], crop_lab[:, ::-1]
                elif flip == "v":
                    crop_img, crop_lab = crop_img[::-1], crop_lab[::-1]
                image_id = len(coco["images"]) + 1
                name = f"{split}_{image_id:04d}.png"
                rgb = np.repeat(_resize(np.ascontiguousarray(crop_img), size, nearest=False)[..., None], 3, axis=2)
                Image.fromarray(rgb).save(img_dir / name)
                small_lab = _resize(np.ascontiguousarray(crop_lab).astype(np.int32), size, nearest=True)
                Image.fromarray((small_lab > 0).astype(np.uint8)).save(mask_dir / name)
                coco["images"].append({"id": image_id, "file_name": name, "height": size, "width": size})
                for lab in np.unique(crop_lab[crop_lab > 0]):
                    ys, xs = np.nonzero(crop_lab == lab)
                    x_min, y_min = xs.min() * scale, ys.min() * scale
                    w, h = (xs.max() + 1) * scale - x_min, (ys.max() + 1) * scale - y_min
                    coco["annotations"].append(
                        {
                            "id": len(coco["annotations"]) + 1,
                            "image_id": image_id,
                            "category_id": 1,
                            "bbox": [float(x_min), float(y_min), float(w), float(h)],
                            "area": float(len(ys) * scale * scale),
                            "iscrowd": int(len(ys) < min_visible * areas[lab]),
                        }
                    )
        ann = ann_dir / f"{split}.json"
        ann.write_text(json.dumps(coco))
        paths.update({f"{split}_images": img_dir, f"{split}_ann": ann, f"{split}_masks": mask_dir})
        n_coins = sum(1 for a in coco["annotations"] if not a["iscrowd"])
        _logger.info("coins %s: %d tiles, %d coin boxes", split, len(coco["images"]), n_coins)
    return paths
