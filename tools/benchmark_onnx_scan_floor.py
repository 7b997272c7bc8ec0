"""How fast can VMamba's d_state-1 SS2D core run in onnxruntime (CPU) with standard ONNX ops? A floor, measured.

The model's onnxruntime latency is timed three ways in one run, beside the baselines exported the same way
(``vizoo.export.export_onnx``, batch 1, blocks of passes in turn, medians):

- ``exported``: the model as ``export_onnx`` writes it;
- ``core_floor``: every SS2D core replaced by ``floor_core``, which keeps only the passes over the route tensors
  (4 routes x channels x pixels) that any standard-op graph of the scan makes, and drops the rest. Its values are
  not the scan's: its latency is a lower bound on what a faithful graph of the core can reach;
- ``no_core``: every SS2D core replaced by a layout-only stand-in (the map itself): the rest of the model.

So ``core_floor`` bounds from below what any rewrite of the exported scan can give, and ``no_core`` what even a free
scan would give.

python tools/benchmark_onnx_scan_floor.py                          # vmamba_tiny_s1l8 vs Swin-T and ConvNeXt-T
python tools/benchmark_onnx_scan_floor.py --threads 2 --rounds 6

Rows are appended to results/onnx_scan_floor_<machine>.csv (``--out`` to write elsewhere), which
tools/benchmark_docs.py renders into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

import vizoo
from vizoo.export import export_onnx
from vizoo.export.onnx import onnx_runner
from vizoo.export.timing import interleaved_times_ms
from vizoo.kernels.cross_selective_scan.torch_ops import steps_per_chunk
from vizoo.layers.ss2d import SS2D
from vizoo.utils.results import ResultsWriter, command_line, results_path

DEFAULT_MODELS = ("vmamba_tiny_s1l8",)
DEFAULT_BASELINES = ("swin_tiny_patch4_window7_224", "convnext_tiny")
VARIANTS = ("exported", "core_floor", "no_core")
PASSES = 5
COLUMNS = ["model", "variant", "size", "nodes", "rounds", "ms"]


def floor_core(ss2d: SS2D, x: torch.Tensor) -> torch.Tensor:
    """The passes that any standard-op graph of the d_state-1 core makes, over x (b, d, h, w) -> (b, h·w, d).

    Kept: the column route's copy (the row route is the map itself); the routes' projections to step inputs, B and C
    (one MatMul per axis) and to the step sizes (one MatMul); softplus in its fewest ops (exp, +1, log); the decays
    exp(Δ A) (Mul, Exp) and the inputs Δ·u·B (two Muls); the recurrence as one Mul and one Add per element, with the
    steps cut out of the decays and inputs (one Split each) and the states put back (one Concat); the read-out by C
    (Mul) and the sum of the four routes (ReduceSum).

    Dropped: the carry across chunks (the faithful scan's first pass and chunk-level recurrence), the reversed
    routes' order, the skip D, softplus's overflow guard and the column route's way back to pixel order.
    """
    b, d, h, w = x.shape
    steps = steps_per_chunk(h, w)
    rows = x.permute(0, 2, 3, 1)  # (b, h, w, d)
    u = torch.stack([rows.flatten(1, 2), rows.transpose(1, 2).flatten(1, 2)], dim=1)  # (b, 2, l, d)
    both_directions = ss2d.x_proj_weight[:2].transpose(1, 2).repeat(1, 1, 2)  # (2, d, 2 (r + 2))
    projected = torch.matmul(u, both_directions).unflatten(-1, (2, -1)).transpose(2, 3)  # (b, 2, 2, l, r + 2)
    low_rank, B, C = projected.split([ss2d.dt_rank, 1, 1], dim=-1)
    delta = torch.matmul(low_rank, ss2d.dt_projs_weight[:2].unsqueeze(1).transpose(-1, -2))  # (b, 2, 2, l, d)
    delta = torch.log(torch.exp(delta) + 1)
    decay = torch.exp(delta * ss2d.A_logs[:d, 0])
    inputs = delta * (u.unsqueeze(2) * B)
    state, states = None, []
    for a, bx in zip(decay.unflatten(3, (steps, -1)).unbind(3), inputs.unflatten(3, (steps, -1)).unbind(3)):
        state = bx if state is None else a * state + bx
        states.append(state)
    return (torch.stack(states, dim=3).flatten(3, 4) * C).sum((1, 2))


def no_core(ss2d: SS2D, x: torch.Tensor) -> torch.Tensor:
    """The map itself, (b, d, h, w) -> (b, h·w, d): the rest of the model with a free core."""
    return x.flatten(2).transpose(1, 2)


@contextlib.contextmanager
def core_replaced_by(core):
    """Every SS2D's cross-scan core is ``core(ss2d, x)`` inside the block (None: left as it is)."""
    original = SS2D._cross_scan
    if core is not None:
        SS2D._cross_scan = core
    try:
        yield
    finally:
        SS2D._cross_scan = original


def single_state_cores(model: torch.nn.Module) -> list[SS2D]:
    """The model's SS2D modules with the d_state-1 cross-route core that ``floor_core`` stands for."""
    return [m for m in model.modules() if isinstance(m, SS2D) and m.d_state == 1 and m.routes == "cross"]


def export(model: torch.nn.Module, size: int, path: Path, core=None) -> tuple[Path, int]:
    """``model`` exported at batch 1 with its SS2D cores replaced by ``core``: the file and its node count."""
    with core_replaced_by(core):
        result = export_onnx(model, path, img_size=size, dynamic_batch=False, check=False)
    return result.path, result.nodes


def measure(
    models: dict[str, torch.nn.Module], baselines: list[str], rounds: int, threads: int, tmp: Path
) -> list[dict]:
    """One row per (model, variant) and per baseline, in the order they are timed; ``models`` built by name."""
    cores = {"exported": None, "core_floor": floor_core, "no_core": no_core}
    rows, runners = [], []
    for name in [*models, *baselines]:
        model = models[name] if name in models else timm.create_model(name).eval()
        size = model.pretrained_cfg["input_size"][-1]
        for variant in VARIANTS if name in models else ("exported",):
            print(f"  exporting {name} ({variant})", flush=True)
            path, nodes = export(model, size, tmp / f"{name}_{variant}.onnx", cores[variant])
            runners.append(onnx_runner(path, torch.randn(1, 3, size, size), threads))
            rows.append(dict(model=name, variant=variant, size=size, nodes=nodes, rounds=rounds))
    print(f"  timing {len(runners)} graphs x {rounds} rounds, {threads} threads", flush=True)
    for row, series in zip(rows, interleaved_times_ms(runners, rounds, PASSES)):
        row["ms"] = float(np.median(series))
    return rows


def add_ratios(rows: list[dict], baselines: list[str]) -> None:
    """Fill each row's ``vs_<baseline>``: its milliseconds over the baseline's in the same run."""
    by_model = {row["model"]: row for row in rows if row["variant"] == "exported"}
    for baseline in baselines:
        for row in rows:
            row[f"vs_{baseline}"] = row["ms"] / by_model[baseline]["ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="vizoo models with d_state-1 SS2D")
    parser.add_argument("--baselines", nargs="+", default=list(DEFAULT_BASELINES), help="timm models to compare with")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, default=4, help=f"rounds of {PASSES} passes of every graph")
    parser.add_argument("--out", type=Path, help="results CSV (default results/onnx_scan_floor_<machine>.csv)")
    args = parser.parse_args(argv)
    known = set(vizoo.list_models())
    models = {}
    for name in dict.fromkeys(args.models):
        if name not in known:
            parser.error(f"unknown vizoo model {name!r}: see `vizoo list`")
        models[name] = timm.create_model(name).eval()
        if not single_state_cores(models[name]):
            parser.error(f"{name} has no d_state-1 SS2D core to stand in for; try vmamba_tiny_s1l8")
    for name in args.baselines:
        if not timm.is_model(name):
            parser.error(f"unknown timm model {name!r} in --baselines")
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be positive")
    baselines = list(dict.fromkeys(b for b in args.baselines if b not in args.models))
    writer = ResultsWriter(
        args.out or results_path("onnx_scan_floor"),
        [*COLUMNS, *(f"vs_{b}" for b in baselines)],
        command=command_line(argv, "python tools/benchmark_onnx_scan_floor.py"),
        threads=args.threads,
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(models, baselines, args.rounds, args.threads, Path(tmp))
    add_ratios(rows, baselines)
    writer.write_many(rows)
    for row in rows:
        ratios = "  ".join(f"{row[f'vs_{b}']:.2f}x {b}" for b in baselines)
        print(f"{row['model']:32s} {row['variant']:11s} {row['nodes']:6d} nodes {row['ms']:8.1f} ms  {ratios}")
    print(f"wrote {writer.rows_written} rows to {writer.path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
