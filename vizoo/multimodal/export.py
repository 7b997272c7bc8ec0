"""ONNX graphs of a CLIP model for on-device retrieval: the image encoder, the text encoder, and a zero-shot classifier
with its class embeddings built in.

Each graph is built by vizoo's own ONNX path (``vizoo.export.onnx.build_onnx_graph``: torch's exporter with the kernels'
torch paths, so a selective scan becomes elementwise ops with no Loop or Scan; then onnxslim) and checked in
onnxruntime against eager PyTorch, on scikit-image's photographs for the image side and on real captions for the text
side. Every graph has a dynamic batch axis.

- ``export_image_encoder``: "image" (B, 3, H, W) float32 -> "embedding" (B, D), L2-normalised
  (``model.encode_image(x, normalize=True)``).
- ``export_text_encoder``: "text" (B, context_length) int64 token ids -> "embedding" (B, D), L2-normalised
  (``model.encode_text(t, normalize=True)``). The causal attention mask is a constant of the graph, and the pooling at
  the end-of-text token (open_clip's ``argmax`` over the ids, or the ``eos`` id) is one ArgMax and one GatherND.
- ``export_zero_shot_classifier``: "image" (B, 3, H, W) -> "logits" (B, K) and, optionally, "probs" (B, K). The class
  embeddings (D, K) are open_clip's ``build_zero_shot_classifier`` (each class's template captions encoded, averaged
  and normalised), stored in the graph as a constant, so a device needs neither the text tower nor a tokenizer.

Retrieval on the device then needs one matrix product: embeddings from the two encoder graphs are unit vectors, so
their dot product is the cosine similarity the model was trained on.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vizoo.export.onnx import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportError,
    ExportResult,
    build_onnx_graph,
    max_abs_diff,
    sample_images,
)

__all__ = [
    "SAMPLE_CAPTIONS",
    "export_image_encoder",
    "export_text_encoder",
    "export_zero_shot_classifier",
]

# Captions for the text encoder's parity check: real sentences of different lengths (the end-of-text token, where
# the text tower pools, sits at a different position in each).
SAMPLE_CAPTIONS = (
    "a photo of an astronaut",
    "a cup of coffee on a wooden table, seen from above",
    "a tabby cat lying on a blanket",
    "a rocket on the launch pad before lift-off, with clouds of steam around it",
)


class _ImageEncoder(nn.Module):
    """image (B, 3, H, W) -> the normalised image embedding (B, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, normalize=True)


