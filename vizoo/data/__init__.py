"""Small datasets for demos and tests."""

from .images import image_folder, photo_batch, synthetic_photos, to_input
from .toy import LFW_CLASSES, digits, lfw_faces, stratified_split, to_tensor_datasets

__all__ = [
    "LFW_CLASSES",
    "digits",
    "image_folder",
    "photo_batch",
    "synthetic_photos",
    "to_input",
    "lfw_faces",
    "stratified_split",
    "to_tensor_datasets",
]
