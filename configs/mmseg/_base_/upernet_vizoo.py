# UperNet (PPM + FPN decoder) with an FCN auxiliary head on stride 16, on a VizooBackbone.
norm_cfg = dict(type="SyncBN", requires_grad=True)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512),  # pad to the crop size
    test_cfg=dict(size_divisor=32),  # whole-image testing: pad to what vizoo's backbones take (results are unpadded)
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type="VizooBackbone",
        model_name="vmamba_tiny_s1l8",
        out_indices=(0, 1, 2, 3),
        # Each config sets init_cfg=dict(type="Pretrained", checkpoint=ADDRESS): the official ImageNet weights of its
        # model (a URL, hf-hub:ORG/REPO/FILE or a local file), converted and loaded strictly (tools/mm_pretrained_configs.py).
    ),
    decode_head=dict(
        type="UPerHead",
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=384,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
