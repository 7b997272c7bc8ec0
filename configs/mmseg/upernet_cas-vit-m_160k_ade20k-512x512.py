_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="cas_vit_m",
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://github.com/Tianfang-Zhang/CAS-ViT/blob/main/MODEL_ZOO.md, set checkpoint=PATH
    ),
    decode_head=dict(in_channels=[64, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192),
)
