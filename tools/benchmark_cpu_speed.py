"""CPU speed of vizoo models against Swin-T and ConvNeXt-T, as a user meets it: eager inference at batch 1 and 8, a
training step at batch 2, ``torch.compile`` (inductor) at batch 1 and onnxruntime at batch 1, all in one run.

Every model is built once (random weights, nothing downloaded) at its own default input size. Each mode then times
all models in turn, round after round (``vizoo.export.timing``'s alternating blocks), so that load on a shared
machine falls on a model and its baselines alike; the figures are medians. A ratio is the model's milliseconds over
the baseline's in the same mode and run (``<mode>_vs_<baseline>``; < 1: faster than the baseline).

- ``eager_b1``, ``eager_b8``: ``model(x)`` under ``torch.inference_mode``;
- ``train_b2``: forward, cross-entropy on fixed random labels, backward and an AdamW step (timm's optimizer factory);
- ``compiled_b1``: ``torch.compile(model)`` with the default inductor backend, timed after its first call (whose
  seconds, compilation included, are the ``compile_s`` column);
- ``ort_b1``: the ``vizoo.export.export_onnx`` graph in onnxruntime (CPU), with its parity against eager on photos
  (``parity``: max abs difference of the logits).

python tools/benchmark_cpu_speed.py                                # vmamba_tiny_s1l8 against the baselines, all modes
python tools/benchmark_cpu_speed.py mobilemamba_t2 vim_tiny --modes eager_b1 ort_b1 --rounds 3
python tools/benchmark_cpu_speed.py --threads 2 --rounds 2         # the threads and rounds of issue 35's figures

Rows are appended to results/cpu_speed_<machine>.csv (``--out`` to write elsewhere), which tools/benchmark_docs.py
renders into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import timm.optim
import torch
import torch.nn.functional as F

import vizoo
from vizoo.export.timing import interleaved_times_ms
from vizoo.model_table import families
from vizoo.utils.results import ResultsWriter, command_line, results_path

DEFAULT_MODELS = ("vmamba_tiny_s1l8",)
DEFAULT_BASELINES = ("swin_tiny_patch4_window7_224", "convnext_tiny")
MODES = ("eager_b1", "eager_b8", "train_b2", "compiled_b1", "ort_b1")
PASSES = 3  # passes per runner and round, the first untimed

COLUMNS = ("model", "role", "family", "size", "params_m", *(f"{m}_ms" for m in MODES))
COLUMNS += ("compile_s", "parity", "rounds", "error")


def ratio_columns(modes: list[str], baselines: list[str]) -> list[str]:
    """``<mode>_vs_<baseline>``: the model's milliseconds over the baseline's in that mode."""
    return [f"{mode}_vs_{b}" for b in baselines for mode in modes]


def family(name: str) -> str:
    """The vizoo family (backbone module) of ``name``, or "timm" for a timm model."""
    return families().get(name, "timm")


def batch_of(mode: str) -> int:
    return int(mode.rsplit("_b", 1)[1])


def runner(mode: str, model: torch.nn.Module, size: int, row: dict, tmp: Path):
    """A no-argument callable doing one pass of ``mode`` on ``model``; fills the row's compile_s / parity."""
    x = torch.randn(batch_of(mode), 3, size, size)
    if mode.startswith("eager"):
        model.eval()
        return lambda: model(x)
    if mode.startswith("train"):
        optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-5)
        labels = torch.randint(0, model.num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(0))

        def step():
            model.train()
            loss = F.cross_entropy(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step
    if mode.startswith("compiled"):
        compiled = torch.compile(model.eval())
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        row["compile_s"] = time.perf_counter() - start
        return lambda: compiled(x)
    from vizoo.export import export_onnx
    from vizoo.export.onnx import onnx_runner

    model.eval()
    result = export_onnx(model, tmp / f"{row['model']}.onnx", img_size=size, dynamic_batch=False)
    row["parity"] = result.max_abs_diff
    return onnx_runner(result.path, x, torch.get_num_threads())


def measure(names: dict[str, str], modes: list[str], rounds: int, tmp: Path) -> list[dict[str, object]]:
    """One row per model (``names``: model -> role), each mode timing all models in turn; ratios are the caller's."""
    rows, models = [], {}
    for name, role in names.items():
        row = dict(model=name, role=role, family=family(name), rounds=rounds)
        rows.append(row)
        print(f"  building {name}", flush=True)
        try:
            model = timm.create_model(name)
            models[name] = model
            row["size"] = model.pretrained_cfg["input_size"][-1]
            row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        except Exception as error:  # recorded, not fatal: the other models still run
            row["error"] = describe(error)
    for mode in modes:
        runners, owners = [], []
        for row in rows:
            if row["model"] not in models:
                continue
            print(f"  {mode}: preparing {row['model']}", flush=True)
            try:
                runners.append(runner(mode, models[row["model"]], row["size"], row, tmp))
                owners.append(row)
            except Exception as error:
                row["error"] = "; ".join(filter(None, [row.get("error"), f"{mode}: {describe(error)}"]))
                print(f"  {row['model']}: {row['error']}", flush=True)
        print(f"  {mode}: timing {len(runners)} models x {rounds} rounds", flush=True)
        grad = torch.enable_grad() if mode.startswith("train") else torch.inference_mode()
        with grad:
            times = interleaved_times_ms(runners, rounds, PASSES)
        for row, series in zip(owners, times):
            row[f"{mode}_ms"] = float(np.median(series))
    return rows


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"


def add_ratios(rows: list[dict[str, object]], modes: list[str], baselines: list[str]) -> None:
    """Fill each row's ``<mode>_vs_<baseline>`` (milliseconds over the baseline's, same mode, same run)."""
    by_model = {row["model"]: row for row in rows}
    for baseline in baselines:
        base = by_model.get(baseline, {})
        for row in rows:
            for mode in modes:
                mine, theirs = row.get(f"{mode}_ms"), base.get(f"{mode}_ms")
                if mine is not None and theirs is not None:
                    row[f"{mode}_vs_{baseline}"] = mine / theirs


def print_table(rows: list[dict[str, object]], modes: list[str], baselines: list[str]) -> None:
    from vizoo.benchmark import text_table

    header = ["model", "size", *(f"{m} ms" for m in modes), *(f"{m} vs {b}" for b in baselines for m in modes)]
    lines = [header]
    for row in rows:
        cells = [row.get(f"{m}_ms") for m in modes] + [row.get(c) for c in ratio_columns(modes, baselines)]
        lines.append([str(row["model"]), str(row.get("size", "-"))] + ["-" if v is None else f"{v:.2f}" for v in cells])
    print(text_table(lines, right=[False] + [True] * (len(header) - 1)), flush=True)
    for row in rows:
        if row.get("error"):
            print(f"unavailable: {row['model']}: {row['error']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="vizoo models")
    parser.add_argument("--baselines", nargs="+", default=list(DEFAULT_BASELINES), help="timm models to compare with")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to time")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help=f"rounds of {PASSES} passes of every model and mode")
    parser.add_argument("--out", type=Path, help="results CSV to append to (default results/cpu_speed_<machine>.csv)")
    args = parser.parse_args(argv)
    known = set(vizoo.list_models())
    for name in args.models:
        if name not in known:
            parser.error(f"unknown vizoo model {name!r}: see `vizoo list`; timm models go in --baselines")
    for name in args.baselines:
        if not timm.is_model(name):
            parser.error(f"unknown timm model {name!r} in --baselines")
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    baselines = list(dict.fromkeys(args.baselines))
    modes = list(dict.fromkeys(args.modes))
    names = {b: "baseline" for b in baselines} | {m: "model" for m in args.models if m not in baselines}
    command = command_line(argv, "python tools/benchmark_cpu_speed.py")
    writer = ResultsWriter(args.out or results_path("cpu_speed"), [*COLUMNS, *ratio_columns(list(MODES), baselines)])
    writer.common["command"] = command
    print(f"CPU, {torch.get_num_threads()} threads; median pass, models in turn in each mode", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(names, modes, args.rounds, Path(tmp))
    add_ratios(rows, modes, baselines)
    writer.write_many(rows)
    print_table(rows, modes, baselines)
    print(f"wrote {writer.rows_written} rows to {writer.path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
