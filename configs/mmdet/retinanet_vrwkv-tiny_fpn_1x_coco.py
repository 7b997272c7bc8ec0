# A plain (single-stride) backbone: four blocks' stride-16 maps, rescaled to strides 4-32 by mmseg's Feature2Pyramid
# (deconvolutions up, max-pooling down); the FPN starts at stride 8 (start_level=1) as RetinaNet's usual strides 8-32,
# and adds P6/P7 by extra convs on its input. The official repo has no RetinaNet; its detection models use a
# ViT-Adapter (detection/configs/mask_rcnn/mask_rcnn_vrwkv_adapter_*), whose drop-path rate 0.1 is kept here.
_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
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
        dict(
            type="FPN",
            in_channels=[192, 192, 192, 192],
            out_channels=256,
            start_level=1,
            add_extra_convs="on_input",
            num_outs=5,
        ),
    ],
)
