"""Data pipeline and the bad-input errors of the classification trainer."""

import shutil

import numpy as np
import pytest
import torch

from vizoo.train import TrainConfig, load_yaml_config, train
from vizoo.train.data import ImageFolderDataset, ResumableSampler, build_train_transform, scan_dataset

from .conftest import REPO, run_tool, small_config


def test_scan_dataset(lfw_data):
    train_split, val_split = scan_dataset(lfw_data)
    assert train_split.classes == val_split.classes == ["face", "non-face"]
    assert len(train_split.samples) == 150 and len(val_split.samples) == 50


def test_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass --data-dir"):
        train(small_config(tmp_path / "nope", tmp_path / "out"))
    (tmp_path / "only_val" / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no train/ folder"):
        train(small_config(tmp_path / "only_val", tmp_path / "out"))


def test_missing_data_dir_tool(tmp_path):
    proc = run_tool(["--data-dir", tmp_path / "nope", "--output", tmp_path / "out"])
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_empty_class_folder(lfw_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(lfw_data, data)
    (data / "train" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) without images: zebra"):
        train(small_config(data, tmp_path / "out"))


def test_class_sets_differ(lfw_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(lfw_data, data)
    shutil.move(data / "val" / "face", data / "val" / "faces")
    with pytest.raises(
        ValueError, match=r"class folders differ.*only in train/: \['face'\].*only in val/: \['faces'\]"
    ):
        train(small_config(data, tmp_path / "out"))


def test_num_classes_mismatch_on_resume(lfw_data, short_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(lfw_data, data)
    for split in ("train", "val"):
        shutil.copytree(data / split / "face", data / split / "face2")
    cfg = small_config(data, tmp_path / "out", resume=str(short_run / "checkpoints" / "step-000000006"))
    with pytest.raises(ValueError, match="trained with num_classes=2 but .* has 3 classes"):
        train(cfg)


def test_unknown_yaml_key(tmp_path):
    (tmp_path / "r.yaml").write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        load_yaml_config(tmp_path / "r.yaml")


def test_recipes_load():
    for path in sorted((REPO / "configs" / "cls").glob("*.yaml")):
        TrainConfig(**load_yaml_config(path))


def test_unreadable_image_is_skipped(lfw_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(lfw_data, data)
    bad = data / "train" / "face" / "0000_bad.png"
    bad.write_bytes(b"not an image")
    split, _ = scan_dataset(data)
    tf = build_train_transform(32, (0.5,) * 3, (0.25,) * 3, scale=(0.5, 1.0))
    ds = ImageFolderDataset(split, tf)
    index = [p for p, _ in split.samples].index(str(bad))
    with caplog.at_level("WARNING"):
        x, y = ds[index]
    assert x.shape == (3, 32, 32) and ds.unreadable == 1
    assert "skipping unreadable image" in caplog.text and "1 unreadable so far" in caplog.text


def test_augmentation_is_keyed_by_epoch_and_index(lfw_data):
    split, _ = scan_dataset(lfw_data)
    tf = build_train_transform(32, (0.5,) * 3, (0.25,) * 3, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
    ds = ImageFolderDataset(split, tf, seed=3)
    a = ds[(5, 1)][0]
    ds[(7, 1)]  # another sample in between must not change sample 5's augmentation
    assert torch.equal(a, ds[(5, 1)][0])
    assert not torch.equal(a, ds[(5, 2)][0])


def test_sampler_shards_and_resumes():
    full = list(ResumableSampler(40, 8, seed=1))
    ranks = [list(ResumableSampler(40, 4, rank=r, world_size=2, seed=1)) for r in range(2)]
    for j in range(5):  # the ranks' j-th batches together are the 1-process j-th batch
        assert sorted(ranks[0][4 * j : 4 * j + 4] + ranks[1][4 * j : 4 * j + 4]) == sorted(full[8 * j : 8 * j + 8])
    s = ResumableSampler(40, 8, seed=1)
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[16:] and len(s) == 24
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]
    assert np.all([e == 1 for _, e in s])


def test_initial_checkpoint_starts_from_its_weights_and_drops_a_classifier_of_another_size(tmp_path):
    import timm
    from safetensors.torch import save_file

    from vizoo.train.classification import _build_model

    source = timm.create_model("test_vmamba", num_classes=10)
    path = tmp_path / "pretrained.safetensors"
    save_file(source.state_dict(), str(path))
    model = _build_model(TrainConfig(model="test_vmamba", initial_checkpoint=str(path)), num_classes=3)
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(state[key], value, msg=key)
    assert state["head.fc.weight"].shape[0] == 3
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="pretrained.safetensors"):
        _build_model(TrainConfig(model="test_vmamba", initial_checkpoint=str(path)), num_classes=3)
