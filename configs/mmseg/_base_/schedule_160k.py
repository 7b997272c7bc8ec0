# 160k iterations. The segmentation papers of the VMamba family keep Swin's UperNet recipe: AdamW lr 6e-5, weight
# decay 0.01, 1500 linear warm-up iterations then linear (poly 1.0) decay; no weight decay on normalisation layers,
# the state-space parameters (A_log(s), D(s), step-size biases) and layer scales.
no_decay = dict(decay_mult=0.0)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
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
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
