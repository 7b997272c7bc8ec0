# A plain (single-stride) backbone: four blocks' stride-16 maps, rescaled to strides 4-32 by a learned feature pyramid
# (mmseg's Feature2Pyramid: deconvolutions up, max-pooling down). The official UperNet models put a ViT-Adapter beside
# the backbone (segmentation/configs/ade20k/upernet_vrwkv_adapter_*); vizoo uses the pyramid neck of its other plain
# backbones. At 512x512 the position embedding is resampled from 14x14 to 32x32 and the WKV decay divided by 1024
# tokens, as the official backbone does.
_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
model = dict(
    backbone=dict(
        model_name="vrwkv_tiny",
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:OpenGVLab/Vision-RWKV/vrwkv_t_in1k_224.pth"),
    ),
    neck=dict(
        type="Feature2Pyramid", embed_dim=192, rescales=[4, 2, 1, 0.5], norm_cfg=dict(type="SyncBN", requires_grad=True)
    ),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=192),
    auxiliary_head=dict(in_channels=192),
)
