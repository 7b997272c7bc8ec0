"""ONNX graph rewrites applied after onnxslim while exporting (``vizoo.export.onnx.build_onnx_graph``).

Each works on the exported graph itself, not on the model: ``keep_block_transposes`` and ``order_gelu_for_fusion``
shape it for onnxruntime's own fusions, ``_drop_same_type_castlike`` removes casts that mobile runtimes lack. They
are apart from the export so each can be read, and tested, as one graph-to-graph step.
"""

from __future__ import annotations

import math

import numpy as np


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
