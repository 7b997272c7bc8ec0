"""GPU benchmark of vizoo's Triton kernels and of VMamba on them, against the torch path and timm's Swin-T.

Kernels at VMamba-T stage-1 shapes (batch 128, d = 192 per route, four routes of 56 x 56 steps, d_state 1 and 16,
bf16 data): forward, backward and forward+backward times; achieved bandwidth (bytes of the op's inputs and outputs
over the time) and its ratio to a device-to-device copy timed in the same run; speed-up over the "torch" path; peak
memory. The fused cross_selective_scan is also timed against the same three Triton kernels unfused, and bi_wkv at
Vision-RWKV-T's shape (14 x 14 tokens of d = 192, the tokens being SIDE / 4 on a side). Models:
vmamba_tiny_s1l8 inference and training images/s on the Triton and the torch backend, and swin_tiny_patch4_window7_224
in the same run (bf16 autocast, batch 128, 224²).

python tools/benchmark_kernels.py                  # everything (several minutes)
python tools/benchmark_kernels.py --quick          # fewer repeats
python tools/benchmark_kernels.py --no-models      # kernels only
python tools/benchmark_kernels.py --json out.json  # also save the rows as one JSON document

The rows are appended to results/gpu_kernels_<machine>.csv (one row per op, n and backend) and
results/gpu_models_<machine>.csv (one row per model case), ``--out-dir`` to write elsewhere; tools/benchmark_docs.py
renders them into docs/benchmarks.md.

Needs a CUDA GPU: without one it says so and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BATCH, D, SIDE, ROUTES = 128, 192, 56, 4
GOALS = {  # from the issue: fraction of copy bandwidth (n = 1), and VMamba-T s1l8 over Swin-T
    "scan fwd / copy": 0.70,
    "scan fwd+bwd / copy": 0.50,
    "inference vs swin_tiny": 1.5,
    "training vs swin_tiny": 1.3,
}


@dataclass
class Row:
    op: str
    n: int
    backend: str
    ms: dict[str, float] = field(default_factory=dict)  # "fwd", "bwd", "fwd+bwd" -> milliseconds
    gbps: dict[str, float] = field(default_factory=dict)
    peak_mb: float | None = None
    error: str | None = None


def nbytes(*tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def bench_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA events), L2 cache flushed before each run."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=max(5, repeats // 4), rep=repeats * 10, return_mode="median")


def copy_gbps(repeats: int) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) on 1 GiB."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() / ms / 1e6


# ------------------------------------------------------------------------------------------------------- kernels


def scan_inputs(n: int, dtype: torch.dtype, device: str = "cuda") -> dict[str, torch.Tensor]:
    """selective_scan over the 4·d route channels as VMamba calls it: B and C one group per route."""
    length, channels = SIDE * SIDE, ROUTES * D
    g = torch.Generator(device=device).manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device=device, generator=g)  # noqa: E731
    return dict(
        u=rand(BATCH, channels, length).to(dtype),
        delta=(rand(BATCH, channels, length) * 0.5 - 2).to(dtype),
        A=-torch.rand(channels, n, device=device, generator=g) - 0.1,
        B=rand(BATCH, ROUTES, n, length).to(dtype),
        C=rand(BATCH, ROUTES, n, length).to(dtype),
        D=rand(channels),
        delta_bias=rand(channels) * 0.1,
    )


def fused_inputs(n: int, dtype: torch.dtype, device: str = "cuda") -> dict[str, torch.Tensor]:
    """cross_selective_scan inputs: x a channel-last map seen as (b, d, h, w); route-ordered full-rank delta, B, C."""
    s = scan_inputs(n, dtype, device)
    x = torch.randn(BATCH, SIDE, SIDE, D, device=device, dtype=dtype).permute(0, 3, 1, 2)
    return dict(
        x=x, delta=s["delta"].unflatten(1, (ROUTES, D)), **{k: s[k] for k in ("A", "B", "C", "D", "delta_bias")}
    )


def unfused_triton(x, delta, A, B, C, D, delta_bias):
    """The three Triton kernels the fused op replaces: cross_scan, selective_scan, cross_merge."""
    from vizoo.kernels import cross_merge, cross_scan, selective_scan

    d, h, w = x.shape[1:]  # (D is the skip tensor here)
    xs = cross_scan(x, backend="triton")
    ys = selective_scan(xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, delta_bias, True, backend="triton")
    return cross_merge(ys.unflatten(1, (ROUTES, d)).unflatten(-1, (h, w)), out_channel_first=False, backend="triton")


def kernel_cases(n: int, dtype: torch.dtype, device: str = "cuda"):
    """(op, backend, function of the inputs, inputs) rows to time."""
    from vizoo.kernels import bi_wkv, cross_merge, cross_scan, cross_selective_scan, selective_scan

    scan = scan_inputs(n, dtype, device)
    fused = fused_inputs(n, dtype, device)
    for backend in ("triton", "torch"):
        yield (
            "selective_scan",
            backend,
            lambda backend=backend, **t: selective_scan(**t, delta_softplus=True, backend=backend),
            scan,
        )
    for backend in ("triton", "triton unfused", "torch"):
        if backend == "triton unfused":
            fn = unfused_triton
        else:
            fn = lambda backend=backend, **t: cross_selective_scan(  # noqa: E731
                **t, delta_softplus=True, out_channel_first=False, backend=backend
            )
        yield "cross_selective_scan", backend, fn, fused
    if n == 1:  # the cross-scan kernels do not depend on n
        x = fused["x"]
        y = torch.randn(BATCH, SIDE * SIDE, ROUTES, D, device=device, dtype=dtype).permute(0, 2, 3, 1)
        for backend in ("triton", "torch"):
            yield "cross_scan", backend, lambda x, backend=backend: cross_scan(x, backend=backend), dict(x=x)
            merge = lambda y, backend=backend: cross_merge(y.unflatten(-1, (SIDE, SIDE)), backend=backend)  # noqa: E731
            yield "cross_merge", backend, merge, dict(y=y)
        tokens = max(SIDE // 4, 1) ** 2
        wkv = dict(
            w=torch.randn(D, device=device) / tokens,
            u=torch.randn(D, device=device) / tokens,
            k=torch.randn(BATCH, tokens, D, device=device, dtype=dtype),
            v=torch.randn(BATCH, tokens, D, device=device, dtype=dtype),
        )
        for backend in ("triton", "torch"):
            yield "bi_wkv", backend, lambda backend=backend, **t: bi_wkv(**t, backend=backend), wkv


def time_kernel(op: str, n: int, backend: str, fn, inputs: dict, repeats: int) -> Row:
    """Forward (no grad), backward alone and forward+backward, with the op's input and output bytes."""
    row = Row(op, n, backend.replace("triton unfused", "triton-unfused"))
    call = lambda: fn(**inputs)  # noqa: E731
    try:
        with torch.no_grad():
            out = call()
            row.ms["fwd"] = bench_ms(call, repeats)
            row.gbps["fwd"] = (nbytes(*inputs.values()) + nbytes(out)) / row.ms["fwd"] / 1e6
        del out
        leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        wrt = [v for v in leaves.values() if v.requires_grad]
        backward_ms, io, grad_io, row.peak_mb = _time_backward(fn, leaves, wrt, repeats)
        row.ms["bwd"], row.gbps["bwd"] = backward_ms, grad_io / backward_ms / 1e6
        grad_out = torch.randn_like(fn(**leaves))
        row.ms["fwd+bwd"] = bench_ms(lambda: torch.autograd.grad(fn(**leaves), wrt, grad_out), repeats)
        row.gbps["fwd+bwd"] = (io + grad_io) / row.ms["fwd+bwd"] / 1e6
    except torch.cuda.OutOfMemoryError:
        row.error = "out of memory"
    torch.cuda.empty_cache()
    return row


