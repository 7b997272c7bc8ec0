_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
# Windows of stages 3-4 as the official detection configs (NVlabs/MambaVision object_detection/configs/mamba_vision:
# window_size 8, 8, 112, 56): one window holds the whole stage-3 or stage-4 map of a 1333x800 COCO image.
model = dict(
    backbone=dict(
        model_name="mambavision_tiny",
        window_size=(112, 56),
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:nvidia/MambaVision-T-1K/mambavision_tiny_1k.pth.tar"),
    ),
    neck=dict(in_channels=[80, 160, 320, 640]),
)
