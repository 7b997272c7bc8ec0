"""Bad datasets give clear errors before training starts: no images, or annotations that point to missing files."""

from __future__ import annotations

import pytest
from mm_helpers import RETINANET, det_dataset_cfg, runner_config, shrink_config, write_coco
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from vizoo.mm import check_dataset


def test_empty_coco_dataset(tmp_path):
    init_default_scope("mmdet")
    write_coco(tmp_path, empty=True)
    with pytest.raises(ValueError, match=r"train dataset \(type='CocoDataset' ann_file='ann.json'.*\) has no images"):
        check_dataset(det_dataset_cfg(tmp_path, with_mask=False))

    # Images listed, but none with annotations: filter_empty_gt drops them all; mmdet then builds an empty set.
    write_coco(tmp_path, n=1)
    cfg = det_dataset_cfg(tmp_path, with_mask=False)
    cfg["filter_cfg"] = dict(filter_empty_gt=True, min_size=10**6)
    with pytest.raises(ValueError, match="has no images"):
        check_dataset(cfg)


def test_missing_images_stop_the_runner(tmp_path):
    init_default_scope("mmdet")
    write_coco(tmp_path / "data", n=2, missing=True)
    cfg = runner_config(shrink_config(RETINANET), det_dataset_cfg(tmp_path / "data", False), tmp_path / "w", 1)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FileNotFoundError, match=r"points to 1 missing file\(s\): '.*coins_1.png'"):
        runner.train()


def test_empty_coco_stops_the_runner_with_a_clear_error(tmp_path):
    """The Runner builds its datasets inside train(), before any hook; VizooRunner (the configs' runner_type) turns
    mmengine's "need at least one array to concatenate" into the dataset check's message."""
    from mmengine.registry import RUNNERS

    init_default_scope("mmdet")
    write_coco(tmp_path / "data", empty=True)
    cfg = runner_config(shrink_config(RETINANET), det_dataset_cfg(tmp_path / "data", False), tmp_path / "w", 1)
    assert cfg.runner_type == "VizooRunner"
    runner = RUNNERS.build(cfg)
    with pytest.raises(ValueError, match=r"dataset \(type='CocoDataset' ann_file='ann.json'.*\) has no images"):
        runner.train()
