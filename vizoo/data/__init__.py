"""Small datasets for demos and tests."""

from .toy import LFW_CLASSES, digits, lfw_faces, stratified_split, to_tensor_datasets

__all__ = ["LFW_CLASSES", "digits", "lfw_faces", "stratified_split", "to_tensor_datasets"]
