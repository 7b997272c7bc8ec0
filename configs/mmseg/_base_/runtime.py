default_scope = "mmseg"
custom_imports = dict(imports=["vizoo.mm"], allow_failed_imports=False)
custom_hooks = [dict(type="VizooDatasetCheckHook")]  # clear errors for empty datasets and missing image files
runner_type = "VizooRunner"  # mmengine's Runner, with a clear error for a dataset that builds empty
env_cfg = dict(
    cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="nccl")
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