class _TextEncoder(nn.Module):
    """token ids (B, context_length) -> the normalised text embedding (B, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(text, normalize=True)


class _ZeroShotClassifier(nn.Module):
    """image (B, 3, H, W) -> logits (B, K) = exp(logit_scale) * cos(image embedding, class embedding) [+ logit_bias],
    and probabilities (B, K) with ``probs``: a softmax over the classes, or for a SigLIP model (one with a logit bias)
    the sigmoid of each logit, as that model was trained."""

    def __init__(self, model: nn.Module, class_embeddings: torch.Tensor, probs: bool):
        super().__init__()
        self.model = model
        self.register_buffer("class_embeddings", class_embeddings.detach().clone())  # (D, K), unit columns
        self.register_buffer("scale", model.logit_scale.detach().exp().clone().reshape(()))
        bias = getattr(model, "logit_bias", None)
        self.sigmoid = bias is not None
        self.register_buffer("bias", (bias.detach() if self.sigmoid else torch.zeros(())).clone().reshape(()))
        self.probs = probs

    def forward(self, image: torch.Tensor):
        features = F.normalize(self.model.encode_image(image), dim=-1)
        logits = self.scale * features @ self.class_embeddings
        if self.sigmoid:
            logits = logits + self.bias
        if not self.probs:
            return logits
        return logits, (logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1))


# --- checks ----------------------------------------------------------------------------------------------------------


def _check_clip(model: nn.Module, *methods: str) -> None:
    missing = [m for m in methods if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"expected an open_clip CLIP model (with {', '.join(methods)}), got {type(model).__name__}; "
            "build one with vizoo.multimodal.create_clip or open_clip.create_model"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ExportError(f"the model is on {sorted(devices)}; export runs on the CPU: call model.cpu() first")


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: vizoo graphs need opset >= {MIN_OPSET} for LayerNormalization")


def _image_shape(model: nn.Module, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) to export at: ``image_size``, else the tower's own size; checked against what the tower can take."""
    visual = model.visual
    if image_size is None:
        image_size = getattr(visual, "image_size", None) or (getattr(visual, "preprocess_cfg", {}) or {}).get("size")
    if image_size is None:
        raise ExportError("the image tower does not record its input size: pass image_size=(H, W)")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    trunk = getattr(visual, "trunk", None)
    multiple = getattr(trunk, "input_multiple", 1)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        fixed = [max(multiple, round(s / multiple) * multiple) for s in (h, w)]
        name = (getattr(trunk, "pretrained_cfg", None) or {}).get("architecture", type(visual).__name__)
        raise ExportError(
            f"the {name} image tower takes images whose height and width are multiples of {multiple}, got "
            f"image_size={image_size}; use image_size={fixed[0] if fixed[0] == fixed[1] else tuple(fixed)}"
        )
    example = torch.zeros(1, 3, h, w)
    try:
        with torch.no_grad():
            model.encode_image(example)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ExportError(
            f"the image tower cannot take a {h}x{w} image ({e}); export at the size the model was built for, "
            f"image_size={getattr(visual, 'image_size', None)}"
        ) from e
    return h, w


def _default_tokenizer(model: nn.Module):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=_context_length(model))


def _context_length(model: nn.Module) -> int:
    length = getattr(model, "context_length", None) or getattr(getattr(model, "text", None), "context_length", None)
    if not length:
        raise ExportError("the model does not record its text context length (model.context_length)")
    return int(length)


def _tokens(model: nn.Module, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    tokens = tokenizer(list(texts))
    length = _context_length(model)
    if tokens.dim() != 2 or tokens.shape[1] != length:
        raise ExportError(
            f"the tokenizer gives token ids of shape {tuple(tokens.shape)}, but the text tower takes (B, {length}); "
            f"use the model's tokenizer (create_clip returns it) or SimpleTokenizer(context_length={length})"
        )
    return tokens.long()


def _check_classes(classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]]) -> None:
    if isinstance(classnames, str) or not isinstance(classnames, Sequence) or len(classnames) == 0:
        raise ExportError(
            f"classnames must be a non-empty list of class names, e.g. ['cat', 'dog'], got {classnames!r}"
        )
    if isinstance(templates, str) or not isinstance(templates, Sequence) or len(templates) == 0:
        raise ExportError(
            "templates must be a non-empty list of caption templates with {} for the class name, e.g. "
            f"['a photo of a {{}}.'], got {templates!r}"
        )
    kinds = {isinstance(t, str) for t in templates}
    if len(kinds) > 1 or not (kinds == {True} or all(callable(t) for t in templates)):
        raise ExportError("templates must be all format strings ('a photo of a {}.') or all callables (name -> text)")
    bad = [t for t in templates if isinstance(t, str) and "{}" not in t]
    if bad:
        raise ExportError(f"templates {bad} have no {{}} for the class name; write e.g. 'a photo of a {{}}.'")


# --- export ----------------------------------------------------------------------------------------------------------


def _export(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_names: list[str],
    path: str | os.PathLike,
    check_inputs: torch.Tensor | None,
    opset: int,
    simplify: bool,
) -> ExportResult:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_model = build_onnx_graph(
        module, (example,), [input_name], output_names, dynamic_batch=True, opset=opset, simplify=simplify, mobile=False
    )
    onnx.save(onnx_model, path)
    result = ExportResult(path, len(onnx_model.graph.node), Counter(n.op_type for n in onnx_model.graph.node))
    if check_inputs is not None:
        result.max_abs_diff = max_abs_diff(path, module, check_inputs)
    return result


