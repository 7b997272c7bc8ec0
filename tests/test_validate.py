"""``vizoo validate``: top-1/top-5 on a real labelled image folder (scikit-learn's digits) with the model's own timm
eval transform, checked against an independent loop over the images; class mapping; the results row; bad input."""

import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from vizoo.cli import main
from vizoo.eval.classification import class_indices, validate
from vizoo.hub import convert
from vizoo.utils import results

SYNSETS = ImageNetInfo("imagenet-1k").label_names()


def _write_digits(root, per_class=2, classes=10, names=None):
    """scikit-learn's 8x8 digits (real scans with their labels) as PNGs in root/<class>/: the first ``per_class``
    images of each of the first ``classes`` digits; folders named ``names[digit]`` (default ``digit<d>``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for d in range(classes):
        folder = root / (names[d] if names else f"digit{d}")
        folder.mkdir(parents=True)
        for i in np.flatnonzero(digits.target == d)[:per_class]:
            Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def _reference(model, root, label_of):
    """Top-1 and top-5 (percent) by a plain loop: every image through timm's eval transform, one batch."""
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    images, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.png")):
            images.append(transform(Image.open(path).convert("RGB")))
            labels.append(label_of[folder.name])
    with torch.no_grad():
        top = model(torch.stack(images)).topk(5).indices
    labels = torch.tensor(labels)
    return 100 * (top[:, 0] == labels).double().mean().item(), 100 * (top == labels[:, None]).any(
        1
    ).double().mean().item()


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """(model, checkpoint): test_vmamba, random weights, a 10-class head."""
    torch.manual_seed(4)
    model = timm.create_model("test_vmamba", num_classes=10).eval()
    path = tmp_path_factory.mktemp("ckpt") / "digits.safetensors"
    save_file(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return _write_digits(tmp_path_factory.mktemp("digits"))


def test_validate_command_matches_an_independent_loop(digits_model, digits_dir, tmp_path, capsys):
    model, path = digits_model
    csv_path = tmp_path / "validate_cpu2.csv"
    argv = ["validate", "test_vmamba", "--data-dir", str(digits_dir), "--checkpoint", str(path), "--num-classes"]
    argv += ["10", "--batch-size", "8", "--workers", "0", "--results", str(csv_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (row,) = results.read_rows(csv_path)
    top1, top5 = _reference(model, digits_dir, {f"digit{d}": d for d in range(10)})
    assert float(row["top1"]) == pytest.approx(top1) and float(row["top5"]) == pytest.approx(top5)
    assert f"top-1 {top1:.3f}%" in out and top5 > top1
    assert row["images"] == "20" and row["classes"] == "10" and row["input_size"] == "3x64x64"
    assert row["command"].startswith("vizoo validate test_vmamba --data-dir") and row["machine"].startswith("cpu")
    assert list(csv.reader(csv_path.open()))[0][:6] == list(results.COMMON_COLUMNS)


def test_class_map_puts_each_folder_on_its_logit(digits_model, digits_dir, tmp_path):
    """The same model with its classifier rows reversed, and a class map naming the reversed order, scores the same."""
    model, _ = digits_model
    reversed_head = timm.create_model("test_vmamba", num_classes=10).eval()
    state = model.state_dict()
    state["head.fc.weight"], state["head.fc.bias"] = state["head.fc.weight"].flip(0), state["head.fc.bias"].flip(0)
    reversed_head.load_state_dict(state)
    class_map = tmp_path / "classes.txt"
    class_map.write_text("\n".join(f"digit{d}" for d in reversed(range(10))) + "\n")
    plain = validate(model, digits_dir, workers=0, progress=False)
    mapped = validate(reversed_head, digits_dir, class_map=class_map, workers=0, progress=False)
    assert (mapped.top1, mapped.top5) == (plain.top1, plain.top5)
    assert plain.loss == pytest.approx(mapped.loss)


def test_imagenet_synset_folders_map_to_their_logits(tmp_path):
    """Three ImageNet classes named by synset: each folder is scored against its own logit of the 1000."""
    picked = [7, 300, 999]
    root = _write_digits(tmp_path / "val", per_class=3, classes=3, names=[SYNSETS[i] for i in picked])
    torch.manual_seed(5)
    model = timm.create_model("test_mlla").eval()
    with torch.no_grad():  # make the three logits compete, so the mapping decides the score
        model.head.fc.bias[picked] += 50
    result = validate(model, root, workers=0, progress=False)
    top1, top5 = _reference(model, root, {SYNSETS[i]: i for i in picked})
    assert (result.top1, result.top5) == (pytest.approx(top1), pytest.approx(top5))
    assert top5 == 100 and 0 < top1 < 100
    assert class_indices([SYNSETS[i] for i in picked], model) == picked


def test_converted_folder_validates_as_its_checkpoint(digits_model, digits_dir, tmp_path, capsys):
    model, path = digits_model
    folder = convert(path, "test_vmamba", tmp_path / "hub", num_classes=10)
    args = ["--data-dir", str(digits_dir), "--workers", "0", "--results", str(tmp_path / "r.csv")]
    assert main(["validate", f"local-dir:{folder}", *args]) == 0
    assert main(["validate", "test_vmamba", "--checkpoint", str(path), "--num-classes", "10", *args]) == 0
    a, b = results.read_rows(tmp_path / "r.csv")
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])


def test_validate_errors(digits_model, digits_dir, tmp_path, capsys):
    model, path = digits_model
    ckpt = ["--checkpoint", str(path), "--num-classes", "10", "--workers", "0"]

    def error(*argv):
        assert main(["validate", *argv]) == 2
        return capsys.readouterr().err

    assert "Did you mean" in error("test_vmambaa", "--data-dir", str(digits_dir), *ckpt)
    assert "--pretrained" in error("test_vmamba", "--data-dir", str(digits_dir))  # no weights given
    assert "sizes the classifier" in error(
        "test_vmamba", "--data-dir", str(digits_dir), "--pretrained", "--num-classes", "10"
    )
    assert "no released" in error("test_vmamba", "--data-dir", str(digits_dir), "--pretrained")  # none published
    assert "holds its weights" in error("local-dir:x", "--data-dir", str(digits_dir), "--checkpoint", str(path))
    assert "does not exist" in error("test_vmamba", "--data-dir", str(tmp_path / "none"), *ckpt)
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in error("test_vmamba", "--data-dir", str(tmp_path / "empty"), *ckpt)
    (tmp_path / "empty" / "cat").mkdir()
    assert "without images: cat" in error("test_vmamba", "--data-dir", str(tmp_path / "empty"), *ckpt)
    # 10 digit folders and a 1000-class model: neither synsets nor one folder per class.
    torch.save(timm.create_model("test_vmamba").state_dict(), tmp_path / "in1k.pth")
    err = error("test_vmamba", "--data-dir", str(digits_dir), "--checkpoint", str(tmp_path / "in1k.pth"))
    assert "10 class folders do not map to the model's 1000 classes" in err and "--class-map" in err
    # a checkpoint of 10 classes without --num-classes
    assert "--num-classes" in error("test_vmamba", "--data-dir", str(digits_dir), "--checkpoint", str(path))

    mixed = _write_digits(tmp_path / "mixed", per_class=1, classes=2, names=[SYNSETS[0], "cat"])
    with pytest.raises(ValueError, match="not imagenet-1k synset ids: cat"):
        class_indices(sorted(p.name for p in mixed.iterdir()), timm.create_model("test_vmamba"))
    class_map = tmp_path / "map.txt"
    class_map.write_text("\n".join(f"d{d}" for d in range(10)))
    with pytest.raises(ValueError, match="not in the class map .*digit0"):
        validate(model, digits_dir, class_map=class_map, workers=0)
    class_map.write_text("a\nb\n")
    with pytest.raises(ValueError, match="names 2 classes; the model has 10"):
        validate(model, digits_dir, class_map=class_map, workers=0)
