_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(model_name="cas_vit_m"),
    decode_head=dict(in_channels=[64, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192),
)
