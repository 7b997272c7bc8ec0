_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="vssd_tiny",
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:YuhengSSS/VSSD/vssd_tiny_best_ema.pth"),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
