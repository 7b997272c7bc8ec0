_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="vssd_tiny",
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:YuhengSSS/VSSD/vssd_tiny_best_ema.pth"),
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
