# RetinaNet 1x on COCO; a per-model file sets backbone.model_name and neck.in_channels (channels of levels 1-3).
_base_ = ["./retinanet_vizoo_fpn.py", "./coco_detection.py", "./schedule_1x.py", "./runtime.py"]
