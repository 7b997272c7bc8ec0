"""Reduced precision for exported graphs: int8 with onnxruntime's quantizer (``quantize_int8``: dynamic, or static
QDQ calibrated on images) and float16 (``convert_to_fp16`` for a saved graph; ``export_onnx(fp16=True)`` applies the
same conversion).

Apart from the export because both work on a finished ONNX graph and need onnxruntime's quantization tools.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import torch


def _to_fp16(onnx_model):
    """Weights and activations in float16, inputs and outputs kept in float32."""
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = onnx_ir.from_proto(convert_float_to_float16(onnx_model, keep_io_types=True))
    converted.graph.sort()  # the converter appends its input casts after their readers
    return onnx_ir.to_proto(converted)


def convert_to_fp16(path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """An exported float32 graph at ``path`` as float16 at ``output``: weights and activations in float16, inputs and
    outputs kept in float32, as ``export_onnx(fp16=True)`` writes it. An end-to-end detector graph is refused: its
    post-processing must stay in float32, which ``export_onnx(detector, ..., fp16=True)`` arranges."""
    import onnx

    from vizoo.export.onnx import ExportError

    graph = onnx.load(os.fspath(path))
    if any(node.op_type == "NonMaxSuppression" for node in graph.graph.node):
        raise ExportError(
            f"{path} is an end-to-end detector graph, whose boxes and NMS must stay in float32: export the detector "
            "with export_onnx(detector, path, fp16=True) instead"
        )
    output = Path(output)
    onnx.save(_to_fp16(graph), output)
    return output


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
