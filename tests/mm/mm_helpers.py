"""Helpers for the OpenMMLab tests: shipped configs shrunk to ``test_vmamba``, and tiny real-image datasets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from mmengine.config import Config

import vizoo.mm  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
MASK_RCNN = CONFIGS / "mmdet" / "mask-rcnn_vmamba-tiny-s1l8_fpn_1x_coco.py"
RETINANET = CONFIGS / "mmdet" / "retinanet_vmamba-tiny-s1l8_fpn_1x_coco.py"
UPERNET = CONFIGS / "mmseg" / "upernet_vmamba-tiny-s1l8_160k_ade20k-512x512.py"
MASK_RCNN_PLAIN = CONFIGS / "mmdet" / "mask-rcnn_vim-tiny_fpn_1x_coco.py"  # single-stride backbone + pyramid neck
UPERNET_PLAIN = CONFIGS / "mmseg" / "upernet_vim-tiny_160k_ade20k-512x512.py"
MASK_RCNN_STRIDE16 = CONFIGS / "mmdet" / "mask-rcnn_mobilemamba-b1_fpn_1x_coco.py"  # strides 16-64 + TransposedConvFPN
RETINANET_STRIDE16 = CONFIGS / "mmdet" / "retinanet_mobilemamba-b1_fpn_1x_coco.py"

TEST_CHANNELS = (24, 48, 96, 192)  # test_vmamba's feature_info channels
TEST_VIM_WIDTH = 64  # test_vim's width (four blocks, all at stride 16)
TEST_MOBILEMAMBA_CHANNELS = (48, 64, 80)  # test_mobilemamba's three stages, strides 16, 32, 64
NECK = 32  # neck / head width in the shrunk models
IMG = 128  # test image size


def shrink_config(path: Path, num_classes: int = 1) -> Config:
    """The shipped config at ``path`` with ``test_vmamba`` (``test_vim`` where the config has a pyramid neck for a
    plain backbone, ``test_mobilemamba`` where it has a TransposedConvFPN), random init, 32-channel necks and heads
    and few proposals."""
    cfg = Config.fromfile(str(path))
    m = cfg.model
    m.backbone.pop("drop_path_rate", None)
    m.backbone.init_cfg = None  # the shipped ImageNet weights are the full-size model's
    necks = m.neck if isinstance(m.get("neck"), list) else [m.get("neck")]
    if necks[0] is not None and necks[0].type.endswith("Feature2Pyramid"):
        m.backbone.update(model_name="test_vim", out_indices=(0, 1, 2, 3))
        necks[0].update(embed_dim=TEST_VIM_WIDTH, norm_cfg=dict(type="BN", requires_grad=True))
        channels = [TEST_VIM_WIDTH] * 4
        neck = necks[-1]
    elif necks[0] is not None and necks[0].type == "TransposedConvFPN":
        m.backbone.model_name = "test_mobilemamba"
        channels = list(TEST_MOBILEMAMBA_CHANNELS)
        neck = necks[0]
    else:
        m.backbone.model_name = "test_vmamba"
        channels = list(TEST_CHANNELS)
        neck = m.get("neck")
    if m.type == "MaskRCNN":
        neck.update(in_channels=channels, out_channels=NECK)
        m.rpn_head.update(in_channels=NECK, feat_channels=NECK)
        m.roi_head.bbox_roi_extractor.out_channels = NECK
        m.roi_head.mask_roi_extractor.out_channels = NECK
        m.roi_head.bbox_head.update(in_channels=NECK, fc_out_channels=64, num_classes=num_classes)
        m.roi_head.mask_head.update(in_channels=NECK, conv_out_channels=NECK, num_convs=1, num_classes=num_classes)
        m.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        m.train_cfg.rcnn.sampler.num = 64
        m.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    elif m.type == "RetinaNet":
        m.neck.update(in_channels=[channels[i] for i in m.backbone.out_indices], out_channels=NECK)
        m.bbox_head.update(in_channels=NECK, feat_channels=NECK, stacked_convs=1, num_classes=num_classes)
    else:  # mmseg EncoderDecoder + UperNet
        m.data_preprocessor.size = (IMG, IMG)
        m.decode_head.update(in_channels=channels, channels=NECK, num_classes=num_classes + 1)
        m.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
        m.auxiliary_head.update(in_channels=channels[2], channels=NECK, num_classes=num_classes + 1)
        m.auxiliary_head.norm_cfg = dict(type="BN", requires_grad=True)
    return cfg


def coins_samples(n: int = 2, size: tuple[int, int] = (96, 128)) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB image, label map) pairs from scikit-image's ``coins``: Otsu thresholding separates the coins.

    Returns ``n`` variants (flips) of the photo resized to ``size``; labels are 0 for background, 1..k per coin.
    """
    from scipy import ndimage
    from skimage import data, filters, morphology, transform

    gray = transform.resize(data.coins(), size, anti_aliasing=True)
    fg = gray > filters.threshold_otsu(gray)
    fg = morphology.remove_small_objects(ndimage.binary_fill_holes(fg), max_size=20)
    labels, _ = ndimage.label(fg)
    rgb = (np.repeat(gray[..., None], 3, axis=2) * 255).astype(np.uint8)
    samples = [(rgb, labels)]
    for i in range(1, n):
        axis = 1 if i % 2 else 0
        samples.append((np.flip(rgb, axis).copy(), np.flip(labels, axis).copy()))
    return samples[:n]


