"""Segmentor and detector export to ONNX with onnxruntime parity: the detector end to end (NMS in the graph) and as
raw, pre-NMS outputs."""

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


def test_detector_exports_end_to_end_with_nms(tmp_path):
    """A detector on a vizoo SSM backbone exports with its post-processing: boxes, scores, labels and image index
    through ONNX NonMaxSuppression, for any batch size, with eager's detections."""
    import onnx

    from vizoo.data import photo_batch
    from vizoo.export import ExportError, convert_to_fp16, export_onnx

    torch.manual_seed(0)
    model = create_detector("test_vmamba", 4, fpn_channels=16, num_convs=1, max_detections=30).eval()
    with torch.no_grad():  # spread the scores, so that detections are not near-ties of the init's prior
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    result = export_onnx(model, tmp_path / "det.onnx", img_size=(128, 192))
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-3  # boxes in pixels, up to 192
    graph = onnx.load(result.path).graph
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "image_index"]
    assert result.op_counts["NonMaxSuppression"] == 1
    assert not {"Loop", "Scan", "If"} & set(result.op_counts)

    session = _onnx_session(result.path)
    images = photo_batch((3, 128, 192), count=3)
    for batch in (images[:1], images):
        boxes, scores, labels, image_index = session.run(None, {"image": batch.numpy()})
        expected = model.predict(batch)
        assert np.array_equal(image_index, np.repeat(np.arange(len(batch)), [len(d["scores"]) for d in expected]))
        assert all(len(d["scores"]) == 30 for d in expected)  # the cap holds per image
        want = {k: torch.cat([d[k] for d in expected]).numpy() for k in ("boxes", "scores", "labels")}
        assert np.array_equal(labels, want["labels"])
        np.testing.assert_allclose(scores, want["scores"], atol=1e-5)
        np.testing.assert_allclose(boxes, want["boxes"], atol=1e-3)
        assert (np.diff(scores[image_index == 0]) <= 0).all()  # by decreasing score within an image

    with pytest.raises(ExportError, match=r"fp16=True"):  # NMS's coordinates need float32: export, don't convert
        convert_to_fp16(result.path, tmp_path / "det16.onnx")
    assert not (tmp_path / "det16.onnx").exists()


def test_fp16_detector_keeps_its_postprocessing_in_float32(tmp_path):
    """With fp16, the network runs in float16 but NMS's per-image, per-class coordinate shift does not: at batch 2 with
    200 classes it reaches (2·200)·193 > 65504 (inf in float16), and above 32768 float16 rounds boxes to 32 px. Here
    every location predicts a box 8 strides wide for the last class, so NMS has overlaps to remove; the float16 graph
    must keep the boxes that eager keeps."""
    from vizoo.data import photo_batch
    from vizoo.export import export_onnx

    torch.manual_seed(0)
    model = create_detector("resnet18", 200, fpn_channels=16, num_convs=1, max_detections=30).eval()
    with torch.no_grad():
        model.head.cls_logits.weight.normal_(std=0.05)
        model.head.cls_logits.bias[-1] = 3.0
        model.head.bbox_pred.weight.normal_(std=0.01)
        model.head.bbox_pred.bias.fill_(4.0)
    # No export check: on its photos, one image's 30th detection (of many within 0.04 in score) differs, as float16
    # moves a score by 1.6e-4; the photos below have no such tie at the cap.
    result = export_onnx(model, tmp_path / "det16.onnx", img_size=(128, 192), fp16=True, check=False)
    assert result.op_counts["NonMaxSuppression"] == 1
    images = photo_batch((3, 128, 192), count=2)
    expected = model.predict(images)
    assert [len(d["scores"]) for d in expected] == [30, 30] and all((d["labels"] == 199).all() for d in expected)
    # the same detections, as sets per image (float16 may swap near-tied scores): each has an eager one of its image
    # and label with the box within 0.1 px (float16's rounding of the distances) and the score within 1e-3
    boxes, scores, labels, image_index = _onnx_session(result.path).run(None, {"image": images.numpy()})
    for i, want in enumerate(expected):
        mine = image_index == i
        assert mine.sum() == len(want["scores"])
        apart = np.abs(boxes[mine][:, None] - want["boxes"].numpy()[None]).max(-1)
        apart[labels[mine][:, None] != want["labels"].numpy()[None]] = np.inf
        nearest = apart.argmin(1)
        assert (apart.min(1) < 0.1).all() and len(set(nearest.tolist())) == len(nearest)
        np.testing.assert_allclose(scores[mine], want["scores"].numpy()[nearest], atol=1e-3)


def test_detection_diff_matches_detections_as_sets():
    """Export's parity for detectors: the order of the detections does not count, their boxes and scores do, and a
    detection with no counterpart of its image and label makes it inf."""
    from vizoo.export import detection_diff

    rng = np.random.default_rng(0)
    n = 12
    expected = {
        "boxes": rng.uniform(0, 100, (n, 4)).astype(np.float32),
        "scores": np.sort(rng.uniform(0.1, 1, n)).astype(np.float32)[::-1].copy(),
        "labels": rng.integers(0, 3, n),
        "image_index": rng.integers(0, 2, n),
    }
    order = rng.permutation(n)
    shuffled = {k: v[order].copy() for k, v in expected.items()}
    assert detection_diff(shuffled, expected) == 0.0
    moved = {k: v.copy() for k, v in shuffled.items()}
    moved["boxes"][3, 2] += 2.5
    moved["scores"][5] -= 0.25
    assert detection_diff(moved, expected) == pytest.approx(2.5)
    moved["boxes"][3, 2] -= 2.5
    assert detection_diff(moved, expected) == pytest.approx(0.25)
    relabelled = {k: v.copy() for k, v in shuffled.items()}
    relabelled["labels"][0] = 3
    assert detection_diff(relabelled, expected) == np.inf
    fewer = {k: v[1:] for k, v in shuffled.items()}
    assert detection_diff(fewer, expected) == np.inf


def _onnx_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
