"""Every shipped config parses, builds (on the meta device, no memory), and its neck fits the backbone's channels."""

from __future__ import annotations

import pytest
import timm
import torch
from mm_helpers import CONFIGS, MASK_RCNN, shrink_config
from mmengine.config import Config
from mmengine.registry import init_default_scope

SHIPPED = sorted(p for p in CONFIGS.glob("mm*/*.py"))


def _in_channels(model_cfg) -> list[int]:
    """The channels the model expects from its backbone: the neck's (a list of necks: the first's), or the head's."""
    neck = model_cfg.get("neck")
    if isinstance(neck, list):
        neck = neck[0]
    if neck is not None and neck.type.endswith("Feature2Pyramid"):  # one width in, one map per rescale
        return [neck.embed_dim] * len(neck.rescales)
    if model_cfg.type == "EncoderDecoder":
        return list(model_cfg.decode_head.in_channels)
    return list(neck.in_channels)


def test_configs_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {
        "mask-rcnn_vmamba-tiny-s1l8_fpn_1x_coco.py",
        "retinanet_vmamba-tiny-s1l8_fpn_1x_coco.py",
        "upernet_vmamba-tiny-s1l8_160k_ade20k-512x512.py",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_and_channels_match(path):
    cfg = Config.fromfile(str(path))
    assert "vizoo.mm" in cfg.custom_imports.imports
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.type == "VizooBackbone"
    with torch.device("meta"):
        features = timm.create_model(
            backbone_cfg.model_name, features_only=True, out_indices=backbone_cfg.out_indices, feature_cls="getter"
        )
    assert _in_channels(cfg.model) == features.feature_info.channels()
    if isinstance(cfg.model.get("neck"), list):  # a pyramid neck, then an FPN on its maps
        pyramid, fpn = cfg.model.neck
        assert fpn.in_channels == [pyramid.embed_dim] * len(pyramid.rescales)
    if cfg.model.type == "EncoderDecoder":
        aux = cfg.model.auxiliary_head
        assert aux.in_channels == cfg.model.decode_head.in_channels[aux.in_index]
        assert cfg.train_dataloader.dataset.data_root == "data/ade/ADEChallengeData2016"
    else:
        assert cfg.train_dataloader.dataset.data_root == "data/coco/"
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == "AdamW" and cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0.0

    init_default_scope(cfg.default_scope)
    backbone_cfg.init_cfg = None  # no ImageNet download here: tests/mm/test_pretrained_configs.py loads them offline
    if cfg.default_scope == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    assert model.backbone.out_channels == tuple(features.feature_info.channels())


def test_no_weight_decay_on_norms_and_ssm_parameters():
    """The shipped optimiser settings put A_logs, Ds, dt biases and every norm in groups without weight decay."""
    from mmengine.optim import build_optim_wrapper

    cfg = shrink_config(MASK_RCNN)
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    no_decay_leaves = set(model.backbone.model.no_weight_decay_leaves)
    assert {"A_logs", "Ds"} <= no_decay_leaves
    for name, p in names.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in no_decay_leaves or ".norm" in name:
            assert decay[id(p)] == 0.0, name
    assert decay[id(names["backbone.body.model.stages.0.blocks.0.op.in_proj.weight"])] == 0.05
