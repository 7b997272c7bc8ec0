"""Checks, before the first iteration, that an mmdet / mmseg dataset has images and that its files exist.

Without them an empty dataset trains for zero steps (or, iteration-based, waits on an empty loader), and an
annotation file that points to missing images fails only when the loader reaches one, deep inside a worker.
"""

from __future__ import annotations

import os

from mmengine.hooks import Hook
from mmengine.runner import Runner

__all__ = ["VizooDatasetCheckHook", "VizooRunner", "check_dataset"]

# Per-sample keys that name files the pipeline will read (mmdet: img_path; mmseg: img_path and seg_map_path).
_FILE_KEYS = ("img_path", "seg_map_path")


def _leaf_datasets(dataset) -> list:
    """The datasets inside mmengine's wrappers (ConcatDataset, RepeatDataset, ClassBalancedDataset)."""
    if hasattr(dataset, "datasets"):
        return [leaf for d in dataset.datasets for leaf in _leaf_datasets(d)]
    if hasattr(dataset, "dataset"):
        return _leaf_datasets(dataset.dataset)
    return [dataset]


def _describe(dataset) -> str:
    parts = [type(dataset).__name__]
    for attr in ("ann_file", "data_root", "data_prefix"):
        value = getattr(dataset, attr, None)
        if value:
            parts.append(f"{attr}={value!r}")
    return " ".join(parts)


def _no_images(description: str, split: str) -> ValueError:
    which = f"the {split} dataset" if split else "the dataset"
    return ValueError(
        f"{which} ({description}) has no images. Check that the annotation file lists images (and, for COCO, that "
        "filter_cfg does not drop them all: images without annotations are dropped by filter_empty_gt=True), and that "
        "the image folder is data_root + data_prefix"
    )


def check_dataset(dataset, split: str = "train") -> None:
    """Raise ``ValueError`` if ``dataset`` has no samples, or ``FileNotFoundError`` listing files it cannot find.

    ``dataset`` is a built dataset or its config dict (built here in the current default scope: mmengine's datasets
    fail on an empty sample list while being built, with "need at least one array to concatenate").
    """
    if isinstance(dataset, dict):
        from mmengine.registry import DATASETS

        try:
            dataset = DATASETS.build(dataset)
        except ValueError as e:
            raise _empty_build_error(e, dataset, split) from e
    for leaf in _leaf_datasets(dataset):
        if hasattr(leaf, "full_init"):
            leaf.full_init()
        if len(leaf) == 0:
            raise _no_images(_describe(leaf), split)
        missing = []
        for i in range(len(leaf)):
            info = leaf.get_data_info(i)
            missing += [info[k] for k in _FILE_KEYS if info.get(k) and not os.path.isfile(info[k])]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (
                f", ... ({len(missing) - 5} more)" if len(missing) > 5 else ""
            )
            raise FileNotFoundError(
                f"the {split} dataset ({_describe(leaf)}) points to {len(missing)} missing file(s): {shown}. "
                "Check data_root and data_prefix, or remove those entries from the annotation file"
            )


def _empty_build_error(error: ValueError, dataset_cfg: dict, split: str) -> ValueError:
    """mmengine's datasets fail on an empty sample list with numpy's "need at least one array to concatenate"."""
    if "at least one array" not in str(error):
        return error
    desc = " ".join(f"{k}={dataset_cfg.get(k)!r}" for k in ("type", "ann_file", "data_root") if dataset_cfg.get(k))
    return _no_images(desc, split)


class VizooRunner(Runner):
    """mmengine's ``Runner`` whose dataloaders report a dataset without samples with ``check_dataset``'s message.

    The Runner builds its datasets inside ``train()``/``val()``/``test()``, before any hook runs, and an empty one
    fails there with numpy's "need at least one array to concatenate". vizoo's configs set
    ``runner_type = "VizooRunner"``, which mmdet's and mmseg's ``tools/train.py`` build through ``RUNNERS``.
    """

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        try:
            return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        except ValueError as e:
            dataset = dataloader.get("dataset") if isinstance(dataloader, dict) else None
            if not isinstance(dataset, dict):
                raise
            error = _empty_build_error(e, dataset, "")
            if error is e:
                raise
            raise error from e


class VizooDatasetCheckHook(Hook):
    """``custom_hooks=[dict(type="VizooDatasetCheckHook")]``: run ``check_dataset`` on the train/val/test sets.

    It sees datasets once the Runner has built them; one that fails while being built (no samples at all) is reported
    by ``VizooRunner`` (or by calling ``check_dataset(cfg.train_dataloader.dataset)`` before a plain Runner).
    """

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        check_dataset(runner.train_dataloader.dataset, "train")

    def before_val(self, runner) -> None:
        check_dataset(runner.val_dataloader.dataset, "val")

    def before_test(self, runner) -> None:
        check_dataset(runner.test_dataloader.dataset, "test")
