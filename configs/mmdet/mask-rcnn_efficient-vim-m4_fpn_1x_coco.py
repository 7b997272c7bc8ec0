_base_ = "./_base_/mask-rcnn_vizoo_fpn_1x_coco.py"
# EfficientViM-M4 as in the official detection/configs/mask_rcnn_efficientvim_fpn_1x_coco.py: three stages at strides
# 16-64 with frozen BatchNorm statistics (the official backbone keeps every BatchNorm in eval mode: norm_eval), and the
# EfficientViT detection neck (TransposedConvFPN: two transposed-conv levels add strides 4 and 8), AdamW lr 2e-4 with
# weight decay 0.05, a 500-iteration linear warm-up and steps at epochs 8 and 11. Images are padded to a multiple of
# 32, what EfficientViM takes (the last stage rounds up).
model = dict(
    backbone=dict(
        model_name="efficient_vim_m4",
        out_indices=(0, 1, 2),
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:timm/efficientvim_m4.e300_in1k/model.safetensors"),
    ),
    neck=dict(
        _delete_=True,
        type="TransposedConvFPN",
        in_channels=[224, 320, 512],
        out_channels=256,
        num_outs=5,
        num_extra_trans_convs=2,
    ),
)
optim_wrapper = dict(
    optimizer=dict(lr=2e-4)
)  # the base schedule has the rest (AdamW, wd 0.05, warm-up, steps 8 and 11)
