_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(backbone=dict(model_name="cas_vit_m"), neck=dict(in_channels=[96, 192, 384]))
