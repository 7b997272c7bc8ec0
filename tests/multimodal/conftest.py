"""Shared fixtures for vizoo.multimodal: real photos from scikit-image, small test_ towers, a tiny text tower."""

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def photos():
    """(2, 3, 64, 64) two real photos (scikit-image's astronaut and cat), ImageNet-normalised."""
    from skimage import data
    from skimage.transform import resize

    images = [resize(img, (64, 64), anti_aliasing=True) for img in (data.astronaut(), data.chelsea())]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std
