_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="groupmamba_tiny",
        init_cfg=dict(
            type="Pretrained", checkpoint="hf-hub:Abdelrahman-shaker/GroupMamba-Tiny/groupmamba_tiny_ema.pth"
        ),
    ),
    neck=dict(in_channels=[128, 348, 448]),
)