def _time_backward(fn, leaves: dict, wrt: list, repeats: int) -> tuple[float, int, int, float]:
    """(backward ms, forward bytes, backward bytes, peak MB of one forward+backward) with the graph kept alive."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(**leaves)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, wrt, grad_out, retain_graph=True)
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    io = nbytes(*leaves.values()) + nbytes(out)
    grad_io = nbytes(grad_out, *leaves.values(), *grads)  # the backward reads the inputs again
    ms = bench_ms(lambda: torch.autograd.grad(out, wrt, grad_out, retain_graph=True), repeats)
    return ms, io, grad_io, peak_mb


# -------------------------------------------------------------------------------------------------------- models


def model_images_per_s(name: str, train: bool, repeats: int, batch: int = BATCH, **kwargs) -> tuple[float, float]:
    """(images/s, peak memory MB) for bf16-autocast inference or an SGD training step at 224²."""
    import timm

    import vizoo  # noqa: F401  (registers the VMamba models)

    model = timm.create_model(name, **kwargs).cuda().train(train)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    target = torch.randint(0, 1000, (batch,), device="cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if not train:
                with torch.inference_mode():
                    return model(x)
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


MODEL_CASES = (  # (label, timm name, create_model kwargs)
    ("vmamba_tiny_s1l8 (triton)", "vmamba_tiny_s1l8", dict(scan_backend="triton")),
    ("vmamba_tiny_s1l8 (torch)", "vmamba_tiny_s1l8", dict(scan_backend="torch")),
    ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", {}),
)
MODEL_COLUMNS = (("inference", 16), ("training", 16), ("training_peak_mb", 15))


def model_rows(repeats: int):
    """(label, row) for each of MODEL_CASES: inference and training images/s and peak MB at BATCH, in one process;
    a mode that runs out of memory is left out of its row."""
    for label, name, kwargs in MODEL_CASES:
        row = {}
        for mode in ("inference", "training"):
            try:
                row[mode], row[f"{mode}_peak_mb"] = model_images_per_s(name, mode == "training", repeats, **kwargs)
            except torch.cuda.OutOfMemoryError:
                pass
            torch.cuda.empty_cache()
        yield label, row


def model_ratios(models: dict[str, dict]) -> dict[str, float]:
    """VMamba-T (Triton) images/s over Swin-T's, per mode measured for both."""
    vm, swin = models.get("vmamba_tiny_s1l8 (triton)", {}), models.get("swin_tiny_patch4_window7_224", {})
    return {
        f"{mode} vs swin_tiny": vm[mode] / swin[mode]
        for mode in ("inference", "training")
        if mode in vm and mode in swin
    }


