_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
# Windows of stages 3-4 and drop_path as the official ADE20K config (NVlabs/MambaVision semantic_segmentation/configs/
# mamba_vision/mamba_vision_160k_ade20k-512x512_tiny.py: window_size 8, 8, 64, 32; drop_path_rate 0.3).
model = dict(
    backbone=dict(
        model_name="mambavision_tiny",
        window_size=(64, 32),
        drop_path_rate=0.3,
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:nvidia/MambaVision-T-1K/mambavision_tiny_1k.pth.tar"),
    ),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320),
)
