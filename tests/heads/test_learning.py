"""A real learning check: detectors and segmentors fine-tuned on the coins photograph beat their untrained selves.

The data is scikit-image's coins photograph, with boxes and masks from classical thresholding
(vizoo.data.coins); validation tiles come from a part of the photograph that training never sees.
"""

import json

import numpy as np
import pytest
import torch

from vizoo.cli import main as vizoo_main
from vizoo.data import photo_batch
from vizoo.data.coins import build_coins_datasets
from vizoo.data.detection import CocoDetection, detection_transforms
from vizoo.data.segmentation import SegmentationFolder, segmentation_transforms
from vizoo.eval import coco_map, segmentation_miou
from vizoo.heads import create_detector, create_segmentor
from vizoo.train.checkpoint import load_checkpoint
from vizoo.train.finetune import FinetuneConfig, finetune_detector, finetune_segmentor

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def coins(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only add contention
    yield build_coins_datasets(tmp_path_factory.mktemp("coins"))
    torch.set_num_threads(threads)


def test_detector_learns_coins(coins, tmp_path):
    train = CocoDetection(
        coins["train_images"], coins["train_ann"], detection_transforms(96, True, crop_scale=(0.6, 1))
    )
    val = CocoDetection(coins["val_images"], coins["val_ann"], detection_transforms(96, False))
    model = create_detector("test_vmamba", 1, fpn_channels=32, num_convs=2, extra_levels=0)
    before = coco_map(model, val)
    config = FinetuneConfig(epochs=8, batch_size=16, lr=3e-3, warmup_steps=5, progress=False, output_dir=str(tmp_path))
    result = finetune_detector(model, train, val, config)
    after = result.metrics
    print(
        f"coins detection mAP: untrained {before['map']:.3f} -> trained {after['map']:.3f} (mAP50 {after['map50']:.3f})"
    )
    assert after["map"] > before["map"] + 0.3
    assert after["map50"] > 0.7
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.state["epoch"] == 7 and torch.equal(ckpt.model["head.scales"], model.head.scales.detach())


def test_segmentor_learns_coins(coins):
    train = SegmentationFolder(
        coins["train_images"], coins["train_masks"], segmentation_transforms(96, True, crop_scale=(0.6, 1))
    )
    val = SegmentationFolder(coins["val_images"], coins["val_masks"], segmentation_transforms(96, False))
    model = create_segmentor("test_vmamba", "mlp", num_classes=2, channels=32)
    before = segmentation_miou(model, val, 2)
    config = FinetuneConfig(epochs=8, batch_size=16, lr=3e-3, warmup_steps=5, progress=False)
    after = finetune_segmentor(model, train, val, 2, config).metrics
    print(f"coins segmentation mIoU: untrained {before['miou']:.3f} -> trained {after['miou']:.3f}")
    assert after["miou"] > before["miou"] + 0.3
    assert after["miou"] > 0.8


def _finetune(capsys, kind: str, argv: list[str]) -> tuple[dict, str]:
    """``vizoo finetune KIND ARGV`` in-process: its summary (the JSON of its last line) and all it printed."""
    assert vizoo_main(["finetune", kind, *argv]) == 0
    out = capsys.readouterr().out
    return json.loads(out.splitlines()[-1]), out


def test_finetune_commands_train_evaluate_and_checkpoint(coins, tmp_path, capsys):
    """``vizoo finetune det`` and ``vizoo finetune seg`` on the coins folders: the training options reach the run (one
    epoch, a checkpoint in --output), both metrics are reported, the detector exports (--onnx) with parity and the
    segmentor in float16 (--fp16); without data, or with --fp16 alone, they say what to give (exit code 2)."""
    common = ["--backbone", "test_cas_vit", "--img-size", "64", "--epochs", "1", "--batch-size", "16", "--lr", "3e-3"]
    data = ["--train-images", str(coins["train_images"]), "--val-images", str(coins["val_images"])]
    det, det_out = _finetune(
        capsys,
        "det",
        common + data + ["--train-ann", str(coins["train_ann"]), "--val-ann", str(coins["val_ann"])]
        + ["--fpn-channels", "32", "--num-convs", "2", "--extra-levels", "0", "--output", str(tmp_path / "det")]
        + ["--onnx", str(tmp_path / "det.onnx")],
    )  # fmt: skip
    seg, seg_out = _finetune(
        capsys,
        "seg",
        common + data + ["--train-masks", str(coins["train_masks"]), "--val-masks", str(coins["val_masks"])]
        + ["--num-classes", "2", "--head", "mlp", "--channels", "32", "--onnx", str(tmp_path / "seg.onnx"), "--fp16"],
    )  # fmt: skip
    out = det_out + seg_out
    assert all(0 <= summary[key] <= 1 for summary, key in ((det["untrained"], "map"), (det["trained"], "map")))
    assert all(0 <= seg[when]["miou"] <= 1 for when in ("untrained", "trained"))
    assert det["onnx_max_abs_diff"] < 1e-3 and f"onnx: {tmp_path / 'det.onnx'} (" in out  # the detector with its NMS
    assert seg["onnx_max_abs_diff"] < 1e-2 and _has_float16_weights(tmp_path / "seg.onnx")  # --fp16 (reads 6e-4)
    assert out.count("(losses per epoch [") == 2 and "], " not in out.split("losses per epoch")[1].split("\n")[0]
    checkpoints = list((tmp_path / "det" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1 and f"checkpoint: {checkpoints[0]}" in out
    state = load_checkpoint(checkpoints[0]).state
    assert state["epoch"] == 0 and (state["config"]["lr"], state["config"]["batch_size"]) == (3e-3, 16)
    # later, `vizoo export` on the checkpoint folder rebuilds the detector: the same graph as --onnx gave, same outputs
    later = tmp_path / "det_later.onnx"
    assert (
        vizoo_main(["export", str(checkpoints[0]), "--output", str(later), "--img-size", "64", "--tolerance", "1e-3"])
        == 0
    )
    assert f"wrote {later}" in capsys.readouterr().out
    images = photo_batch((3, 64, 64), count=2).numpy()
    for now, then in zip(_onnx_outputs(tmp_path / "det.onnx", images), _onnx_outputs(later, images)):
        np.testing.assert_array_equal(now, then)
    assert vizoo_main(["finetune", "seg", "--backbone", "test_cas_vit", "--fp16"]) == 2
    assert "--fp16 is an option of the ONNX export: give --onnx FILE too" in capsys.readouterr().err
    for kind, missing in (("det", "--train-ann"), ("seg", "--num-classes")):
        assert vizoo_main(["finetune", kind, "--backbone", "test_cas_vit"]) == 2
        assert "give --coins DIR, or all of" in (err := capsys.readouterr().err) and missing in err


def _onnx_outputs(path, images) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})


def _has_float16_weights(path) -> bool:
    import onnx

    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(path)).graph.initializer)
