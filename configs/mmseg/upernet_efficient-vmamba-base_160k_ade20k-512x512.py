_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="efficient_vmamba_base",
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:TerryPei/EfficientVMamba-Base/efficient_vmamba_base.ckpt"),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
