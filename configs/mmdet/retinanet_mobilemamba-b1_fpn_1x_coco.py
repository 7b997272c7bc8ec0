_base_ = "./_base_/retinanet_vizoo_fpn_1x_coco.py"
# MobileMamba-B1 as in the official downstream/det/configs/retinanet/retinanet_mobilemamba_b1_fpn_1x_coco.py: three
# stages at strides 16-64 (norm_eval), TransposedConvFPN with one transposed-conv level (stride 8) and a max-pooled
# one (stride 128) for the anchors' strides 8-128, AdamW lr 2e-4 with gradient clipping at 0.1, a 500-iteration
# warm-up and a cosine decay over the last 6 of the 12 epochs. Images are padded to a multiple of 64.
model = dict(
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(
        model_name="mobilemamba_b1",
        out_indices=(0, 1, 2),
        norm_eval=True,
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://drive.google.com/file/d/1ODO1XM2luMfczbDLJxHrEl-ie7yUscAC/view, set checkpoint=PATH
    ),
    neck=dict(
        _delete_=True,
        type="TransposedConvFPN",
        in_channels=[200, 376, 448],
        out_channels=256,
        num_outs=5,
        num_extra_trans_convs=1,
    ),
)
optim_wrapper = dict(optimizer=dict(lr=2e-4), clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0e-5, by_epoch=False, begin=0, end=500),
    dict(type="CosineAnnealingLR", begin=6, T_max=6, end=12, by_epoch=True, eta_min=0),
]
