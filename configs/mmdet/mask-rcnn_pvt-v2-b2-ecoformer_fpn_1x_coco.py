_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
# EcoFormer fits its hashing on the first training batch (vizoo.layers.ecoformer).
model = dict(
    backbone=dict(
        model_name="pvt_v2_b2_ecoformer",
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://github.com/ziplab/EcoFormer/releases/download/v1.0/pvtv2_b2_ecoformer.pth",
        ),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
)
