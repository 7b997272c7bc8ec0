_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
model = dict(
    backbone=dict(
        model_name="mlla_tiny",
        init_cfg=dict(type="Pretrained", checkpoint="https://cloud.tsinghua.edu.cn/f/7a19712877cb4242889c/?dl=1"),
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
