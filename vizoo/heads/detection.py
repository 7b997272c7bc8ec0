"""FCOS: an anchor-free one-stage detector on an FPN over any vizoo or timm backbone.

Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", https://arxiv.org/abs/1904.01355, with the
later improvements its authors adopted: centre sampling, centre-ness on the regression branch, distances normalised
by the level's stride, GIoU loss.

Every location of every pyramid level predicts class logits, the distances (left, top, right, bottom) in pixels from
its centre to the box sides, and a centre-ness logit. Training targets: a location is positive for a box when it lies
within ``center_radius * stride`` of the box centre (and inside the box) and the box's largest distance falls in the
level's scale range; ties go to the smallest box. Losses go through torchvision.ops: sigmoid focal loss (classes),
generalised IoU (boxes, weighted by the centre-ness target) and binary cross-entropy (centre-ness). Inference:
scores sqrt(sigmoid(cls) * sigmoid(centreness)), top-k, then class-wise NMS (``torchvision.ops.nms``).

``Detector.forward`` returns the raw, NMS-free head outputs (that is what exports to ONNX); ``loss`` and ``predict``
work on them.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import (
    FeaturePyramidNetwork,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    nms,
    sigmoid_focal_loss,
)

from .features import FeatureBackbone, last_levels

__all__ = [
    "Detector",
    "FCOSHead",
    "FPN",
    "create_detector",
    "decode_boxes",
    "fcos_targets",
    "level_points",
    "scale_ranges",
]


def _group_norm(channels: int) -> nn.GroupNorm:
    """FCOS's GroupNorm: 32 groups, fewer where ``channels`` is small, but never one channel per group, which on the
    1x1 maps of the top levels (small inputs, batch 1) normalises a single value (torch refuses)."""
    return nn.GroupNorm(
        max((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels >= 2 * g), default=1), channels
    )


class FPN(nn.Module):
    """torchvision's FPN over the backbone maps, plus ``extra_levels`` stride-2 3x3 convs on the top (P6, P7).

    [(B, in_channels[i], h_i, w_i)] -> [(B, channels, h_j, w_j)] for len(in_channels) + extra_levels levels.
    """

    def __init__(self, in_channels: list[int], channels: int = 128, extra_levels: int = 2):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.extra = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(extra_levels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        for i, conv in enumerate(self.extra):
            outs.append(conv(outs[-1] if i == 0 else F.relu(outs[-1])))
        return outs


class FCOSHead(nn.Module):
    """Shared conv towers over all levels: class logits, stride-normalised ltrb distances and centre-ness.

    Returns, concatenated over levels (level-major, then row-major): cls (B, N, K), distances in pixels (B, N, 4),
    centre-ness logits (B, N), where N = sum_i h_i * w_i.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        strides: list[int],
        num_convs: int = 4,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.strides = list(strides)

        def tower() -> nn.Sequential:
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), _group_norm(channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.reg_tower = tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls_out, reg_out, ctr_out = [], [], []
        for i, (x, stride) in enumerate(zip(features, self.strides)):
            c = self.cls_tower(x)
            r = self.reg_tower(x)
            cls_out.append(self.cls_logits(c).flatten(2).transpose(1, 2))
            dist = F.relu(self.bbox_pred(r) * self.scales[i]) * stride
            reg_out.append(dist.flatten(2).transpose(1, 2))
            ctr_out.append(self.centerness(r).flatten(1))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1), torch.cat(ctr_out, 1)


def level_points(sizes: list[tuple[int, int]], strides: list[int], device=None) -> torch.Tensor:
    """Centres (x, y) in input pixels of every location of every level, in the head's order: (N, 2)."""
    points = []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], dim=1))
    return torch.cat(points)


def scale_ranges(strides: list[int]) -> list[tuple[float, float]]:
    """FCOS's per-level limits on a location's largest distance: [4s, 8s], open at both ends (64/128/... at P3-P7)."""
    ranges = [(4.0 * s, 8.0 * s) for s in strides]
    ranges[0] = (0.0, ranges[0][1])
    ranges[-1] = (ranges[-1][0], float("inf"))
    return ranges


