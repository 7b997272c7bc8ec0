"""Kernel benchmarks on CPU: each fast path as a speed ratio against its reference, measured in the same run (the
two timed in turn, one pass each, so that load on a shared machine falls on both alike).

python tools/benchmark.py            # selective scan and cross-scan at VMamba stage-1 shapes (L = 56 x 56),
                                     # linear attention at MLLA-T stage 1 (3136 tokens), Bi-WKV at Vision-RWKV-T (196)
python tools/benchmark.py --quick    # fewer repeats
python tools/benchmark.py --threads 1  # torch CPU threads (default: torch's choice)

Rows are appended to results/kernels_cpu_<machine>.csv (``--out`` to write elsewhere), which tools/benchmark_docs.py
renders into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from vizoo.kernels import bi_wkv, cross_merge, cross_scan, linear_attention, selective_scan
from vizoo.utils.results import ResultsWriter, command_line, results_path

COLUMNS = ("kernel", "shape", "repeats", "reference_ms", "torch_ms", "speedup")

# (label, batch, channels d, length l, d_state n, groups, time the backward too). VMamba-T s1l8 stage 1 is 4 routes
# x 96 channels with n = 1; vanilla VMamba-T stage 1 is 4 routes x 192 channels with n = 16.
SCAN_SHAPES = [
    ("vmamba_tiny_s1l8 stage 1", 1, 384, 3136, 1, 4, True),
    ("vanilla_vmamba_tiny stage 1", 1, 768, 3136, 16, 4, False),
    ("one route, 96 channels", 1, 96, 3136, 16, 1, True),
]


BACKENDS = ("reference", "torch")


def timeit(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each ``fns[key]()`` over ``repeats`` runs after one warm-up each; the functions run in
    turn, one call each per repeat."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def scan_inputs(b, d, length, n, g, requires_grad=False):
    tensors = dict(
        u=torch.randn(b, d, length),
        delta=torch.randn(b, d, length),
        A=-torch.rand(d, n) * 4,
        B=torch.randn(b, g, n, length),
        C=torch.randn(b, g, n, length),
        D=torch.randn(d),
        delta_bias=torch.randn(d),
    )
    return {k: v.requires_grad_(requires_grad) for k, v in tensors.items()}


def bench_selective_scan(repeats: int):
    """Yield (kernel, shape, {backend: seconds}) rows; forward+backward only where the reference's backward is
    affordable (it runs autograd through one op per time step)."""
    for label, b, d, length, n, g, with_backward in SCAN_SHAPES:
        shape = f"{label}: b={b} d={d} l={length} n={n}"
        inputs = scan_inputs(b, d, length, n, g)
        with torch.no_grad():
            fns = {k: partial(selective_scan, **inputs, delta_softplus=True, backend=k) for k in BACKENDS}
            yield "selective_scan forward", shape, timeit(fns, repeats)
        if with_backward:
            grad_inputs = scan_inputs(b, d, length, n, g, requires_grad=True)

            def step(backend, grad_inputs=grad_inputs):
                selective_scan(**grad_inputs, delta_softplus=True, backend=backend).sum().backward()

            yield "selective_scan fwd+bwd", shape, timeit({k: partial(step, k) for k in BACKENDS}, max(1, repeats // 2))


def bench_cross_scan(repeats: int):
    x = torch.randn(8, 96, 56, 56)
    y = torch.randn(8, 4, 96, 56, 56)
    for fn, arg in ((cross_scan, x), (cross_merge, y)):
        times = timeit({b: partial(fn, arg, backend=b) for b in BACKENDS}, repeats)
        yield fn.__name__, "b=8 c=96 h=w=56, 4 routes", times


def bench_linear_attention(repeats: int):
    """MLLA-T stage 1 (3136 tokens, 3 heads of 32), one image and a packed batch of two ragged images."""
    q, k, v = (torch.rand(1, 3, 3136, 32) for _ in range(3))
    cu = torch.tensor([0, 1200, 3136], dtype=torch.int32)
    for shape, kwargs in (("b=1 h=3 n=3136 d=32", {}), ("same, packed 1200 + 1936 tokens", dict(cu_seqlens=cu))):
        with torch.no_grad():
            times = timeit({b: partial(linear_attention, q, k, v, backend=b, **kwargs) for b in BACKENDS}, repeats)
        yield "linear_attention", shape, times


def bench_bi_wkv(repeats: int):
    """Vision-RWKV-T's Bi-WKV (14 x 14 tokens of 192 channels at 224², w and u divided by T), a batch of 8."""
    w, u = torch.randn(192) / 196, torch.randn(192) / 196
    k, v = torch.randn(8, 196, 192), torch.randn(8, 196, 192)
    with torch.no_grad():
        times = timeit({b: partial(bi_wkv, w, u, k, v, backend=b) for b in BACKENDS}, repeats)
    yield "bi_wkv", "b=8 t=14x14 c=192 (Vision-RWKV-T)", times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", type=Path, help="results CSV to append to (default results/kernels_cpu_<machine>.csv)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)
    command = command_line(argv, "python tools/benchmark.py")
    writer = ResultsWriter(args.out or results_path("kernels_cpu"), COLUMNS, command=command)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; median of {repeats} runs", flush=True)
    print(f"{'kernel':<24} {'shape':<52} {'reference ms':>12} {'torch ms':>9} {'speed-up':>9}", flush=True)
    for op, shape, times in itertools.chain(
        bench_selective_scan(repeats), bench_cross_scan(repeats), bench_linear_attention(repeats), bench_bi_wkv(repeats)
    ):
        ratio = times["reference"] / times["torch"]
        print(f"{op:<24} {shape:<52} {times['reference'] * 1e3:>12.1f} {times['torch'] * 1e3:>9.1f} {ratio:>8.1f}x")
        writer.write(
            dict(
                kernel=op,
                shape=shape,
                repeats=repeats,
                reference_ms=times["reference"] * 1e3,
                torch_ms=times["torch"] * 1e3,
                speedup=ratio,
            )
        )
    print(f"wrote {writer.rows_written} rows to {writer.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
