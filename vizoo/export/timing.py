"""Latency of exported graphs: PyTorch eager against onnxruntime (CPU), and several ONNX models against each other,
timed in alternating blocks so that both sides see the same machine load.

Benchmarking helpers (``tools/benchmark_onnx.py``, ``tools/demo.py``), not part of the export API: import them from
this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from vizoo.export.onnx import onnx_runner


def onnx_latencies_ms(paths: list[str | os.PathLike], x: torch.Tensor, rounds: int = 4, passes: int = 6) -> list[float]:
    """Median milliseconds of onnxruntime (CPU) on ``x`` for each ONNX model, measured in alternating blocks (as
    ``eager_vs_onnx_ms``), e.g. an fp32 model and its int8 versions."""
    times = interleaved_times_ms([onnx_runner(path, x) for path in paths], rounds, passes)
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
        eager, onnx = interleaved_times_ms([lambda: model(x), onnx_runner(path, x)], rounds, passes)
    round_ratios = [float(np.median(o) / np.median(e)) for e, o in zip(eager, onnx)]
    return LatencyComparison(float(np.median(eager)), float(np.median(onnx)), round_ratios)


def interleaved_times_ms(runners: list, rounds: int, passes: int) -> list[list[list[float]]]:
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
