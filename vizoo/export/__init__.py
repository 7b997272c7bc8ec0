"""ONNX export for edge deployment (needs the ``onnx`` extra).

Modules, by concern: ``onnx`` (export and the parity check in onnxruntime), ``rewrites`` (graph rewrites after
simplification), ``quantize`` (int8 and float16), ``ort_format`` (ORT format and the mobile usability report),
``mobile`` (model rewrites for NNAPI / CoreML), ``timing`` and ``profile`` (benchmarking helpers, imported from their
modules).
"""

from vizoo.export.onnx import (
    ExportError,
    ExportResult,
    detection_diff,
    export_onnx,
    input_shape,
    max_abs_diff,
    run_onnx,
)
from vizoo.export.onnx import graph_module as graph_module  # what a model exports as; `vizoo export` and docs use it
from vizoo.export.onnx import resolve_model as resolve_model  # a model name or instance; `vizoo export` uses it
from vizoo.export.ort_format import convert_to_ort, mobile_usability
from vizoo.export.quantize import convert_to_fp16, quantize_int8

__all__ = [
    "ExportError",
    "ExportResult",
    "convert_to_fp16",
    "convert_to_ort",
    "detection_diff",
    "export_onnx",
    "input_shape",
    "max_abs_diff",
    "mobile_usability",
    "quantize_int8",
    "run_onnx",
]