class _EvalMode:
    """Puts a model in eval mode for the export and restores its mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.training)


def export_image_encoder(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    check: bool = True,
) -> ExportResult:
    """Export the image encoder of an open_clip CLIP: "image" (B, 3, H, W) -> "embedding" (B, D), L2-normalised.

    The input is the preprocessed image (the model's val transform: resized, normalised with its mean and std).
    ``image_size``: square side or (H, W), the tower's own size if None; a size the tower cannot take raises
    ``ExportError`` with the size to use. With ``check``, ``max_abs_diff`` is the largest difference from eager
    PyTorch on four scikit-image photographs.
    """
    _check_clip(model, "encode_image")
    _check_opset(opset)
    with _EvalMode(model):
        size = _image_shape(model, image_size)
        module = _ImageEncoder(model).eval()
        photos = (
            sample_images((3, *size), count=4, cfg=getattr(model.visual, "preprocess_cfg", None) or {})
            if check
            else None
        )
        return _export(module, torch.randn(2, 3, *size), "image", ["embedding"], path, photos, opset, simplify)


def export_text_encoder(
    model: nn.Module,
    path: str | os.PathLike,
    tokenizer=None,
    captions: Sequence[str] = SAMPLE_CAPTIONS,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    check: bool = True,
) -> ExportResult:
    """Export the text encoder of an open_clip CLIP: "text" (B, context_length) int64 token ids -> "embedding" (B, D),
    L2-normalised.

    Token ids come from the model's tokenizer (``tokenizer``; open_clip's bundled BPE ``SimpleTokenizer`` at the
    model's context length if None), padded to the context length, which is fixed in the graph (the positional
    embedding has that length). With ``check``, ``max_abs_diff`` is the largest difference from eager PyTorch on
    ``captions``.
    """
    _check_clip(model, "encode_text")
    _check_opset(opset)
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(model)
    with _EvalMode(model):
        tokens = _tokens(model, tokenizer, captions if captions else SAMPLE_CAPTIONS)
        module = _TextEncoder(model).eval()
        example = tokens[:2] if len(tokens) >= 2 else tokens.expand(2, -1)
        return _export(module, example, "text", ["embedding"], path, tokens if check else None, opset, simplify)


def export_zero_shot_classifier(
    model: nn.Module,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    probs: bool = False,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    check: bool = True,
) -> ExportResult:
    """Export a zero-shot classifier: "image" (B, 3, H, W) -> "logits" (B, K), and "probs" (B, K) with ``probs``.

    The class embeddings are built by open_clip's ``build_zero_shot_classifier``: every class name is put in every
    template ("a photo of a {}." or a callable), encoded with the text tower, the template embeddings averaged and
    normalised. They enter the graph as a (D, K) constant, so the graph needs no text tower or tokenizer. Logits are
    ``exp(logit_scale) * cos(image, class)`` (plus ``logit_bias`` for a SigLIP model); "probs" is their softmax over
    the classes (the sigmoid of each logit for a SigLIP model). Classes are in the order of ``classnames``.
    ``image_size`` and ``check`` as in ``export_image_encoder``; empty ``classnames`` or ``templates`` raise
    ``ExportError``.
    """
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    _check_clip(model, "encode_image", "encode_text")
    _check_opset(opset)
    _check_classes(classnames, templates)
    _tokens(model, tokenizer, [""])  # the tokenizer fits the text tower
    with _EvalMode(model):
        size = _image_shape(model, image_size)
        with torch.no_grad():
            class_embeddings = build_zero_shot_classifier(
                model, tokenizer, list(classnames), list(templates), num_classes_per_batch=10, device="cpu"
            )
        module = _ZeroShotClassifier(model, class_embeddings, probs).eval()
        photos = (
            sample_images((3, *size), count=4, cfg=getattr(model.visual, "preprocess_cfg", None) or {})
            if check
            else None
        )
        names = ["logits", "probs"] if probs else ["logits"]
        return _export(module, torch.randn(2, 3, *size), "image", names, path, photos, opset, simplify)
