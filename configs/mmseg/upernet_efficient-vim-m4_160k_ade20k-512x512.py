_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
# EfficientViM-M4 (three stages at strides 16-64; the official segmentation config is a semantic FPN, 40k iterations):
# UperNet on all three stages and the auxiliary FCN head on the stride-16 one; whole test images are padded to a
# multiple of 32 (the base config), what EfficientViM takes (the last stage rounds up).
model = dict(
    backbone=dict(
        model_name="efficient_vim_m4",
        out_indices=(0, 1, 2),
        init_cfg=dict(type="Pretrained", checkpoint="hf-hub:timm/efficientvim_m4.e300_in1k/model.safetensors"),
    ),
    decode_head=dict(in_channels=[224, 320, 512], in_index=[0, 1, 2]),
    auxiliary_head=dict(in_channels=224, in_index=0),
)
