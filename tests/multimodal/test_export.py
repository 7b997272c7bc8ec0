"""ONNX graphs for on-device retrieval: image encoder, text encoder and zero-shot classifier, checked in onnxruntime
against eager PyTorch on real photos and captions, at batch 1 and 3 (dynamic batch)."""

import numpy as np
import open_clip
import pytest
import torch

import vizoo.multimodal as vm
from vizoo.data import photo_batch
from vizoo.export.onnx import ExportError
from vizoo.multimodal.export import (
    SAMPLE_CAPTIONS,
    export_image_encoder,
    export_text_encoder,
    export_zero_shot_classifier,
)

pytest.importorskip("onnxruntime")

CLASSNAMES = ["coffee", "astronaut", "cat", "rocket"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "a close-up photo of a {}."]


def _clip(name):
    torch.manual_seed(0)
    model, _, _, tokenizer = vm.create_clip(name, text="tiny", embed_dim=32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def clip():
    """A CLIP with a selective-scan tower (the scan must export without Loop or Scan)."""
    return _clip("test_vmamba")


@pytest.fixture(scope="module")
def images(clip):
    """(4, 3, 64, 64) scikit-image's astronaut, coffee, cat (chelsea) and rocket, as the tower's val transform
    normalises them (every test_ tower takes 64x64 with ImageNet's mean and std)."""
    cfg = clip[0].visual.preprocess_cfg
    return photo_batch((3, *cfg["size"]), mean=cfg["mean"], std=cfg["std"], count=4)


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _no_loops(result):
    assert not {"Loop", "Scan", "If"} & set(result.op_counts), result.op_counts


@pytest.fixture(scope="module")
def image_graph(clip, tmp_path_factory):
    return export_image_encoder(clip[0], tmp_path_factory.mktemp("onnx") / "image.onnx")


@pytest.fixture(scope="module")
def text_graph(clip, tmp_path_factory):
    return export_text_encoder(clip[0], tmp_path_factory.mktemp("onnx") / "text.onnx", tokenizer=clip[1])


def test_image_encoder_matches_eager_at_any_batch(clip, images, image_graph):
    model = clip[0]
    assert image_graph.max_abs_diff < 1e-4
    _no_loops(image_graph)
    session = _session(image_graph.path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape[1:], out.name) == ("image", [3, 64, 64], "embedding")
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch axis
    for batch in (1, 3):
        x = images[:batch]
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = model.encode_image(x, normalize=True).numpy()
        assert got.shape == (batch, 32)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_encoder_matches_eager_at_any_batch(clip, text_graph):
    model, tokenizer = clip
    assert text_graph.max_abs_diff < 1e-4
    _no_loops(text_graph)
    assert text_graph.op_counts["ArgMax"] == 1  # the end-of-text pooling, as one op
    session = _session(text_graph.path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1], out.name) == ("text", "tensor(int64)", 32, "embedding")
    for batch in (1, 3):
        tokens = tokenizer(list(SAMPLE_CAPTIONS[-batch:]))
        got = session.run(None, {"text": tokens.numpy()})[0]
        with torch.no_grad():
            expected = model.encode_text(tokens, normalize=True).numpy()
        assert got.shape == (batch, 32)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_text_encoder_keeps_the_causal_mask_and_pools_at_end_of_text(clip, text_graph):
    """Tokens after the end-of-text token cannot reach it through the causal mask; tokens before it do."""
    model, tokenizer = clip
    session = _session(text_graph.path)
    tokens = tokenizer(["a photo of a cat", "a cup of coffee"])
    eot = tokens.argmax(dim=-1)
    after, before = tokens.clone(), tokens.clone()
    for i, e in enumerate(eot.tolist()):
        after[i, e + 1 :] = 1000  # padding replaced by ordinary tokens (ids below end-of-text)
        before[i, 1] = 1000
    run = lambda t: session.run(None, {"text": t.numpy()})[0]  # noqa: E731
    np.testing.assert_allclose(run(after), run(tokens), atol=1e-6, rtol=0)
    assert np.abs(run(before) - run(tokens)).max() > 1e-3
    with torch.no_grad():
        np.testing.assert_allclose(run(before), model.encode_text(before, normalize=True).numpy(), atol=1e-4)


def test_zero_shot_graph_gives_eager_top1_on_real_images(images, tmp_path):
    """On CAS-ViT's tower, whose graph exports fastest: what is tested here is the head around the tower."""
    model, tokenizer = _clip("test_cas_vit")
    result = export_zero_shot_classifier(
        model, tokenizer, CLASSNAMES, TEMPLATES, tmp_path / "zero_shot.onnx", probs=True
    )
    assert result.max_abs_diff < 1e-4
    _no_loops(result)
    session = _session(result.path)
    assert [o.name for o in session.get_outputs()] == ["logits", "probs"]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSNAMES, TEMPLATES)
        eager = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ classifier
    for batch in (1, 3):
        logits, probs = session.run(None, {"image": images[:batch].numpy()})
        assert logits.shape == probs.shape == (batch, len(CLASSNAMES))
        np.testing.assert_allclose(logits, eager[:batch].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    logits, _ = session.run(None, {"image": images.numpy()})
    assert logits.argmax(1).tolist() == eager.argmax(1).tolist()


def test_bad_inputs_fail_clearly(clip, tmp_path):
    model, tokenizer = clip
    with pytest.raises(ExportError, match=r"multiples of 32.*image_size=64"):
        export_image_encoder(model, tmp_path / "image.onnx", image_size=70)
    with pytest.raises(ExportError, match="classnames must be a non-empty list"):
        export_zero_shot_classifier(model, tokenizer, [], TEMPLATES, tmp_path / "zs.onnx")
    with pytest.raises(ExportError, match="templates must be a non-empty list"):
        export_zero_shot_classifier(model, tokenizer, CLASSNAMES, [], tmp_path / "zs.onnx")
    with pytest.raises(ExportError, match=r"no \{\} for the class name"):
        export_zero_shot_classifier(model, tokenizer, CLASSNAMES, ["a photo"], tmp_path / "zs.onnx")
    with pytest.raises(ExportError, match="context_length=32"):
        export_text_encoder(model, tmp_path / "text.onnx", tokenizer=open_clip.tokenizer.SimpleTokenizer())
    assert not list(tmp_path.iterdir())  # nothing written
