"""Mask R-CNN, RetinaNet (mmdet) and UperNet (mmseg) on VizooBackbone, built from the shipped configs: loss,
backward, predict, and a few iterations of mmengine's Runner on coin photos with the loss going down."""

from __future__ import annotations

import pytest
import torch
from mm_helpers import (
    MASK_RCNN,
    MASK_RCNN_PLAIN,
    MASK_RCNN_STRIDE16,
    RETINANET,
    RETINANET_STRIDE16,
    UPERNET,
    UPERNET_PLAIN,
    det_dataset_cfg,
    runner_config,
    seg_dataset_cfg,
    shrink_config,
    write_coco,
    write_seg_folder,
)
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

CASES = {
    "mask_rcnn": (MASK_RCNN, "mmdet"),
    "retinanet": (RETINANET, "mmdet"),
    "upernet": (UPERNET, "mmseg"),
}
# Plain (single-stride) backbones behind a learned feature pyramid: Vim's and LightNet's configs.
PLAIN_CASES = {
    "mask_rcnn_plain": (MASK_RCNN_PLAIN, "mmdet"),
    "upernet_plain": (UPERNET_PLAIN, "mmseg"),
}
# Stride-16-to-64 backbones behind TransposedConvFPN, which adds the finer levels: MobileMamba's configs.
STRIDE16_CASES = {
    "mask_rcnn_stride16": (MASK_RCNN_STRIDE16, "mmdet"),
    "retinanet_stride16": (RETINANET_STRIDE16, "mmdet"),
}


def _registries(scope: str):
    if scope == "mmdet":
        from mmdet.registry import DATASETS, MODELS
    else:
        from mmseg.registry import DATASETS, MODELS
    return DATASETS, MODELS


def _dataset_cfg(name: str, root):
    if name.startswith("upernet"):
        return seg_dataset_cfg(write_seg_folder(root))
    write_coco(root)
    return det_dataset_cfg(root, with_mask=name.startswith("mask_rcnn"))


@pytest.mark.parametrize("name", list(CASES) + list(PLAIN_CASES) + list(STRIDE16_CASES))
def test_loss_backward_predict(name, tmp_path):
    path, scope = {**CASES, **PLAIN_CASES, **STRIDE16_CASES}[name]
    init_default_scope(scope)
    datasets, models = _registries(scope)
    cfg = shrink_config(path)
    model = models.build(cfg.model)
    model.init_weights()
    backbone = model.backbone
    expected = "test_vim" if name in PLAIN_CASES else "test_mobilemamba" if name in STRIDE16_CASES else "test_vmamba"
    assert type(backbone).__name__ == "VizooBackbone" and backbone.model_name == expected

    dataset = datasets.build(_dataset_cfg(name, tmp_path))
    batch = pseudo_collate([dataset[0], dataset[1]])

    model.train()
    data = model.data_preprocessor(batch, training=True)
    feats = backbone(data["inputs"])
    assert isinstance(feats, tuple) and all(f.dim() == 4 for f in feats)
    assert [f.shape[1] for f in feats] == list(backbone.out_channels)
    assert [data["inputs"].shape[-1] // f.shape[-1] for f in feats] == list(backbone.strides)

    losses = model(**data, mode="loss")
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "every backbone parameter gets a gradient"

    model.eval()
    with torch.no_grad():
        results = model.test_step(batch)
    assert len(results) == 2
    if scope == "mmdet":
        pred = results[0].pred_instances
        assert pred.bboxes.shape[-1] == 4 and len(pred.scores) == len(pred.labels)
        if name.startswith("mask_rcnn"):
            assert pred.masks.shape[0] == len(pred.bboxes)
    else:
        seg = results[0].pred_sem_seg.data
        assert seg.shape[-2:] == results[0].ori_shape


class _LossRecorder(Hook):
    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(sum(float(outputs[k]) for k in self.keys))


# Which logged losses must fall, and the learning rate. In Mask R-CNN's first iterations the RoI head's box and mask
# losses rise while the RPN learns (better proposals give the RoI head more, harder positives), so its check is on
# the RPN losses and the RoI classification loss.
RUNNER_LOSSES = {
    "mask_rcnn": (("loss_rpn_cls", "loss_rpn_bbox", "loss_cls"), 3e-4),
    "retinanet": (("loss",), 1e-3),
    "upernet": (("loss",), 1e-3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_runner_loss_goes_down(name, tmp_path):
    path, scope = CASES[name]
    init_default_scope(scope)
    iters = 8
    keys, lr = RUNNER_LOSSES[name]
    cfg = runner_config(shrink_config(path), _dataset_cfg(name, tmp_path / "data"), tmp_path / "work", iters, lr)
    runner = Runner.from_cfg(cfg)
    recorder = _LossRecorder(keys)
    runner.register_hook(recorder)
    runner.train()
    first, last = recorder.losses[:2], recorder.losses[-2:]
    assert len(recorder.losses) == iters
    assert sum(last) < sum(first), f"loss did not go down: {recorder.losses}"
    assert (tmp_path / "work" / f"iter_{iters}.pth").is_file()


def test_upernet_tests_whole_images_of_any_size(tmp_path):
    """mmseg's whole-image testing feeds the resized image as it is (ADE20K: 512 x 683, ...); the shipped configs pad
    it to a multiple of 32 for vizoo's backbones, and the prediction comes back unpadded at the original size."""
    init_default_scope("mmseg")
    datasets, models = _registries("mmseg")
    model = models.build(shrink_config(UPERNET).model).eval()
    cfg = seg_dataset_cfg(write_seg_folder(tmp_path))
    cfg["pipeline"][2] = dict(type="Resize", scale=(140, 100), keep_ratio=False)  # (w, h): neither a multiple of 32
    batch = pseudo_collate([datasets.build(cfg)[0]])
    with torch.no_grad():
        result = model.test_step(batch)[0]
    assert tuple(result.pred_sem_seg.data.shape[-2:]) == result.ori_shape
