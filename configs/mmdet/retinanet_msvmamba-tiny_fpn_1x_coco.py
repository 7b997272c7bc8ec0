_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(backbone=dict(model_name="msvmamba_tiny"), neck=dict(in_channels=[192, 384, 768]))
