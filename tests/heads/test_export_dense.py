"""Segmentor and detector (raw, pre-NMS outputs) export to ONNX with onnxruntime parity."""

import numpy as np
import pytest
import torch

from vizoo.heads import create_detector, create_segmentor

pytest.importorskip("onnxruntime")


def test_segmentor_onnx_parity(tmp_path):
    from vizoo.export import export_onnx

    model = create_segmentor("test_vmamba", "upernet", num_classes=3, channels=16)
    result = export_onnx(model, tmp_path / "seg.onnx", img_size=(64, 96), simplify=False)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4


def test_detector_raw_outputs_onnx_parity(tmp_path):
    import onnxruntime as ort

    from vizoo.data import photo_batch

    model = create_detector("resnet18", 2, fpn_channels=16, num_convs=1, extra_levels=1).eval()
    x = photo_batch((3, 64, 96), count=1)
    program = torch.onnx.export(
        model, (x,), dynamo=True, opset_version=18, input_names=["image"], output_names=["cls", "dist", "ctr"]
    )
    program.save(str(tmp_path / "det.onnx"))
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() < 1e-4
    # the exported raw outputs decode to the same detections as eager
    dets = model.postprocess(*(torch.from_numpy(o) for o in outputs), image_size=(64, 96))
    ref = model.predict(x)
    assert torch.allclose(dets[0]["scores"], ref[0]["scores"], atol=1e-4)
