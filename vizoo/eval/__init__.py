"""Evaluation of dense models: COCO mAP (pycocotools COCOeval) for detectors, mIoU for segmentors."""

from .metrics import coco_map, confusion_matrix, miou_from_confusion, segmentation_miou

__all__ = ["coco_map", "confusion_matrix", "miou_from_confusion", "segmentation_miou"]
