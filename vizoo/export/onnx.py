"""ONNX export for edge runtimes: export, parity in onnxruntime, mobile checks, ORT format, int8 and fp16.

Kernels run their exportable torch paths while exporting (``force_backend("torch")``): the selective scan becomes
elementwise Mul/Add/Exp over chunks, with no Loop, Scan, CumSum or Einsum nodes. The graph is simplified with
onnxslim, then shaped for onnxruntime's own graph fusions (``order_gelu_for_fusion``, ``keep_block_transposes``).
Opset 17 or newer, so LayerNormalization is one native node.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch

from vizoo.export.mobile import mobile_friendly
from vizoo.kernels import force_backend

_logger = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization became an ONNX op in opset 17
DEFAULT_OPSET = 18
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "image_index")  # a Detector's graph outputs


class ExportError(ValueError):
    """Export cannot proceed as asked; the message says what to change."""


@dataclass
class ExportResult:
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
        onnx_model = _onnx_graph(graph, (example,), ["image"], output_names, **options)
        if fp16:
            onnx_model = _to_fp16(onnx_model)
    onnx.save(onnx_model, output)
    result = ExportResult(output, len(onnx_model.graph.node), Counter(n.op_type for n in onnx_model.graph.node))
    if check:
        images = sample_images(shape, model, count=4 if dynamic_batch else 1)
        result.max_abs_diff = max_abs_diff(output, model, images)
    return result


def _onnx_graph(
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


def _to_fp16(onnx_model):
    """Weights and activations in float16, inputs and outputs kept in float32."""
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = onnx_ir.from_proto(convert_float_to_float16(onnx_model, keep_io_types=True))
    converted.graph.sort()  # the converter appends its input casts after their readers
    return onnx_ir.to_proto(converted)


def _fp16_detector_graph(detector: torch.nn.Module, example: torch.Tensor, output_names: list[str], **options):
    """A detector's graph with the network in float16 and its post-processing (``Detector.detections``) in float32.

    The post-processing cannot run in float16: NMS shifts each image and class to its own region of the plane, at
    coordinates up to (B·K)·(max(H, W) + 1). With 80 classes at 800 px that is 64,080 for one image, where float16's
    spacing is 32 px, and past its largest value (65,504) for two. The two parts are exported apart and joined on the
    raw outputs, which pass from float16 to float32 at the join.
    """
    import onnx

    raw_names = ["cls", "dist", "ctr"]
    network = _to_fp16(_onnx_graph(detector, (example,), ["image"], raw_names, **options))
    with torch.no_grad():
        raw = detector(example)  # sets the feature sizes that detections' anchor points follow
    postprocess = _onnx_graph(
        _Postprocess(detector, tuple(example.shape[-2:])), raw, raw_names, output_names, **options
    )
    # the two exports name their values alike (val_0, ...): prefix the post-processing's, but not its inputs/outputs
    postprocess = onnx.compose.add_prefix(postprocess, "postprocess/", rename_inputs=False, rename_outputs=False)
    return onnx.compose.merge_models(network, postprocess, io_map=[(name, name) for name in raw_names])


def keep_block_transposes(model) -> int:
    """Put a Flatten between a Transpose that moves the innermost axis and a Reshape -> Transpose that keeps it;
    returns how many were put in.

    onnxruntime (1.32) otherwise merges such a chain into one Transpose that moves the innermost axis, and that
    copies value by value, where each of the two kept Transposes moves contiguous runs (and the first one also folds
    into the NCHWc Conv's output reorder). onnxruntime's transpose optimizer looks through a Reshape but not through a
    Flatten, and a Flatten costs nothing (its output aliases its input). ``tools/benchmark_onnx.py --profile`` shows
    Transpose's share of a pass. Not used for ``mobile`` graphs: CoreML lacks Flatten.
    """
    import onnx

    def perm(node) -> list[int]:
        return next(list(a.ints) for a in node.attribute if a.name == "perm")

    def keeps_innermost(node) -> bool:
        return node.op_type == "Transpose" and perm(node)[-1] == len(perm(node)) - 1

    constants = _constant_values(model)

    def reads_no_dims(reshape) -> bool:  # a 0 in a Reshape's shape copies a dim of its input, which Flatten changes
        shape = constants.get(reshape.input[1])
        return shape is None or bool((shape != 0).all())

    consumers = _consumers(model)
    nodes, inserted = [], 0
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "Transpose" or keeps_innermost(node):
            continue
        reshapes = [
            consumer
            for consumer in consumers.get(node.output[0], [])
            if consumer.op_type == "Reshape"
            and reads_no_dims(consumer)
            and any(map(keeps_innermost, consumers.get(consumer.output[0], [])))
        ]
        if not reshapes:
            continue
        flat = f"{node.output[0]}_flat"
        nodes.append(onnx.helper.make_node("Flatten", [node.output[0]], [flat], name=f"{node.name}_flat", axis=1))
        for reshape in reshapes:
            reshape.input[0] = flat
        inserted += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return inserted


def order_gelu_for_fusion(model) -> int:
    """Reorder exact GELU's products as (x · 1/2) · (1 + erf(x / √2)), the order onnxruntime fuses into one Gelu node;
    returns how many were reordered.

    torch exports x · (1/2 · (1 + erf(x / √2))), which onnxruntime (1.32) runs as five nodes, each a pass over the
    activation, where the fused Gelu makes one (``tools/benchmark_onnx.py --profile`` lists both). Both orders are
    exact in float32 (halving is exact), and the ops stay the same, so other runtimes see the same graph but for the
    order.
    """
    constants = _constant_values(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers = _consumers(model)

    def only_consumer(node, op_type: str):
        following = consumers.get(node.output[0], [])
        return following[0] if len(following) == 1 and following[0].op_type == op_type else None

    def constant_input(node, value: float) -> str | None:
        return next((name for name in node.input if _is_scalar(constants.get(name), value)), None)

    reordered = 0
    for erf in [node for node in model.graph.node if node.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _is_scalar(constants.get(div.input[1]), math.sqrt(2)):
            continue
        x = div.input[0]
        add = only_consumer(erf, "Add")
        half_times = add and constant_input(add, 1.0) and only_consumer(add, "Mul")
        half = half_times and constant_input(half_times, 0.5)
        outer = half and only_consumer(half_times, "Mul")
        if not outer or x not in outer.input:
            continue
        half_times.input[:] = [x, half]
        outer.input[:] = [half_times.output[0], add.output[0]]
        reordered += 1
    return reordered


def _consumers(model) -> dict[str, list]:
    """The nodes that read each value of an ONNX graph, by value name."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _constant_values(model) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes of an ONNX graph, by name."""
    import onnx

    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return constants


def _is_scalar(value: np.ndarray | None, expected: float) -> bool:
    return value is not None and value.size == 1 and abs(float(value.reshape(())) - expected) <= 1e-6


def _drop_same_type_castlike(model) -> None:
    """Bypass CastLike nodes that cast a constant to the type it already has (torch's exported
    scaled_dot_product_attention scales by one). Constant folding keeps them, as the target is not a constant, and
    NNAPI and CoreML lack CastLike."""
    import onnx_ir

    if not any(node.op_type == "CastLike" for node in model.graph):
        return
    onnx_ir.passes.common.ShapeInferencePass()(model)  # types the values torch's decompositions leave untyped
    for node in list(model.graph):
        if node.op_type != "CastLike":
            continue
        source, like = node.inputs
        if source.const_value is not None and source.dtype is not None and source.dtype == like.dtype:
            onnx_ir.convenience.replace_all_uses_with(node.outputs[0], source)


def sample_images(shape: tuple[int, int, int], model: torch.nn.Module | None = None, count: int = 4) -> torch.Tensor:
    """(count, C, H, W) photographs from scikit-image, resized and normalised with the model's mean and std.

    Without scikit-image (only the ``demo`` extra installs it), deterministic synthetic images with a photograph's
    spectrum (``vizoo.data.synthetic_photos``) stand in, so export and its parity check need only the ``onnx`` extra.
    """
    from vizoo.data import photo_batch, synthetic_photos, to_input

    cfg = getattr(model, "pretrained_cfg", {}) if model is not None else {}
    try:
        return photo_batch(shape, mean=cfg.get("mean"), std=cfg.get("std"), count=count)
    except ImportError:
        _logger.info("scikit-image is not installed (the demo extra): parity is checked on synthetic images")
        return to_input(synthetic_photos(count), shape, mean=cfg.get("mean"), std=cfg.get("std"))


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> np.ndarray:
    return _onnx_runner(path, images)()[0]


def _onnx_runner(path: str | os.PathLike, x: torch.Tensor):
    """A callable running the ONNX model at ``path`` on ``x`` in onnxruntime (CPU); it returns the outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def onnx_latencies_ms(paths: list[str | os.PathLike], x: torch.Tensor, rounds: int = 4, passes: int = 6) -> list[float]:
    """Median milliseconds of onnxruntime (CPU) on ``x`` for each ONNX model, measured in alternating blocks (as
    ``eager_vs_onnx_ms``), e.g. an fp32 model and its int8 versions."""
    times = _interleaved_times_ms([_onnx_runner(path, x) for path in paths], rounds, passes)
    return [float(np.median(runner)) for runner in times]


@dataclass
class LatencyComparison:
    """PyTorch eager against onnxruntime: the median pass of each, and the ratio in each round (ORT / eager of the
    median passes of its two blocks), whose spread shows how much the machine's load moved the ratio."""

    eager_ms: float
    onnx_ms: float
    round_ratios: list[float]

    @property
    def ratio(self) -> float:
        return self.onnx_ms / self.eager_ms


def eager_vs_onnx_ms(
    model: torch.nn.Module, path: str | os.PathLike, x: torch.Tensor, rounds: int = 4, passes: int = 6
) -> LatencyComparison:
    """Milliseconds of PyTorch eager and of onnxruntime (CPU) on ``x``, measured in alternating blocks.

    Each round runs ``passes`` passes of eager, then of onnxruntime, so both see the same load when the machine is
    shared or noisy and their ratio stays comparable when the absolute figures drift. The first pass of each block is
    not timed: after a run, a runtime's worker threads may spin for a while and slow the other's first pass.
    """
    with torch.inference_mode():
        eager, onnx = _interleaved_times_ms([lambda: model(x), _onnx_runner(path, x)], rounds, passes)
    round_ratios = [float(np.median(o) / np.median(e)) for e, o in zip(eager, onnx)]
    return LatencyComparison(float(np.median(eager)), float(np.median(onnx)), round_ratios)


def _interleaved_times_ms(runners: list, rounds: int, passes: int) -> list[list[list[float]]]:
    """Per runner and round, the milliseconds of its timed passes: each round gives every runner in turn one untimed
    pass and ``passes - 1`` timed ones."""
    import time

    times: list[list[list[float]]] = [[] for _ in runners]
    for _ in range(rounds):
        for run, series in zip(runners, times):
            run()
            block = []
            for _ in range(passes - 1):
                start = time.perf_counter()
                run()
                block.append(1e3 * (time.perf_counter() - start))
            series.append(block)
    return times


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
    got = _onnx_runner(path, images)()
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


def mobile_usability(path: str | os.PathLike) -> dict[str, dict]:
    """Run onnxruntime's mobile usability checker; per execution provider, nodes it takes and in how many partitions.

    Returns ``{ep: {"nodes": taken, "total": all, "partitions": n, "fixed_shape": bool}}`` for the checker's
    as-is report and, where it prints one, the report with fixed input shapes.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"mobile usability checker failed on {path}:\n{log[-2000:]}")
    report: dict[str, dict] = {}
    ep = None
    fixed = False
    for line in log.splitlines():
        if m := re.search(r"Checking (?:if model will perform well with |)(NNAPI|CoreML \w+)", line):
            ep, fixed = m[1], False
        elif "if the dynamic shapes are fixed" in line:
            fixed = True
        elif ep and (m := re.search(r"(\d+) partitions? with a total of (\d+)/(\d+) nodes", line)):
            key = f"{ep} (fixed shapes)" if fixed else ep
            report[key] = {"partitions": int(m[1]), "nodes": int(m[2]), "total": int(m[3])}
        elif ep and (m := re.search(r"(NNAPI|CoreML \w+) cannot run any nodes", line)):
            report.setdefault(f"{ep} (fixed shapes)" if fixed else ep, {"partitions": 0, "nodes": 0, "total": None})
    return report


def convert_to_ort(path: str | os.PathLike) -> list[Path]:
    """ORT format for mobile runtimes (``--optimization_style Runtime``, for NNAPI/CoreML); returns the .ort files."""
    path = Path(path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(path),
            "--optimization_style",
            "Runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    files = sorted(path.parent.glob(path.stem + "*.ort"))
    if proc.returncode != 0 or not files:
        raise RuntimeError(f"ORT conversion failed for {path}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return files


def quantize_int8(
    path: str | os.PathLike,
    output: str | os.PathLike,
    calibration: torch.Tensor | None = None,
) -> Path:
    """int8 with onnxruntime: dynamic (weights only) without ``calibration``, static QDQ calibrated on it otherwise.

    Dynamic suits linear-heavy models; static QDQ (per-channel, MinMax) suits conv-heavy ones. LayerNorm and Softmax
    stay in float.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        _unshare_biases(prepared)
        if calibration is None:
            quantize_dynamic(str(prepared), str(output), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(prepared),
                str(output),
                _CalibrationReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            )
    return output


def _unshare_biases(path: Path) -> None:
    """Give every Conv / Gemm its own copy of a bias initializer that several nodes share (onnxslim merges equal
    ones), in place.

    onnxruntime's QDQ quantizer copies a shared bias itself, naming the copy by appending a number (``val_90`` ->
    ``val_901``) and checking only initializer names, so the copy can take the name of an existing value and make the
    model invalid ("Duplicate definition of name").
    """
    import onnx

    model = onnx.load(path)
    initializers = {init.name: init for init in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    for index, node in enumerate(model.graph.node):
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and uses[node.input[2]] > 1:
            bias = initializers.get(node.input[2])
            if bias is not None:
                copy = onnx.TensorProto()
                copy.CopyFrom(bias)
                copy.name = f"{bias.name}_bias_of_node_{index}_"
                model.graph.initializer.append(copy)
                node.input[2] = copy.name
    onnx.save(model, path)


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over a tensor of images, one image per step."""

    def __init__(self, images: torch.Tensor):
        self._batches = iter([{"image": images[i : i + 1].numpy()} for i in range(len(images))])

    def get_next(self):
        return next(self._batches, None)
