"""ONNX export and its parity check: ``export_onnx`` builds the graph, ``max_abs_diff`` compares it in onnxruntime
with PyTorch on real images.

Kernels run their exportable torch paths while exporting (``force_backend("torch")``): the selective scan becomes
elementwise Mul/Add/Exp over chunks, with no Loop, Scan, CumSum or Einsum nodes. The graph is simplified with
onnxslim, then shaped for onnxruntime's own graph fusions (``vizoo.export.rewrites``). Opset 17 or newer, so
LayerNormalization is one native node. Quantisation and float16 are in ``vizoo.export.quantize``, the ORT format and
the mobile report in ``vizoo.export.ort_format``, latency helpers in ``vizoo.export.timing``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch

from vizoo.export.mobile import mobile_friendly
from vizoo.export.quantize import _to_fp16
from vizoo.export.rewrites import _drop_same_type_castlike, keep_block_transposes, order_gelu_for_fusion
from vizoo.kernels import force_backend

_logger = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization became an ONNX op in opset 17
DEFAULT_OPSET = 18
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "image_index")  # a Detector's graph outputs


class ExportError(ValueError):
    """Export cannot proceed as asked; the message says what to change."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the ONNX file's ``path``, its number of graph ``nodes``, ``op_counts`` (nodes per
    op type) and ``max_abs_diff``, the largest absolute difference from PyTorch when the export was checked (else None).
    """

    path: Path
    nodes: int
    op_counts: Counter = field(default_factory=Counter)
    max_abs_diff: float | None = None


def resolve_model(model: torch.nn.Module | str, **kwargs) -> torch.nn.Module:
    """A model instance, or a registered timm/vizoo name built in eval mode (no weights are downloaded)."""
    if isinstance(model, torch.nn.Module):
        return model.eval()
    if not timm.is_model(model):
        import difflib

        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ExportError(f"unknown model {model!r}.{hint} Run `vizoo list` to see vizoo's models.")
    return timm.create_model(model, pretrained=False, **kwargs).eval()


def input_shape(model: torch.nn.Module, img_size: int | tuple[int, int] | None) -> tuple[int, int, int]:
    """(C, H, W) from ``img_size``, else the fixed size of a timm ViT's patch embedding, else the pretrained cfg.

    A timm ViT built with another ``img_size`` keeps its architecture's cfg (224), so its patch embedding decides.
    """
    c, h, w = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    c = getattr(model, "in_chans", c)
    patch_embed = getattr(model, "patch_embed", None)
    if getattr(patch_embed, "strict_img_size", False) and getattr(patch_embed, "img_size", None):
        h, w = patch_embed.img_size
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return c, h, w


def export_onnx(
    model: torch.nn.Module | str,
    output: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    fp16: bool = False,
    check: bool = True,
    mobile: bool = False,
) -> ExportResult:
    """Export ``model`` (an instance or a model name) to ONNX at ``output``; input "image" (B, C, H, W) -> "output".

    A ``vizoo.heads.Detector`` exports with its post-processing (``graph_module``): "image" -> "boxes" (M, 4),
    "scores" (M,), "labels" (M,) and "image_index" (M,), through one ONNX NonMaxSuppression.

    With ``check``, the ONNX model is run in onnxruntime on real images and compared with PyTorch (``max_abs_diff``,
    always against the model as given). ``fp16`` stores weights and activations in float16 with float32 inputs and
    outputs; a detector's post-processing stays in float32 (``_fp16_detector_graph``). ``mobile`` exports
    ``vizoo.export.mobile.mobile_friendly(model)``, which NNAPI and CoreML take whole (tanh GELU: parity about 1e-3
    instead of 1e-6).
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: vizoo graphs need opset >= {MIN_OPSET} for LayerNormalization")
    import onnx

    model = resolve_model(model)
    shape = input_shape(model, img_size)
    example = torch.randn(2 if dynamic_batch else 1, *shape)
    with torch.no_grad():
        model(example)  # fails here, with the model's own message, on a size or channel count it cannot take
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    graph, output_names = graph_module(mobile_friendly(model) if mobile else model)
    options = dict(dynamic_batch=dynamic_batch, opset=opset, simplify=simplify, mobile=mobile)
    if fp16 and isinstance(graph, _DetectorWithPostprocess):
        onnx_model = _fp16_detector_graph(graph.detector, example, output_names, **options)
    else:
        onnx_model = build_onnx_graph(graph, (example,), ["image"], output_names, **options)
        if fp16:
            onnx_model = _to_fp16(onnx_model)
    onnx.save(onnx_model, output)
    result = ExportResult(output, len(onnx_model.graph.node), Counter(n.op_type for n in onnx_model.graph.node))
    if check:
        images = sample_images(shape, model, count=4 if dynamic_batch else 1)
        result.max_abs_diff = max_abs_diff(output, model, images)
    return result


