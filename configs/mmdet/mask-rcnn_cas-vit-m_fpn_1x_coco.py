_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
model = dict(backbone=dict(model_name="cas_vit_m"), neck=dict(in_channels=[64, 96, 192, 384]))
