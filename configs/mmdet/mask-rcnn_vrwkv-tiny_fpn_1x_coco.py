# A plain (single-stride) backbone: four blocks' stride-16 maps, rescaled to strides 4-32 by mmseg's Feature2Pyramid
# (deconvolutions up, max-pooling down) before the FPN; the neck is the two in sequence. The official detection models
# put a ViT-Adapter beside the backbone (detection/configs/mask_rcnn/mask_rcnn_vrwkv_adapter_*); vizoo uses the
# pyramid neck of its other plain backbones, with the official drop-path rate 0.1.
_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
custom_imports = dict(imports=["vizoo.mm", "mmseg.models"])
model = dict(
    backbone=dict(
        model_name="vrwkv_tiny",
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:OpenGVLab/Vision-RWKV/vrwkv_t_in1k_224.pth"),
    ),
    neck=[
        dict(
            type="mmseg.Feature2Pyramid",
            embed_dim=192,
            rescales=[4, 2, 1, 0.5],
            norm_cfg=dict(type="SyncBN", requires_grad=True),
        ),
        dict(type="FPN", in_channels=[192, 192, 192, 192], out_channels=256, num_outs=5),
    ],
)
