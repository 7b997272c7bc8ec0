_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="spatial_mamba_tiny",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://drive.google.com/file/d/19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW/view, set checkpoint=PATH
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
