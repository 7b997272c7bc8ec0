"""Dense heads and the models that join a backbone to one: FCOS detection; UperNet, all-MLP, Semantic FPN segmentation.

``create_detector(backbone, num_classes)`` and ``create_segmentor(backbone, head, num_classes)`` take any vizoo model
name, or any timm model that supports ``features_only``.
"""

from .detection import FPN, Detector, FCOSHead, create_detector, decode_boxes, fcos_targets, level_points, scale_ranges
from .features import FeatureBackbone
from .segmentation import SEG_HEADS, MLPHead, Segmentor, SemanticFPNHead, UperNetHead, create_segmentor

__all__ = [
    "FPN",
    "SEG_HEADS",
    "Detector",
    "FCOSHead",
    "FeatureBackbone",
    "MLPHead",
    "SemanticFPNHead",
    "Segmentor",
    "UperNetHead",
    "create_detector",
    "create_segmentor",
    "decode_boxes",
    "fcos_targets",
    "level_points",
    "scale_ranges",
]
