_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
model = dict(backbone=dict(model_name="mlla_tiny"), neck=dict(in_channels=[64, 128, 256, 512]))
