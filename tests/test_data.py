"""vizoo.data: real toy datasets from scikit-image / scikit-learn."""

import numpy as np
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vizoo.data import digits, lfw_faces, stratified_split


@pytest.mark.parametrize("img_size", [32, 64])
def test_lfw_faces_shapes_and_split(img_size):
    train, val = lfw_faces(img_size=img_size)
    x_tr, y_tr = train.tensors
    x_va, y_va = val.tensors
    assert x_tr.shape == (150, 3, img_size, img_size) and x_va.shape == (50, 3, img_size, img_size)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.long
    # stratified: both classes in both splits, balanced like the source (100 faces, 100 non-faces)
    assert torch.bincount(y_tr).tolist() == [75, 75]
    assert torch.bincount(y_va).tolist() == [25, 25]


def test_lfw_faces_normalised():
    train, _ = lfw_faces(img_size=32)
    x = train.tensors[0]
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    raw = x * std + mean  # undo the normalisation: back to grayscale in [0, 1], same in every channel
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    assert abs(x.mean().item()) < 1.0 and 0.5 < x.std().item() < 2.0


def test_lfw_faces_deterministic():
    a_tr, a_va = lfw_faces(img_size=32, seed=3)
    b_tr, b_va = lfw_faces(img_size=32, seed=3)
    for a, b in [(a_tr, b_tr), (a_va, b_va)]:
        torch.testing.assert_close(a.tensors[0], b.tensors[0])
        assert torch.equal(a.tensors[1], b.tensors[1])
    _, c_va = lfw_faces(img_size=32, seed=4)
    assert not torch.equal(a_va.tensors[0], c_va.tensors[0])


def test_lfw_faces_val_fraction():
    train, val = lfw_faces(img_size=32, val_fraction=0.5)
    assert len(train) == len(val) == 100


def test_digits_ten_classes():
    train, val = digits(img_size=32)
    assert train.tensors[0].shape[1:] == (3, 32, 32)
    assert len(train) + len(val) == 1797
    assert set(train.tensors[1].tolist()) == set(range(10)) == set(val.tensors[1].tolist())


def test_stratified_split_disjoint_and_complete():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 2)
    tr, va = stratified_split(labels, 0.3, seed=1)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(12))
    assert set(labels[tr]) == set(labels[va]) == {0, 1, 2}
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0)
