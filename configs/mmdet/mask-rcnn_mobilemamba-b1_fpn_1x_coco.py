_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
# MobileMamba-B1 as in the official downstream/det/configs/mask_rcnn/mask-rcnn_mobilemamba_b1_fpn_1x_coco.py: three
# stages at strides 16-64 with frozen BatchNorm statistics (norm_eval), and its detection neck (TransposedConvFPN: two
# transposed-conv levels add strides 4 and 8), AdamW lr 2e-4 with gradient clipping at 0.1, a 500-iteration warm-up
# and a cosine decay over the last 6 of the 12 epochs. Images are padded to a multiple of 64, what MobileMamba takes.
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
        num_extra_trans_convs=2,
    ),
)
optim_wrapper = dict(optimizer=dict(lr=2e-4), clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0e-5, by_epoch=False, begin=0, end=500),
    dict(type="CosineAnnealingLR", begin=6, T_max=6, end=12, by_epoch=True, eta_min=0),
]
