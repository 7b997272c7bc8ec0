# A plain (single-stride) backbone: four blocks' stride-16 maps, rescaled to strides 4-32 by mmseg's Feature2Pyramid
# (deconvolutions up, max-pooling down) before the FPN; the neck is the two in sequence.
_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
custom_imports = dict(imports=["vizoo.mm", "mmseg.models"])
model = dict(
    backbone=dict(
        model_name="lightnet_tiny",
        out_indices=(3, 5, 7, 11),
        init_cfg=None,  # random init: the authors released no ImageNet weights of lightnet_tiny
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
