_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="vmamba_tiny_s1l8",
        drop_path_rate=0.2,
        init_cfg=dict(
            type="Pretrained",
            checkpoint="https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth",
        ),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
