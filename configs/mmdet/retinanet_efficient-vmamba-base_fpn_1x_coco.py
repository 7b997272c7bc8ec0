_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="efficient_vmamba_base",
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:TerryPei/EfficientVMamba-Base/efficient_vmamba_base.ckpt"),
    ),
    neck=dict(in_channels=[192, 384, 768]),
)
