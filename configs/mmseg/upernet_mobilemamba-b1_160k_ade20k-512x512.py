_base_ = "./_base_/upernet_vizoo_160k_ade20k-512x512.py"
# MobileMamba-B1 (three stages at strides 16-64; the official code has no segmentation config): UperNet on all three
# stages and the auxiliary FCN head on the stride-16 one; whole test images are padded to a multiple of 64.
model = dict(
    data_preprocessor=dict(test_cfg=dict(size_divisor=64)),
    backbone=dict(
        model_name="mobilemamba_b1",
        out_indices=(0, 1, 2),
        init_cfg=None,  # random init: no URL fetches the released weights; get them from https://drive.google.com/file/d/1ODO1XM2luMfczbDLJxHrEl-ie7yUscAC/view, set checkpoint=PATH
    ),
    decode_head=dict(in_channels=[200, 376, 448], in_index=[0, 1, 2]),
    auxiliary_head=dict(in_channels=200, in_index=0),
)
