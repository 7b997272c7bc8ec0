"""CPU memory and step time of training through the selective scans: the torch path's plain and recompute forms, and
the compiled CPU loops.

With d_state n > 1 the torch selective scan (``vizoo.kernels.selective_scan.chunked``) keeps only its inputs for the
backward and recomputes the rest there (``RecomputedScan``); the CPU loops (backend ``"cpu"``, what eager CPU training
takes by default) keep one state every few steps. This tool measures what each keeps, for each model on every path,
in the same run:

- ``peak_rss_mb``: the child process's peak resident memory (``ru_maxrss``) over model build, one step with the
  saved-tensor count and ``--steps`` timed steps; ``build_rss_mb`` the same up to the built model (the imports, the
  parameters and the input), before any step;
- ``saved_mb``: the bytes autograd keeps for the backward during one forward (each storage counted once);
- ``step_ms``: the median time of a step: forward + backward (``--mode train``) or forward with autograd on
  (``--mode forward``).

Every (model, path) runs in a fresh subprocess, so that peak memory is its own, with an address-space limit
(``--mem-limit-gb``) so that a path that runs out of memory fails alone (status ``oom``) rather than the machine. The
plain path is selected in the child by switching ``recompute_in_backward`` off, which is what the library does under
export and ``torch.compile``; both torch forms run under ``force_backend("torch")``, the ``cpu`` path under the default
choice. Rows are appended to ``results/memory_<machine>.csv`` (``--out`` to write elsewhere), which
tools/benchmark_docs.py renders into docs/benchmarks.md; each path's ratios to the plain path are printed.

python tools/benchmark_memory.py                                          # vanilla_vmamba_tiny and _small, 224²
python tools/benchmark_memory.py --models vanilla_vmamba_base --mode forward --paths recompute
python tools/benchmark_memory.py --models vim_small --batch 8 --paths recompute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vizoo.utils.results import COMMON_COLUMNS, ResultsWriter, command_line, results_path

MEASURED = [
    "model",
    "path",
    "mode",
    "batch",
    "img_size",
    "status",
    "build_rss_mb",
    "peak_rss_mb",
    "saved_mb",
    "step_ms",
]
COLUMNS = [*COMMON_COLUMNS, *MEASURED]  # the file's header: the run's columns, then the measurement's
PATHS = ("plain", "recompute", "cpu")  # the torch path's two forms, then the CPU loops


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vanilla_vmamba_tiny", "vanilla_vmamba_small"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--mode", choices=("train", "forward"), default="train")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (counted) one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mem-limit-gb", type=float, default=16.0, help="address-space limit of each child")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default results/memory_<machine>.csv)")
    parser.add_argument("--append", action="store_true", help="(the default: rows are always appended)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(args: argparse.Namespace) -> dict:
    """One measurement in this process (a fresh child): build, one counted step, the timed steps."""
    model_name, path = args.child
    limit = int(args.mem_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import timm
    import torch

    import vizoo  # noqa: F401  (registers the vizoo models)
    from vizoo.kernels import force_backend
    from vizoo.kernels.selective_scan import chunked

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if path == "plain":
        chunked.recompute_in_backward = lambda *tensors: False
    model = timm.create_model(model_name).train()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    build_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def backend():
        return contextlib.nullcontext() if path == "cpu" else force_backend("torch")

    def step(hooks=None) -> None:
        with hooks or contextlib.nullcontext(), backend():
            y = model(x)
        if args.mode == "train":
            with backend():
                y.float().square().mean().backward()
            model.zero_grad(set_to_none=True)

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    step(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))  # counts what the forward keeps
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "build_rss_mb": round(build_rss_mb, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "saved_mb": round(sum(storages.values()) / 2**20, 1),
        "step_ms": round(statistics.median(times), 1) if times else "",
    }


def measure(args: argparse.Namespace, model: str, path: str) -> dict:
    """Run one (model, path) in a fresh subprocess and return its CSV row."""
    row = {
        "model": model,
        "path": path,
        "mode": args.mode,
        "batch": args.batch,
        "img_size": args.img_size,
    }
    command = [sys.executable, __file__, "--child", model, path, "--batch", str(args.batch)]
    command += ["--img-size", str(args.img_size), "--mode", args.mode, "--steps", str(args.steps)]
    command += ["--threads", str(args.threads), "--mem-limit-gb", str(args.mem_limit_gb)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        row.update(status="ok", **json.loads(done.stdout.strip().splitlines()[-1]))
    else:
        out_of_memory = any(s in done.stderr for s in ("MemoryError", "DefaultCPUAllocator", "std::bad_alloc"))
        row.update(status="oom" if out_of_memory or done.returncode < 0 else f"error {done.returncode}")
        print(f"{model} {path}: {row['status']}\n{done.stderr[-2000:]}", file=sys.stderr)
    return {column: row.get(column, "") for column in MEASURED}


def ratios(rows: list[dict]) -> list[str]:
    """Lines of each path's ratios to the plain path (peak RSS, saved bytes, step time), per model."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_path = {r["path"]: r for r in rows if r["model"] == model and r["status"] == "ok"}
        plain = by_path.pop("plain", None)
        for name, other in by_path.items() if plain else ():
            parts = [
                f"{key} {other[key] / plain[key]:.2f}x"
                for key in ("peak_rss_mb", "saved_mb", "step_ms")
                if plain[key] not in ("", 0) and other[key] != ""
            ]
            lines.append(f"{model}: {name} / plain: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    command = command_line(argv, "python tools/benchmark_memory.py")
    writer = ResultsWriter(args.out or results_path("memory"), MEASURED, threads=args.threads, command=command)
    rows = []
    for model in args.models:
        for path in args.paths:
            rows.append(measure(args, model, path))
            writer.write(rows[-1])
            print(", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    for line in ratios(rows):
        print(line)
    print(f"wrote {writer.rows_written} rows to {writer.path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
