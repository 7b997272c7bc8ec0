"""COCO box mAP through pycocotools' COCOeval, and mean IoU from a confusion matrix."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch
from torch.utils.data import DataLoader

_logger = logging.getLogger(__name__)

__all__ = ["coco_map", "confusion_matrix", "miou_from_confusion", "segmentation_miou"]


@torch.no_grad()
def coco_map(model: torch.nn.Module, dataset, batch_size: int = 8, device: str | torch.device = "cpu") -> dict:
    """COCO box AP of ``model.predict`` on a :class:`vizoo.data.detection.CocoDetection` (boxes mapped back to the
    original image size). Returns {"map": AP@[.5:.95], "map50": AP@.5, "map75": AP@.75, "detections": count}."""
    from pycocotools.cocoeval import COCOeval

    from vizoo.data.detection import collate_detection

    was_training = model.training
    model.eval()
    results = []
    for images, targets in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection):
        for det, target in zip(model.predict(images.to(device)), targets):
            (oh, ow), (h, w) = target["orig_size"], target["size"]
            boxes = det["boxes"].cpu() * torch.tensor([ow / w, oh / h, ow / w, oh / h])
            for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append(
                    {
                        "image_id": target["image_id"],
                        "category_id": dataset.cat_ids[label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
    model.train(was_training)
    if not results:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its table
        evaluator = COCOeval(dataset.coco, dataset.coco.loadRes(results), iouType="bbox")
        evaluator.params.imgIds = list(dataset.ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(s), 0.0) for s in evaluator.stats[:3]]
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "detections": len(results)}


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = target class, columns = predicted, over pixels not ignored."""
    valid = target != ignore_index
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: torch.Tensor) -> tuple[float, list[float]]:
    """Mean IoU over classes present in target or prediction, and the per-class IoU (nan where absent)."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return float(np.nanmean(iou.numpy())), iou.tolist()


@torch.no_grad()
def segmentation_miou(
    model: torch.nn.Module,
    dataset,
    num_classes: int,
    batch_size: int = 8,
    ignore_index: int = 255,
    device: str | torch.device = "cpu",
) -> dict:
    """mIoU of ``model`` ((B, 3, H, W) -> (B, K, H, W) logits) on (image, mask) pairs.
    Returns {"miou", "iou" (per class), "pixel_acc"}."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, masks in DataLoader(dataset, batch_size=batch_size):
        pred = model(images.to(device)).argmax(1).cpu()
        conf += confusion_matrix(pred, masks, num_classes, ignore_index)
    model.train(was_training)
    miou, iou = miou_from_confusion(conf)
    return {"miou": miou, "iou": iou, "pixel_acc": float(conf.diag().sum() / conf.sum().clamp(min=1))}