# ------------------------------------------------------------------------------------------------------- results

PHASES = {"fwd": "fwd", "bwd": "bwd", "fwd+bwd": "fwdbwd"}  # Row.ms keys -> column infixes
KERNEL_COLUMNS = (
    "op",
    "n",
    "backend",
    "batch",
    *(f"{c}_ms" for c in PHASES.values()),
    *(f"{c}_gbps" for c in PHASES.values()),
    "copy_gbps",
    "peak_mb",
    "error",
)
MODEL_RESULT_COLUMNS = ("model", "batch", "inference", "training", "inference_peak_mb", "training_peak_mb")


def write_results(
    out_dir: str | Path,
    machine: str,
    rows: list[Row],
    models: dict[str, dict],
    copy: float,
    run: str | None = None,
    command: str | None = None,
) -> list[Path]:
    """Append the kernel rows and the model rows of one run (``run``: its id, default now; ``command``: the command
    that measured it) to ``out_dir``/gpu_kernels_<machine>.csv and gpu_models_<machine>.csv (images/s in
    ``inference`` and ``training``); returns the files written."""
    from vizoo.utils.results import ResultsWriter, results_path

    written = []
    path = results_path("gpu_kernels", machine, out_dir)
    kernels = ResultsWriter(path, KERNEL_COLUMNS, machine=machine, run=run, command=command)
    kernels.write_many(
        dict(op=r.op, n=r.n, backend=r.backend, batch=BATCH, copy_gbps=copy, peak_mb=r.peak_mb, error=r.error)
        | {f"{PHASES[p]}_ms": ms for p, ms in r.ms.items()}
        | {f"{PHASES[p]}_gbps": gbps for p, gbps in r.gbps.items()}
        for r in rows
    )
    written.append(kernels.path)
    if models:
        path = results_path("gpu_models", machine, out_dir)
        writer = ResultsWriter(path, MODEL_RESULT_COLUMNS, machine=machine, run=kernels.run, command=command)
        writer.write_many(dict(model=label, batch=BATCH, **row) for label, row in models.items())
        written.append(writer.path)
    return written


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--no-models", action="store_true", help="kernels only")
    parser.add_argument("--json", help="write every measured row to this file")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("results"), help="folder of the results CSVs (default results)"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmark_kernels.py needs a CUDA GPU and none is available here (torch.cuda.is_available() is False). "
            "On a CPU, the kernels' tests run them through Triton's interpreter: pytest tests/kernels",
            file=sys.stderr,
        )
        return 2
    import triton

    from vizoo.utils.results import command_line, machine_tag, run_id

    run = run_id()
    repeats = 10 if args.quick else 40
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    copy = copy_gbps(repeats)
    print(f"device-to-device copy: {copy:.0f} GB/s (read + write)\n", flush=True)

    rows: list[Row] = []
    header = f"{'op':<22}{'n':>3} {'backend':<15}" + "".join(f"{p:>22}" for p in ("fwd", "bwd", "fwd+bwd"))
    print(header + f"{'peak MB':>10}  note")
    print(" " * 41 + "      ms  GB/s  %copy" * 3)
    for n in (1, 16):
        torch_ms = {}
        for op, backend, fn, inputs in kernel_cases(n, torch.bfloat16):
            row = time_kernel(op, n, backend, fn, inputs, repeats)
            rows.append(row)
            if backend == "torch":
                torch_ms[op] = row.ms.get("fwd+bwd")
            cells = "".join(
                f"{row.ms[p]:>8.2f}{row.gbps[p]:>6.0f}{100 * row.gbps[p] / copy:>6.0f}%"
                if p in row.ms
                else f"{'-':>22}"
                for p in ("fwd", "bwd", "fwd+bwd")
            )
            peak = f"{row.peak_mb:>10.0f}" if row.peak_mb is not None else f"{'-':>10}"
            print(f"{op:<22}{n:>3} {row.backend:<15}{cells}{peak}  {row.error or ''}", flush=True)
        for row in rows:  # speed-ups once the torch rows of this n are in
            if row.n == n and row.backend != "torch" and torch_ms.get(row.op) and "fwd+bwd" in row.ms:
                print(f"  {row.op} {row.backend}: {torch_ms[row.op] / row.ms['fwd+bwd']:.1f}x the torch path (fwd+bwd)")
    print()

    models = {}
    if not args.no_models:
        print(f"{'model':<40}{'inference img/s':>16}{'training img/s':>16}{'train peak MB':>15}")
        for label, row in model_rows(5 if args.quick else 15):
            models[label] = row
            cells = (f"{row[k]:>{w}.0f}" if k in row else f"{'oom':>{w}}" for k, w in MODEL_COLUMNS)
            print(f"{label:<40}{''.join(cells)}", flush=True)
        print()

    measured = {}
    scan_n1 = next((r for r in rows if r.op == "selective_scan" and r.n == 1 and r.backend == "triton"), None)
    if scan_n1 and "fwd" in scan_n1.gbps:
        measured["scan fwd / copy"] = scan_n1.gbps["fwd"] / copy
        measured["scan fwd+bwd / copy"] = scan_n1.gbps["fwd+bwd"] / copy
    measured.update(model_ratios(models))
    print("issue goals (n = 1 for the bandwidth goals):")
    for goal, target in GOALS.items():
        value = measured.get(goal)
        verdict = "not measured" if value is None else ("met" if value >= target else "NOT met")
        shown = "-" if value is None else f"{value:.2f}"
        print(f"  {goal:<26} goal >= {target:<5} measured {shown:<6} {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    device=torch.cuda.get_device_name(),
                    copy_gbps=copy,
                    kernels=[asdict(r) for r in rows],
                    models=models,
                    goals=measured,
                ),
                f,
                indent=1,
            )
    command = command_line(argv, "python tools/benchmark_kernels.py")
    for path in write_results(args.out_dir, machine_tag("cuda"), rows, models, copy, run, command):
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
