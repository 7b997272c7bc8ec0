"""onnxruntime (CPU) latency against PyTorch eager (CPU) for the same model, side by side in one run (blocks of
passes in turn, medians), with the fp32 parity of the export on real images (max abs difference of the outputs,
scikit-image photos) and the size of those outputs (max |output|). The last column gives the lowest and highest
ratio of single rounds (one block of each, side by side): on a shared machine it shows how far the load moved the
ratio during the run; ``--rounds`` takes more of them.

Models are built without pretrained weights, and every parameter gets N(0, 0.02²) noise first (``--perturb``): at
init, zero or 1e-6 layer scales leave most blocks out of the output, and parity would test little of the graph.

python tools/benchmark_onnx.py                       # vmamba_tiny_s1l8 and test_vmamba at their cfg sizes
python tools/benchmark_onnx.py vanilla_vmamba_tiny   # any vizoo/timm model names
python tools/benchmark_onnx.py --parity-only '*'     # parity of every registered model (fnmatch patterns work)
python tools/benchmark_onnx.py --mobile cas_vit_xs    # also the share of nodes NNAPI / CoreML take, default and
                                                      # `--mobile` graphs (onnxruntime's mobile usability checker)
python tools/benchmark_onnx.py --int8 cas_vit_xs      # also int8 (dynamic; static QDQ calibrated on 4 photos)
                                                      # against fp32 onnxruntime, on 4 other photos
python tools/benchmark_onnx.py --profile mala_tiny     # also where onnxruntime spends a pass, by op type, and
                                                      # the matrix products' FLOP rate against a large MatMul's

Pruned ViTs (the zoo's third family):
vizoo prune deit_tiny_patch16_224 --sparsity 0.5 --output out/deit_tiny_50
python tools/benchmark_onnx.py out/deit_tiny_50              # a model saved by `vizoo prune` / save_pruned
python tools/benchmark_onnx.py --tome 8 deit_tiny_patch16_224 # ToMe merging, r tokens per block
python tools/benchmark_onnx.py --keep-rate 0.7 deit_tiny_patch16_224 vim_tiny  # token pruning: EViT on a ViT,
                                                      # hidden-state-aligned pruning on Vim

Each model's row (the table's columns) is appended to results/onnx_<machine>.csv (``--out`` to write elsewhere),
which tools/benchmark_docs.py renders into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

import vizoo
from vizoo.backbones.vim import Vim
from vizoo.export import export_onnx, input_shape, mobile_usability, quantize_int8, run_onnx
from vizoo.export.onnx import sample_images
from vizoo.export.profile import OnnxProfile, matmul_peak_gflops, onnx_profile
from vizoo.export.timing import eager_vs_onnx_ms, onnx_latencies_ms
from vizoo.pruning import apply_evit, apply_tome, apply_vim_token_pruning, is_saved_pruned, load_pruned
from vizoo.utils.results import ResultsWriter, command_line, results_path

COLUMNS = (
    "model",
    "input",
    "nodes",
    "parity",
    "out_max",
    "eager_ms",
    "ort_ms",
    "ort_over_eager",
    "round_min",
    "round_max",
    "rounds",
    "perturb",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "models",
        nargs="*",
        default=["vmamba_tiny_s1l8", "test_vmamba"],
        help="names or fnmatch patterns of models, or paths of pruned ViTs saved by `vizoo prune`",
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds of 6 eager passes then 6 ORT passes")
    parser.add_argument(
        "--mobile", action="store_true", help="also check NNAPI / CoreML coverage of the default and --mobile graphs"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also int8 against fp32 onnxruntime: latency, and error on held-out photos"
    )
    parser.add_argument("--parity-only", action="store_true", help="export and check parity, skip the latencies")
    parser.add_argument(
        "--profile", action="store_true", help="also onnxruntime's profile: time per op type, matrix products' rate"
    )
    parser.add_argument("--perturb", type=float, default=0.02, help="std of the noise added to every parameter")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="parity above this fails the run (exit 1)")
    parser.add_argument("--tome", type=int, metavar="R", help="merge R tokens per block (ToMe) in every ViT given")
    parser.add_argument(
        "--keep-rate",
        type=float,
        metavar="K",
        help="token pruning in every model given: EViT in a ViT, hidden-state-aligned pruning in Vim",
    )
    parser.add_argument("--out", type=Path, help="results CSV to append to (default results/onnx_<machine>.csv)")
    args = parser.parse_args(argv)
    if args.tome is not None and args.keep_rate is not None:
        parser.error("--tome and --keep-rate are two token methods; pick one per run")
    names = []
    for pattern in args.models:
        if is_saved_pruned(pattern) or timm.is_model(pattern):
            matched = [pattern]
        else:
            matched = vizoo.list_models(pattern) if _is_pattern(pattern) else []
        if not matched:
            parser.error(
                f"no vizoo or timm model matches {pattern!r}, and it is not a pruned model saved by `vizoo prune` "
                "(PATH.json and PATH.safetensors); see `vizoo list` for vizoo's names"
            )
        names += matched
    failed, peak_gflops = [], None
    command = command_line(argv, "python tools/benchmark_onnx.py")
    writer = ResultsWriter(args.out or results_path("onnx"), COLUMNS, command=command)
    print(
        f"CPU, batch 1, {torch.get_num_threads()} torch threads; median latency, eager and ORT blocks in turn",
        flush=True,
    )
    header = f"{'model':<30} {'input':>11} {'nodes':>6} {'parity':>8} {'|out|':>7}"
    header += f" {'eager ms':>9} {'ORT ms':>8} {'ORT / eager':>11} {'per round':>11}"
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                name, model = build(name, args.tome, args.keep_rate)
            except (TypeError, ValueError, RuntimeError) as error:  # not a ViT / Vim, a bad rate, a corrupt checkpoint
                parser.error(f"{name}: {error}")
            model = perturb_weights(model, args.perturb)
            shape = input_shape(model, None)
            with torch.no_grad():
                output_size = model(sample_images(shape, model, count=1)).abs().max().item()
            result = export_onnx(model, Path(tmp) / "model.onnx", dynamic_batch=False, check=True)
            if result.max_abs_diff > args.tolerance:
                failed.append(name)
            timing = "-".rjust(10) + "-".rjust(9) + "-".rjust(12) + "-".rjust(12)
            size = "x".join(map(str, shape))
            row = dict(model=name, input=size, nodes=result.nodes, parity=result.max_abs_diff, out_max=output_size)
            row.update(perturb=args.perturb)
            if not args.parity_only:
                latency = eager_vs_onnx_ms(model, result.path, torch.randn(1, *shape), rounds=args.rounds)
                spread = f"{min(latency.round_ratios):.2f}-{max(latency.round_ratios):.2f}"
                timing = f" {latency.eager_ms:>9.1f} {latency.onnx_ms:>8.1f} {latency.ratio:>10.2f}x {spread:>11}"
                row.update(eager_ms=latency.eager_ms, ort_ms=latency.onnx_ms, ort_over_eager=latency.ratio)
                row.update(round_min=min(latency.round_ratios), round_max=max(latency.round_ratios), rounds=args.rounds)
            writer.write(row)
            print(
                f"{name:<30} {size:>11} {result.nodes:>6} {result.max_abs_diff:>8.1e} {output_size:>7.1e}{timing}",
                flush=True,
            )
            if args.profile:
                peak_gflops = peak_gflops or matmul_peak_gflops()
                print_profile(onnx_profile(result.path, torch.randn(1, *shape)), peak_gflops)
            if args.int8 and not args.parity_only:
                compare_int8(result.path, model, shape, Path(tmp), args.rounds)
            if args.mobile:
                mobile = export_onnx(
                    model, Path(tmp) / "model.mobile.onnx", dynamic_batch=False, mobile=True, check=False
                )
                for graph, path in (("default", result.path), ("--mobile", mobile.path)):
                    coverage = "; ".join(
                        f"{ep} {r['nodes']}/{r['total']} nodes in {r['partitions']} partitions"
                        for ep, r in mobile_usability(path).items()
                    )
                    print(f"  {graph:<8} graph: {coverage}", flush=True)
    print(f"{len(names)} models; parity above {args.tolerance:g}: {', '.join(failed) or 'none'}", flush=True)
    print(f"wrote {writer.rows_written} rows to {writer.path}", flush=True)
    return 1 if failed else 0


def print_profile(profile: OnnxProfile, peak_gflops: float, top: int = 10) -> None:
    """Print an onnxruntime profile: the ``top`` op types by time, and the matrix products' FLOP rate against
    ``peak_gflops``, that of a large MatMul on the same machine."""
    print(
        f"  ORT profile: {profile.ms:.1f} ms per pass in nodes; matrix products "
        f"{profile.matrix_product_flops / 1e9:.2f} GFLOP at {profile.matrix_product_gflops:.0f} GFLOP/s, "
        f"{profile.matrix_product_gflops / peak_gflops:.0%} of a 1024x1024x1024 MatMul's {peak_gflops:.0f} here",
        flush=True,
    )
    for op in list(profile.ms_by_op)[:top]:
        ms = profile.ms_by_op[op]
        print(f"    {op:<26} {ms:>8.2f} ms {ms / profile.ms:>6.1%} {profile.nodes_by_op[op]:>6} nodes", flush=True)
    rest = list(profile.ms_by_op)[top:]
    if rest:
        ms = sum(profile.ms_by_op[op] for op in rest)
        print(f"    {f'{len(rest)} other op types':<26} {ms:>8.2f} ms {ms / profile.ms:>6.1%}", flush=True)


def compare_int8(path: Path, model: torch.nn.Module, shape: tuple[int, int, int], tmp: Path, rounds: int) -> None:
    """Print int8 (dynamic, and static QDQ calibrated on 4 photos) against the fp32 graph at ``path``: onnxruntime
    latencies in alternating blocks, and on 4 other photos the largest output change relative to the largest fp32
    output and how often the top-1 class stays the same."""
    photos = sample_images(shape, model, count=8)
    calibration, held_out = photos[:4], photos[4:]
    variants = {
        "int8 dynamic": quantize_int8(path, tmp / f"{path.stem}.dynamic.onnx"),
        "int8 static QDQ": quantize_int8(path, tmp / f"{path.stem}.qdq.onnx", calibration),
    }
    fp32_ms, *int8_ms = onnx_latencies_ms([path, *variants.values()], torch.randn(1, *shape), rounds=rounds)
    reference = _run_one_by_one(path, held_out)
    for (label, q_path), ms in zip(variants.items(), int8_ms):
        outputs = _run_one_by_one(q_path, held_out)
        change = np.abs(outputs - reference).max() / np.abs(reference).max()
        same_top1 = int((outputs.argmax(-1) == reference.argmax(-1)).sum())
        print(
            f"  {label:<15} {ms:>7.1f} ms = {ms / fp32_ms:.2f}x fp32 ORT ({fp32_ms:.1f} ms); held-out photos: "
            f"max change {change:.1%} of max |out|, top-1 kept {same_top1}/{len(held_out)}",
            flush=True,
        )


def build(name: str, tome: int | None = None, keep_rate: float | None = None) -> tuple[str, torch.nn.Module]:
    """The model ``name`` (a registered name, or a pruned ViT saved at that path) in eval mode, with ToMe merging
    (``tome`` tokens per block) or token pruning at ``keep_rate`` applied; returns (its label in the table, model)."""
    if is_saved_pruned(name):
        label, model = Path(name).name, load_pruned(name)
    else:
        label, model = name, timm.create_model(name).eval()
    if tome is not None:
        return f"{label}+tome{tome}", apply_tome(model, tome)
    if keep_rate is not None:
        prune = apply_vim_token_pruning if isinstance(model, Vim) else apply_evit
        return f"{label}+keep{keep_rate:g}", prune(model, keep_rate)
    return label, model


def _run_one_by_one(path: Path, images: torch.Tensor) -> np.ndarray:
    """Outputs of a fixed-batch-1 ONNX model on each image."""
    return np.concatenate([run_onnx(path, image[None]) for image in images])


def perturb_weights(model: torch.nn.Module, std: float, seed: int = 0) -> torch.nn.Module:
    """``model`` with N(0, std²) noise added to every parameter (seeded), in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


if __name__ == "__main__":
    raise SystemExit(main())
