_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="groupmamba_tiny",
        init_cfg=dict(
            type="Pretrained", checkpoint="hf-hub:Abdelrahman-shaker/GroupMamba-Tiny/groupmamba_tiny_ema.pth"
        ),
    ),
    decode_head=dict(in_channels=[64, 128, 348, 448]),
    auxiliary_head=dict(in_channels=348),
)
