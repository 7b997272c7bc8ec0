"""ONNX export for edge deployment (needs the ``onnx`` extra)."""

from vizoo.export.onnx import (
    ExportError,
    ExportResult,
    LatencyComparison,
    convert_to_ort,
    detection_diff,
    eager_vs_onnx_ms,
    export_onnx,
    graph_module,
    input_shape,
    max_abs_diff,
    mobile_usability,
    onnx_latencies_ms,
    quantize_int8,
    resolve_model,
    run_onnx,
)
from vizoo.export.profile import OnnxProfile, matmul_peak_gflops, onnx_profile

__all__ = [
    "ExportError",
    "ExportResult",
    "LatencyComparison",
    "OnnxProfile",
    "convert_to_ort",
    "detection_diff",
    "eager_vs_onnx_ms",
    "export_onnx",
    "graph_module",
    "input_shape",
    "matmul_peak_gflops",
    "max_abs_diff",
    "mobile_usability",
    "onnx_latencies_ms",
    "onnx_profile",
    "quantize_int8",
    "resolve_model",
    "run_onnx",
]