def build_onnx_graph(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    opset: int,
    simplify: bool,
    mobile: bool,
):
    """``module`` on ``inputs`` as an ONNX ModelProto, through torch's exporter with the kernels' torch paths, then
    simplified (``simplify``) and shaped for onnxruntime (not for ``mobile``). ``dynamic_batch``: axis 0 of every input
    is "batch"."""
    with force_backend("torch"), torch.no_grad():
        program = torch.onnx.export(
            module,
            inputs,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=tuple({0: "batch"} for _ in inputs) if dynamic_batch else None,
            verbose=False,
            optimize=False,  # see below
        )
    if not simplify:
        return program.model_proto
    # torch's own optimize pass (onnxscript's optimizer) gives the same graph on vizoo's models, but one of its
    # rewrite rules is quadratic in the node count, which dominates the export of large graphs (thousands of nodes);
    # constant folding and onnxslim below are linear.
    import onnx_ir
    import onnxscript
    import onnxslim

    onnxscript.optimizer.fold_constants(program.model)
    _drop_same_type_castlike(program.model)
    onnx_ir.passes.common.RemoveUnusedNodesPass()(program.model)
    onnx_model = onnxslim.slim(program.model_proto)
    order_gelu_for_fusion(onnx_model)
    if not mobile:  # CoreML lacks Flatten; the mobile runtimes lay out transposes themselves
        keep_block_transposes(onnx_model)
    return onnx_model


def _fp16_detector_graph(detector: torch.nn.Module, example: torch.Tensor, output_names: list[str], **options):
    """A detector's graph with the network in float16 and its post-processing (``Detector.detections``) in float32.

    The post-processing cannot run in float16: NMS shifts each image and class to its own region of the plane, at
    coordinates up to (B·K)·(max(H, W) + 1). With 80 classes at 800 px that is 64,080 for one image, where float16's
    spacing is 32 px, and past its largest value (65,504) for two. The two parts are exported apart and joined on the
    raw outputs, which pass from float16 to float32 at the join.
    """
    import onnx

    raw_names = ["cls", "dist", "ctr"]
    network = _to_fp16(build_onnx_graph(detector, (example,), ["image"], raw_names, **options))
    with torch.no_grad():
        raw = detector(example)  # sets the feature sizes that detections' anchor points follow
    postprocess = build_onnx_graph(
        _Postprocess(detector, tuple(example.shape[-2:])), raw, raw_names, output_names, **options
    )
    # the two exports name their values alike (val_0, ...): prefix the post-processing's, but not its inputs/outputs
    postprocess = onnx.compose.add_prefix(postprocess, "postprocess/", rename_inputs=False, rename_outputs=False)
    return onnx.compose.merge_models(network, postprocess, io_map=[(name, name) for name in raw_names])


