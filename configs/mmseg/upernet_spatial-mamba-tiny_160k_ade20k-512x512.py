_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="spatial_mamba_tiny",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://drive.google.com/file/d/19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW/view, set checkpoint=PATH
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