def decode_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Points (..., 2) as (x, y) and distances (..., 4) as (left, top, right, bottom) -> boxes (..., 4) x1y1x2y2."""
    x, y = points[..., 0], points[..., 1]
    l, t, r, b = distances.unbind(-1)
    return torch.stack([x - l, y - t, x + r, y + b], dim=-1)


def fcos_targets(
    points: torch.Tensor,
    strides: torch.Tensor,
    ranges: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    center_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign ground truth to locations of one image.

    points (N, 2), strides (N,), ranges (N, 2); boxes (G, 4) x1y1x2y2 in input pixels, labels (G,) in [0, K).
    Returns matched box index (N,) (-1 for background) and distance targets (N, 4).
    """
    n = points.shape[0]
    if boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device), points.new_zeros(n, 4)
    x, y = points[:, 0:1], points[:, 1:2]  # (N, 1)
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2)  # (N, G, 4)
    inside_box = ltrb.min(dim=2).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    radius = strides[:, None] * center_radius  # (N, 1)
    near_center = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)
    largest = ltrb.max(dim=2).values
    in_range = (largest >= ranges[:, 0:1]) & (largest <= ranges[:, 1:2])
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n, -1)
    areas = torch.where(inside_box & near_center & in_range, areas, torch.full_like(areas, float("inf")))
    best_area, matched = areas.min(dim=1)
    matched = torch.where(torch.isfinite(best_area), matched, torch.full_like(matched, -1))
    target = ltrb[torch.arange(n, device=points.device), matched.clamp(min=0)]
    return matched, target


def _centerness(ltrb: torch.Tensor) -> torch.Tensor:
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()