def write_coco(root: Path, n: int = 2, missing: bool = False, empty: bool = False) -> Path:
    """A COCO-format instance set of ``n`` coin photos under ``root`` (img/ and ann.json, one class "coin")."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    (root / "img").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (rgb, labels) in enumerate([] if empty else coins_samples(n)):
        name = f"coins_{i}.png"
        if not (missing and i == n - 1):
            Image.fromarray(rgb).save(root / "img" / name)
        images.append(dict(id=i + 1, file_name=name, height=rgb.shape[0], width=rgb.shape[1]))
        for k in range(1, labels.max() + 1):
            m = np.asfortranarray((labels == k).astype(np.uint8))
            ys, xs = np.nonzero(m)
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode()
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=i + 1,
                    category_id=1,
                    bbox=box,
                    area=float(m.sum()),
                    segmentation=rle,
                    iscrowd=0,
                )
            )
    ann = root / "ann.json"
    ann.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[dict(id=1, name="coin")])))
    return ann


def write_seg_folder(root: Path, n: int = 2) -> Path:
    """An image + mask folder (img/*.png, ann/*.png; 0 background, 1 coin) of ``n`` coin photos under ``root``."""
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ann").mkdir(parents=True, exist_ok=True)
    for i, (rgb, labels) in enumerate(coins_samples(n)):
        Image.fromarray(rgb).save(root / "img" / f"coins_{i}.png")
        Image.fromarray((labels > 0).astype(np.uint8)).save(root / "ann" / f"coins_{i}.png")
    return root


def det_dataset_cfg(root: Path, with_mask: bool) -> dict:
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=with_mask),
        dict(type="Resize", scale=(IMG, IMG), keep_ratio=True),
        dict(type="PackDetInputs"),
    ]
    return dict(
        type="CocoDataset",
        data_root=str(root),
        ann_file="ann.json",
        data_prefix=dict(img="img/"),
        metainfo=dict(classes=("coin",)),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=pipeline,
    )


def seg_dataset_cfg(root: Path) -> dict:
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="Resize", scale=(IMG, IMG), keep_ratio=False),
        dict(type="PackSegInputs"),
    ]
    return dict(
        type="BaseSegDataset",
        data_root=str(root),
        data_prefix=dict(img_path="img", seg_map_path="ann"),
        img_suffix=".png",
        seg_map_suffix=".png",
        metainfo=dict(classes=("background", "coin"), palette=[[0, 0, 0], [255, 255, 0]]),
        pipeline=pipeline,
    )


def runner_config(cfg: Config, dataset: dict, work_dir: Path, iters: int, lr: float = 1e-3) -> Config:
    """``cfg`` set up for ``iters`` CPU iterations on ``dataset``: batch 2, no validation, a checkpoint at the end."""
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader = dict(
        batch_size=2,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type="InfiniteSampler", shuffle=False),
        dataset=dataset,
    )
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=10**6)
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator"):
        cfg[key] = None
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=iters)
    cfg.custom_hooks = [dict(type="VizooDatasetCheckHook")]
    cfg.log_processor = dict(by_epoch=False)
    cfg.log_level = "WARNING"
    cfg.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
    cfg.randomness = dict(seed=0)
    return cfg
