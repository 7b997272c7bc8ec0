# Mask R-CNN 1x on COCO; a per-model file sets backbone.model_name and neck.in_channels (the backbone's channels).
_base_ = ["./mask-rcnn_vizoo_fpn.py", "./coco_instance.py", "./schedule_1x.py", "./runtime.py"]