class Detector(nn.Module):
    """Backbone -> FPN -> FCOS head.

    ``forward(images)`` (B, C_in, H, W) -> raw outputs (cls logits (B, N, K), distances (B, N, 4), centre-ness logits
    (B, N)); ``loss(images, targets)`` and ``predict(images)`` build on them. Boxes are x1y1x2y2 in input pixels,
    labels 0..K-1.
    """

    def __init__(
        self,
        backbone: FeatureBackbone,
        num_classes: int,
        fpn_channels: int = 128,
        extra_levels: int = 2,
        num_convs: int = 4,
        center_radius: float = 1.5,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        pre_nms_top_k: int = 1000,
        max_detections: int = 100,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.in_chans = backbone.in_chans
        self.pretrained_cfg = dict(backbone.pretrained_cfg)
        self.neck = FPN(backbone.channels, fpn_channels, extra_levels)
        self.strides = list(backbone.reductions) + [backbone.reductions[-1] * 2 ** (i + 1) for i in range(extra_levels)]
        self.head = FCOSHead(fpn_channels, num_classes, self.strides, num_convs)
        self.center_radius = center_radius
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.pre_nms_top_k = pre_nms_top_k
        self.max_detections = max_detections
        self._sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> cls logits (B, N, K), ltrb distances in pixels (B, N, 4), centre-ness logits (B, N)."""
        pyramid = self.neck(self.backbone(images))
        self._sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pyramid]
        return self.head(pyramid)

    def points(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Location centres (N, 2), their strides (N,) and scale ranges (N, 2) for the last forward's sizes."""
        counts = [h * w for h, w in self._sizes]
        pts = level_points(self._sizes, self.strides, device)
        strides = torch.repeat_interleave(
            torch.tensor(self.strides, dtype=torch.float32, device=device), torch.tensor(counts, device=device)
        )
        ranges = torch.repeat_interleave(
            torch.tensor(scale_ranges(self.strides), device=device), torch.tensor(counts, device=device), dim=0
        )
        return pts, strides, ranges

    def loss(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Focal + GIoU + centre-ness losses; ``targets[i]`` has "boxes" (G_i, 4) and "labels" (G_i,)."""
        cls, dist, ctr = self(images)
        cls, dist, ctr = cls.float(), dist.float(), ctr.float()
        points, strides, ranges = self.points(images.device)
        cls_target = torch.zeros_like(cls)
        reg_target = torch.zeros_like(dist)
        positive = torch.zeros(ctr.shape, dtype=torch.bool, device=ctr.device)
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(images.device, torch.float32)
            labels = t["labels"].to(images.device, torch.long)
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"target labels must be in [0, {self.num_classes}), got {labels.unique().tolist()}")
            matched, reg = fcos_targets(points, strides, ranges, boxes, labels, self.center_radius)
            pos = matched >= 0
            positive[i] = pos
            idx = torch.nonzero(pos).squeeze(1)
            cls_target[i, idx, labels[matched[idx]]] = 1.0
            reg_target[i] = reg
        num_pos = max(float(positive.sum()), 1.0)
        loss_cls = sigmoid_focal_loss(cls, cls_target, alpha=0.25, gamma=2.0, reduction="sum") / num_pos
        if positive.any():
            pts = points[None].expand(len(targets), -1, -1)[positive]
            ctr_target = _centerness(reg_target[positive])
            giou = generalized_box_iou_loss(
                decode_boxes(pts, dist[positive]), decode_boxes(pts, reg_target[positive]), reduction="none"
            )
            loss_box = (giou * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr[positive], ctr_target, reduction="sum") / num_pos
        else:
            loss_box = loss_ctr = dist.sum() * 0.0 + ctr.sum() * 0.0
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """(B, C_in, H, W) -> per image {"boxes" (D, 4) x1y1x2y2, "scores" (D,), "labels" (D,)} after NMS."""
        cls, dist, ctr = self(images)
        return self.postprocess(cls, dist, ctr, tuple(images.shape[-2:]))

    def postprocess(
        self, cls: torch.Tensor, dist: torch.Tensor, ctr: torch.Tensor, image_size: tuple[int, int]
    ) -> list[dict[str, torch.Tensor]]:
        """Raw outputs (as ``forward`` returns them, for the last forward's sizes) -> detections per image."""
        boxes, scores, labels, images = self.detections(cls, dist, ctr, image_size)
        counts = torch.bincount(images, minlength=cls.shape[0]).tolist()  # detections come image by image
        return [
            {"boxes": b, "scores": s, "labels": lab}
            for b, s, lab in zip(boxes.split(counts), scores.split(counts), labels.split(counts))
        ]

    def detections(
        self, cls: torch.Tensor, dist: torch.Tensor, ctr: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs -> the batch's detections as flat tensors, image by image and by decreasing score in each:
        boxes (M, 4) x1y1x2y2 in input pixels, scores (M,), labels (M,) and the image index of each (M,).

        Per image: the ``pre_nms_top_k`` best (location, class) scores, NMS within each class (``nms_thresh``), then
        those above ``score_thresh``, at most ``max_detections``. Thresholding after NMS gives the same detections as
        before it (boxes are suppressed only by higher-scoring ones). One NMS call serves the whole batch: each image
        and class is shifted to its own region of the plane (torchvision's coordinate trick), so this code also
        exports, to one ONNX NonMaxSuppression (``vizoo.export.export_onnx`` of a ``Detector``).
        """
        batch, locations, num_classes = cls.shape
        points, _, _ = self.points(cls.device)
        scores = (cls.float().sigmoid() * ctr.float().sigmoid()[..., None]).sqrt().flatten(1)  # (B, N K)
        scores, index = scores.topk(min(self.pre_nms_top_k, locations * num_classes), dim=1)  # (B, T)
        loc, labels = index // num_classes, index % num_classes
        dist = dist.float().gather(1, loc[..., None].expand(-1, -1, 4))
        boxes = clip_boxes_to_image(decode_boxes(points[loc], dist), image_size).flatten(0, 1)  # (B T, 4)
        images = torch.arange(batch, device=cls.device)[:, None].expand_as(labels).flatten()
        scores, labels = scores.flatten(), labels.flatten()
        shift = (images * num_classes + labels).to(boxes.dtype) * (max(image_size) + 1)
        kept = nms(boxes + shift[:, None], scores, self.nms_thresh)  # by decreasing score
        # each kept box's rank among its image's kept boxes: a running count per image
        kept_images = images[kept, None]
        rank = (kept_images == torch.arange(batch, device=cls.device)).long().cumsum(0).gather(1, kept_images)[:, 0] - 1
        kept = kept[(scores[kept] > self.score_thresh) & (rank < self.max_detections)]
        # image by image, by decreasing score (scores are in [0, 1]; float64 keeps float32 scores apart in the key)
        kept = kept[torch.argsort(images[kept].double() * 2 - scores[kept].double())]
        return boxes[kept], scores[kept], labels[kept], images[kept]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        leaves = self.backbone.no_weight_decay_leaves()
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in leaves}


def create_detector(
    backbone: str,
    num_classes: int,
    out_indices: tuple[int, ...] | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
    backbone_kwargs: dict | None = None,
    **kwargs,
) -> Detector:
    """An FCOS detector on ``backbone`` (a vizoo or timm model name with ``features_only``) for ``num_classes``
    foreground classes (no background class). ``out_indices`` None: the backbone's last three feature levels (strides
    8-32 for a four-stage vizoo model). ``kwargs`` go to :class:`Detector` (``fpn_channels``, ``extra_levels``,
    ``num_convs``, ``score_thresh``, ``nms_thresh``, ...).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (foreground classes, no background), got {num_classes!r}")
    if out_indices is None and isinstance(backbone, str) and timm.is_model(backbone):
        out_indices = last_levels(backbone, 3)
    body = FeatureBackbone(backbone, out_indices, pretrained=pretrained, in_chans=in_chans, **(backbone_kwargs or {}))
    detector = Detector(body, num_classes, **kwargs)
    # what fine-tuning checkpoints keep, to rebuild the model (vizoo.train.finetune.load_finetuned)
    if isinstance(backbone, str):
        detector.architecture = dict(
            builder="detector", backbone=backbone, num_classes=num_classes, out_indices=out_indices,
            in_chans=in_chans, backbone_kwargs=backbone_kwargs, **kwargs,
        )  # fmt: skip
    return detector