def sample_images(
    shape: tuple[int, int, int],
    model: torch.nn.Module | None = None,
    count: int = 4,
    cfg: dict | None = None,
) -> torch.Tensor:
    """(count, C, H, W) photographs from scikit-image, resized and normalised with the mean and std of ``cfg``
    (default: the model's pretrained cfg; an open_clip model passes its ``preprocess_cfg``).

    Without scikit-image (only the ``demo`` extra installs it), deterministic synthetic images with a photograph's
    spectrum (``vizoo.data.synthetic_photos``) stand in, so export and its parity check need only the ``onnx`` extra.
    """
    from vizoo.data import photo_batch, synthetic_photos, to_input

    if cfg is None:
        cfg = getattr(model, "pretrained_cfg", {}) if model is not None else {}
    mean, std = (tuple(cfg[k]) if cfg.get(k) else None for k in ("mean", "std"))
    try:
        return photo_batch(shape, mean=mean, std=std, count=count)
    except ImportError:
        _logger.info("scikit-image is not installed (the demo extra): parity is checked on synthetic images")
        return to_input(synthetic_photos(count), shape, mean=mean, std=std)


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> np.ndarray:
    """The first output of the ONNX model at ``path`` run on ``images`` in onnxruntime (CPU)."""
    return onnx_runner(path, images)()[0]


def onnx_runner(path: str | os.PathLike, x: torch.Tensor, threads: int | None = None):
    """A callable running the ONNX model at ``path`` on ``x`` in onnxruntime (CPU); it returns the outputs.
    ``threads``: intra-op threads (default: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def graph_module(model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """What exports for ``model``, and its output names: a ``Detector`` with its post-processing (boxes, scores,
    labels and image index of every detection in the batch, see ``Detector.detections``), any other model as is."""
    from vizoo.heads.detection import Detector

    if isinstance(model, Detector):
        return _DetectorWithPostprocess(model).eval(), list(DETECTION_OUTPUTS)
    return model, ["output"]


class _DetectorWithPostprocess(torch.nn.Module):
    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector.detections(*self.detector(images), tuple(images.shape[-2:]))


class _Postprocess(torch.nn.Module):
    """A detector's post-processing alone: raw outputs (cls, dist, ctr) -> detections, for a fixed image size."""

    def __init__(self, detector: torch.nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.detector, self.image_size = detector, image_size

    def forward(self, cls: torch.Tensor, dist: torch.Tensor, ctr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector.detections(cls, dist, ctr, self.image_size)


def max_abs_diff(path: str | os.PathLike, model: torch.nn.Module, images: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch eager on ``images`` over all outputs of
    ``graph_module(model)``; inf where an output's shape differs. A detector's detections are compared as sets
    (``detection_diff``): rounding may swap two detections of near-equal score."""
    graph, names = graph_module(model)
    with torch.no_grad():
        expected = graph(images)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    got = onnx_runner(path, images)()
    if tuple(names) == DETECTION_OUTPUTS:
        return detection_diff(dict(zip(names, got)), dict(zip(names, expected)))
    return max(float(np.abs(g - e).max(initial=0.0)) if g.shape == e.shape else math.inf for g, e in zip(got, expected))


def detection_diff(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """Largest box coordinate (pixels) or score difference between two sets of detections ("boxes" (M, 4), "scores",
    "labels", "image_index" (M,) each), whatever their order: every expected detection, by decreasing score, is
    paired with the nearest unpaired detection of its image and label (largest coordinate difference). inf where an
    image has a different number of detections of some label."""
    got_keys, expected_keys = _image_and_label(got), _image_and_label(expected)
    groups, counts = np.unique(expected_keys, axis=0, return_counts=True)
    got_groups, got_counts = np.unique(got_keys, axis=0, return_counts=True)
    if not (np.array_equal(groups, got_groups) and np.array_equal(counts, got_counts)):
        return math.inf
    diff = 0.0
    for group in groups:
        mine, theirs = np.flatnonzero((got_keys == group).all(1)), np.flatnonzero((expected_keys == group).all(1))
        apart = np.abs(got["boxes"][mine][None] - expected["boxes"][theirs][:, None]).max(-1)  # (expected, got)
        for row in np.argsort(-expected["scores"][theirs], kind="stable"):
            col = int(apart[row].argmin())
            score_diff = abs(float(got["scores"][mine[col]]) - float(expected["scores"][theirs[row]]))
            diff = max(diff, float(apart[row, col]), score_diff)
            apart[:, col] = math.inf
    return diff


def _image_and_label(detections: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([detections["image_index"], detections["labels"]], axis=1).astype(np.int64)
