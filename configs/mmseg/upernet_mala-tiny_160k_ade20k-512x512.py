_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="mala_tiny",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://huggingface.co/aldjalkdf/MAViT/tree/main, set checkpoint=PATH
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
