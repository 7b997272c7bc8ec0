_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="msvmamba_tiny",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://drive.google.com/drive/folders/1ddNWk89ohcxxMuVEaJ2Y5A6xeBKgA7lU, set checkpoint=PATH
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
