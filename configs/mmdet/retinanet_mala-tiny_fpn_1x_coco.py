_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="mala_tiny",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://huggingface.co/aldjalkdf/MAViT/tree/main, set checkpoint=PATH
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
