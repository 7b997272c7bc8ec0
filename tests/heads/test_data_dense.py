"""COCO detection and mask-folder segmentation datasets: augmentation moves boxes and masks, clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from vizoo.data.detection import CocoDetection, detection_transforms
from vizoo.data.segmentation import SegmentationFolder, segmentation_transforms


def _coco(tmp_path, images, annotations):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "x"}]}))
    return ann


def test_coco_dataset_resize_scales_boxes(tmp_path):
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "a.png")
    ann = _coco(
        tmp_path,
        [{"id": 1, "file_name": "a.png", "height": 40, "width": 80}],
        [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [8, 4, 16, 20], "area": 320, "iscrowd": 0}],
    )
    image, target = CocoDetection(tmp_path, ann, detection_transforms((20, 40), train=False))[0]
    assert image.shape == (3, 20, 40) and target["labels"].tolist() == [0]
    assert np.allclose(target["boxes"].numpy(), [[4, 2, 12, 12]]) and target["orig_size"] == (40, 80)
    image, target = CocoDetection(tmp_path, ann, detection_transforms(32, train=True))[0]
    assert image.shape == (3, 32, 32) and target["boxes"].shape[1] == 4


def test_coco_errors(tmp_path):
    with pytest.raises(ValueError, match="lists no images"):
        CocoDetection(tmp_path, _coco(tmp_path, [], []))
    ann = _coco(tmp_path, [{"id": 1, "file_name": "gone.png", "height": 4, "width": 4}], [])
    with pytest.raises(FileNotFoundError, match="missing from.*gone.png"):
        CocoDetection(tmp_path, ann)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


def test_segmentation_folder_flip_moves_mask(tmp_path):
    import albumentations as A

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :8] = 255
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :8] = 1
    Image.fromarray(image).save(tmp_path / "img" / "a.png")
    Image.fromarray(mask).save(tmp_path / "mask" / "a.png")
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    img, m = SegmentationFolder(tmp_path / "img", tmp_path / "mask", flip)[0]
    assert m[:, -8:].eq(1).all() and m[:, :-8].eq(0).all() and (img[..., -8:, :] == 255).all()
    img, m = SegmentationFolder(tmp_path / "img", tmp_path / "mask", segmentation_transforms(64, train=False))[0]
    assert img.shape == (3, 64, 64) and m.shape == (64, 64) and set(m.unique().tolist()) == {0, 1}


def test_segmentation_errors(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        SegmentationFolder(tmp_path / "img", tmp_path / "mask")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(FileNotFoundError, match="have no mask.*a.png"):
        SegmentationFolder(tmp_path / "img", tmp_path / "mask")
