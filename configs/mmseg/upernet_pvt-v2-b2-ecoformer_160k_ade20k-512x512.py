_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
# EcoFormer fits its hashing on the first training batch (vizoo.layers.ecoformer).
model = dict(
    backbone=dict(
        model_name="pvt_v2_b2_ecoformer",
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://github.com/ziplab/EcoFormer/releases/download/v1.0/pvtv2_b2_ecoformer.pth",
        ),
    ),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320),
)
