_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="cas_vit_m",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://github.com/Tianfang-Zhang/CAS-ViT/blob/main/MODEL_ZOO.md, set checkpoint=PATH
    ),
    neck=dict(in_channels=[64, 96, 192, 384]),
)
