_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="mlla_tiny",
        init_cfg=dict(type="Pretrained", checkpoint="https://cloud.tsinghua.edu.cn/f/7a19712877cb4242889c/?dl=1"),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
