"""ImageNet-style validation of a classifier on an image folder: top-1 / top-5 with the model's own eval transform.

The transform is timm's, resolved from the model's pretrained cfg as timm's ``validate.py`` does
(``resolve_data_config`` with the test size, then ``create_transform``: resize by ``crop_pct``, centre crop, the cfg's
interpolation, mean and std), so a converted official checkpoint is scored as its paper scored it.

The folder holds one sub-folder per class (``scan_folder``). Each class folder is mapped to a logit of the model:

- with a class map (a text file, one class name per line, line i naming logit i: timm's ``--class-map`` format, and
  the ``classes.txt`` that ``vizoo train`` writes), by name;
- else, for an ImageNet classifier (timm's ``infer_imagenet_subset``) whose folders are all synset ids
  (``n01440764``), through timm's ``ImageNetInfo``, so a subset of ImageNet's classes scores against the right
  logits;
- else, when there are as many folders as classes, in sorted folder order (ImageFolder's and ``vizoo train``'s).

Anything else is an error naming the folders that do not map.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from vizoo.train.data import FolderSplit, ImageFolderDataset, scan_folder

__all__ = ["ValidationResult", "class_indices", "eval_transform", "validate"]


@dataclass
class ValidationResult:
    """What :func:`validate` measured; accuracies in percent, ``top5`` is top-min(5, classes)."""

    top1: float
    top5: float
    loss: float
    images: int
    classes: int
    data_config: dict


def eval_transform(model: nn.Module):
    """timm's eval transform of ``model`` (PIL image -> (C, H, W) tensor) and the data config it was built from."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model, use_test_size=True)
    return create_transform(**config, is_training=False), config


class _PilTransform:
    """Adapts a torchvision-style PIL transform to the ``transform(image=array)["image"]`` call of
    ``ImageFolderDataset`` (HWC uint8 arrays)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: np.ndarray) -> dict:
        from PIL import Image

        return {"image": self.transform(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image))}


def _read_class_map(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class map {str(path)!r} does not exist; give a text file with one class name per line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"class map {str(path)!r} names a class twice; each line must be a distinct class")
    return names


def class_indices(classes: list[str], model: nn.Module, class_map: str | os.PathLike | None = None) -> list[int]:
    """The logit index of each class folder name in ``classes`` (module docstring); ValueError when they do not map.

    Args:
        classes: the class folder names.
        model: the classifier (its ``num_classes`` and, for ImageNet synsets, which ImageNet subset it predicts).
        class_map: a text file naming logit i on line i.
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    num_classes = model.num_classes
    if class_map is not None:
        names = _read_class_map(class_map)
        if len(names) != num_classes:
            raise ValueError(f"class map {str(class_map)!r} names {len(names)} classes; the model has {num_classes}")
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ValueError(
                f"class folders not in the class map {str(class_map)!r}: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''}; rename them or remove them"
            )
        return [index[c] for c in classes]
    subset = infer_imagenet_subset(model)
    if subset is not None:
        index = {n: i for i, n in enumerate(ImageNetInfo(subset).label_names())}
        outside = [c for c in classes if c not in index]
        if len(outside) < len(classes):  # some folders are synsets: all of them must be
            if outside:
                raise ValueError(
                    f"class folders that are not {subset} synset ids: {', '.join(outside[:10])}"
                    f"{' ...' if len(outside) > 10 else ''}; name every folder by its synset (n01440764) or pass "
                    "--class-map"
                )
            return [index[c] for c in classes]
    if len(classes) == num_classes:
        return list(range(num_classes))
    raise ValueError(
        f"{len(classes)} class folders do not map to the model's {num_classes} classes: they are not "
        f"{subset or 'ImageNet'} synset ids (e.g. {classes[0]!r}) and not one folder per class; pass --class-map "
        "FILE naming the model's classes, one per line in logit order (vizoo train writes classes.txt)"
    )


def validate(
    model: nn.Module,
    data_dir: str | os.PathLike,
    *,
    class_map: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ValidationResult:
    """Top-1 / top-5 (percent) and the mean cross-entropy of ``model`` on the class folders of ``data_dir``.

    Args:
        model: a timm classifier; its pretrained cfg sets the eval transform (:func:`eval_transform`).
        data_dir: a folder of class folders (``scan_folder``); unreadable images are skipped with a warning, as in
            training.
        class_map: a text file naming logit i on line i (:func:`class_indices`).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        device: where the model runs.
        progress: show a tqdm bar (on stderr).

    Raises:
        ValueError: a missing or empty folder, an empty class folder, or class folders that do not map to the
            model's classes.
    """
    from tqdm import tqdm

    from vizoo.train.classification import evaluate

    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch size must be positive and workers non-negative, got {batch_size} and {workers}")
    split = scan_folder(data_dir, "validation")
    index = class_indices(split.classes, model, class_map)
    samples = [(path, index[label]) for path, label in split.samples]
    transform, config = eval_transform(model)
    dataset = ImageFolderDataset(
        FolderSplit(split.root, split.classes, samples), _PilTransform(transform), in_chans=config["input_size"][0]
    )
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    bar = tqdm(loader, desc="validating", unit="batch", file=sys.stderr, disable=not progress or None, leave=False)
    metrics = evaluate(model.to(device), bar, device)
    return ValidationResult(
        top1=metrics["top1"],
        top5=metrics["top5"],
        loss=metrics["loss"],
        images=len(dataset),
        classes=len(split.classes),
        data_config=config,
    )
