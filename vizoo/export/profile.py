"""Where onnxruntime (CPU) spends a pass of an ONNX model, from its own profiler.

The op types are those onnxruntime runs, after its graph fusions (FusedMatMul, SkipLayerNormalization, NCHWc
reorders...). The matrix products' FLOP rate, set beside that of one large MatMul on the same machine, says how much
of the time is spent at the machine's peak and how much is left to the rest of the graph.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MATRIX_PRODUCT_OPS = ("Gemm", "FusedGemm", "MatMul", "FusedMatMul")  # the nodes whose FLOPs the profile counts


@dataclass
class OnnxProfile:
    """Per op type: milliseconds per pass (the median of each node over the passes, summed) and node count; and
    the matrix products' (``MATRIX_PRODUCT_OPS``) FLOPs per pass."""

    ms_by_op: dict[str, float]
    nodes_by_op: dict[str, int]
    matrix_product_flops: float

    @property
    def ms(self) -> float:
        """Milliseconds per pass spent in nodes (without the session's own overhead)."""
        return sum(self.ms_by_op.values())

    @property
    def matrix_product_gflops(self) -> float:
        """The matrix products' FLOP rate, GFLOP/s."""
        ms = sum(self.ms_by_op.get(op, 0.0) for op in MATRIX_PRODUCT_OPS)
        return self.matrix_product_flops / ms / 1e6 if ms else 0.0


def onnx_profile(path: str | os.PathLike, x: torch.Tensor, passes: int = 20) -> OnnxProfile:
    """Profile ``passes`` passes of the ONNX model at ``path`` on ``x`` in onnxruntime (CPU, default threads), after
    three untimed ones."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(3 + passes):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(event["ts"] for event in events if event.get("name") == "model_run")
    first_timed = runs[3]
    durations, flops = defaultdict(list), {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < first_timed:
            continue
        args = event["args"]
        node = (args["op_name"], event["name"], args.get("node_index"))  # names may repeat or be empty; indices not
        durations[node].append(event["dur"])
        if args["op_name"] in MATRIX_PRODUCT_OPS and node not in flops:
            flops[node] = _matrix_product_flops(args)
    ms_by_op, nodes_by_op = defaultdict(float), defaultdict(int)
    for (op, *_), times in durations.items():
        ms_by_op[op] += float(np.median(times)) / 1e3
        nodes_by_op[op] += 1
    order = sorted(ms_by_op, key=ms_by_op.get, reverse=True)
    return OnnxProfile({op: ms_by_op[op] for op in order}, {op: nodes_by_op[op] for op in order}, sum(flops.values()))


def _matrix_product_flops(args: dict) -> float:
    """2 M K N of a matrix product event (``MATRIX_PRODUCT_OPS``): 2 K times the output's size, with K read off the
    first input (its size over the output's rows; the weights may be prepacked and missing from the event)."""
    (output,) = (list(shape.values())[0] for shape in args["output_type_shape"])
    first = list(args["input_type_shape"][0].values())[0]
    if len(first) == len(output):  # K from sizes, so a transposed first input (FusedMatMul transA) counts right
        k = np.prod(first) * output[-1] / np.prod(output)
    else:  # a first input broadcast over the output's batch dims
        k = first[-1]
    return 2.0 * float(np.prod(output)) * float(k)


def matmul_peak_gflops(size: int = 1024, passes: int = 10) -> float:
    """The FLOP rate of one ``size``³ fp32 MatMul in onnxruntime (CPU, default threads): the best of ``passes``, as a
    machine's reference for ``OnnxProfile.matrix_product_gflops``."""
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        [weight],
    )
    opset = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opset, ir_version=helper.find_min_ir_version_for(opset))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": np.ones((size, size), np.float32)}
    session.run(None, feed)
    best = np.inf
    for _ in range(passes):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
