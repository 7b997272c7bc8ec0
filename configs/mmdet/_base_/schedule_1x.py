# 1x schedule: 12 epochs, 500 warm-up iterations, lr x0.1 after epochs 8 and 11; 16 images per step (8 GPUs x 2).
# The optimiser of the VMamba-family detection papers (Swin's recipe): AdamW, lr 1e-4, weight decay 0.05, with no
# weight decay on normalisation layers, the state-space parameters (A_log(s), D(s), step-size biases) and layer
# scales. custom_keys match substrings of full parameter names (backbone.body.model.stages.0.blocks.0.op.Ds).
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=12, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
no_decay = dict(decay_mult=0.0)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            "norm": no_decay,
            ".A_log": no_decay,
            ".A_b_log": no_decay,
            ".D": no_decay,
            "dt_projs_bias": no_decay,
            "dt_bias": no_decay,
            ".gamma_": no_decay,
            "pos_embed": no_decay,
            "cls_token": no_decay,
        },
    ),
)
auto_scale_lr = dict(enable=False, base_batch_size=16)
