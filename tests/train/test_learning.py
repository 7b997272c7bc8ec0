"""Real learning: test_vmamba learns faces vs non-faces (scikit-image's LFW crops) through the training code path."""

import torch

from vizoo.train import train

from .conftest import small_config


def test_learns_lfw_faces(lfw_data, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(small_config(lfw_data, tmp_path / "run", epochs=4, warmup_epochs=1, smoothing=0.1))
    finally:
        torch.set_num_threads(threads)
    first, last = result.metrics[0], result.metrics[-1]
    print(f"val top-1 per epoch: {[round(m['top1'], 1) for m in result.metrics]}")
    assert last["top1"] >= 80.0, result.metrics  # chance is 50 %
    assert last["train_loss"] < first["train_loss"]
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("epoch,step,train_loss")
