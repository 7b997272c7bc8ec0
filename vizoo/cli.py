"""The ``vizoo`` command: ``vizoo list``, ``vizoo info MODEL``, ``vizoo bench MODEL ...``, ``vizoo export MODEL``.

``main(argv)`` returns the exit code (0 success, 1 failure, 2 usage error / unknown model) so it can be called
in-process; the console script and ``python -m vizoo`` wrap it in ``SystemExit``.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import vizoo
from vizoo.benchmark import DEFAULT_BASELINES, bench_models, format_slopes, format_table, plot_latency, text_table
from vizoo.utils.complexity import count_macs, count_params

__all__ = ["main"]

_CFG_FIELDS = ("input_size", "mean", "std", "crop_pct", "first_conv", "classifier", "pool_size")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _err(msg: str) -> None:
    print(f"vizoo: error: {msg}", file=sys.stderr)


def _unknown_model(name: str) -> int:
    """Report an unknown model with close matches (vizoo names first, then timm) and return exit code 2."""
    vizoo_names = vizoo.list_models()
    matches = difflib.get_close_matches(name, vizoo_names, n=5, cutoff=0.6)
    if len(matches) < 5:
        timm_matches = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        matches += [m for m in timm_matches if m not in matches][: 5 - len(matches)]
    msg = f"unknown model {name!r}."
    if matches:
        msg += " Did you mean: " + ", ".join(matches) + "?"
    msg += " Run `vizoo list` to see all vizoo models."
    _err(msg)
    return 2


def _create(name: str) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False).eval()


def _input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))  # type: ignore[return-value]


def _gmacs(model: torch.nn.Module, name: str, size: tuple[int, int, int]) -> str:
    """GMACs as text; a model that cannot be counted shows "n/a" (with a logged warning) instead of aborting."""
    try:
        return f"{count_macs(model, input_size=size) / 1e9:.3f}"
    except Exception as e:
        logging.getLogger(__name__).warning("could not count MACs of %s at %s: %s", name, size, e)
        return "n/a"


def _cmd_list(args: argparse.Namespace) -> int:
    names = vizoo.list_models(args.pattern)
    if not names:
        _err(f"no vizoo models match {args.pattern!r}")
        return 1
    rows = [["model", "params (M)", "GMACs", "input size"]]
    for name in tqdm(names, desc="building models", unit="model", file=sys.stderr, disable=None, leave=False):
        model = _create(name)
        size = _input_size(model)
        macs = "-" if args.no_macs else _gmacs(model, name, size)
        rows.append([name, f"{count_params(model) / 1e6:.2f}", macs, "x".join(str(s) for s in size)])
        del model
    print(text_table(rows, right=[False, True, True, True]))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    name = args.model
    if not timm.is_model(name):
        return _unknown_model(name)
    model = _create(name)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = _input_size(model)
    n_params = count_params(model)
    lines = [
        f"model:       {name}",
        f"class:       {type(model).__module__}.{type(model).__qualname__}",
        f"params:      {n_params / 1e6:.3f} M ({n_params:,})",
    ]
    if not args.no_macs:
        lines.append(f"GMACs:       {_gmacs(model, name, size)} at input {size}")
    lines.append("pretrained cfg:")
    lines += [f"  {k:<11} {cfg.get(k)!r}" for k in _CFG_FIELDS]
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        lines.append("feature_info:")
        table = [["stage", "module", "channels", "reduction"]]
        for i, f in enumerate(feature_info):
            table.append([str(i), str(f.get("module", "")), str(f.get("num_chs", "")), str(f.get("reduction", ""))])
        lines += ["  " + line for line in text_table(table, right=[True, False, True, True]).splitlines()]
    else:
        lines.append("feature_info: (none)")
    if hasattr(model, "no_weight_decay"):
        nwd = sorted(model.no_weight_decay())
        shown = ", ".join(nwd[:8]) + (", ..." if len(nwd) > 8 else "")
        lines.append(f"no_weight_decay: {len(nwd)} names" + (f" ({shown})" if nwd else ""))
    else:
        lines.append("no_weight_decay: (not defined)")
    print("\n".join(lines))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    for name in [*args.models, *args.baselines]:
        if not timm.is_model(name):
            return _unknown_model(name)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        _err(f"invalid --device {args.device!r}: {e}")
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        _err(f"--device {args.device} requested but CUDA is not available (torch.cuda.is_available() is False)")
        return 2
    if device.type not in ("cpu", "cuda"):
        _err(f"unsupported --device {args.device!r}; use cpu or cuda")
        return 2
    if any(s < 1 for s in args.sizes) or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        _err("--sizes, --batch-size and --threads must be positive")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    bar: tqdm | None = None

    def progress(label: str, index: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="benchmarking", unit="pt", file=sys.stderr, disable=None, leave=False)
        bar.n = index
        bar.set_postfix_str(label)

    try:
        rows = bench_models(
            args.models,
            args.sizes,
            baselines=args.baselines,
            device=device,
            batch_size=args.batch_size,
            warmup=args.warmup,
            min_time_s=args.min_time,
            dtype=_DTYPES[args.dtype],
            callback=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    print(f"device {device}, batch size {args.batch_size}, dtype {args.dtype}, torch threads {torch.get_num_threads()}")
    print(format_table(rows))
    print()
    print(format_slopes([r for r in rows if r.role == "model"]))
    if args.plot:
        print(f"wrote {plot_latency(rows, args.plot)}")
    return 0 if any(r.latency_ms is not None for r in rows if r.role == "model") else 1


MOBILE_TOLERANCE = 5e-3  # tanh GELU differs from exact GELU by up to ~5e-4 per activation


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from vizoo import export
        from vizoo.data import image_folder
    except ImportError as e:
        _err(f"ONNX export needs the onnx extra ({e}); run: pip install -e '.[onnx]'")
        return 2
    finetuned = Path(args.model).is_dir()  # a fine-tuning checkpoint folder
    if finetuned and args.checkpoint:
        _err(f"{args.model} is a checkpoint folder, which holds its weights: drop --checkpoint")
        return 2
    if not finetuned and not timm.is_model(args.model):
        return _unknown_model(args.model)
    output = args.output or f"{args.model.rstrip('/')}.onnx"
    try:
        if finetuned:
            from vizoo.train.finetune import load_finetuned

            model = load_finetuned(args.model)
        else:
            checkpoint = {"checkpoint_path": args.checkpoint} if args.checkpoint else {}
            model = export.resolve_model(args.model, **checkpoint)
        shape = export.input_shape(model, args.img_size)
        calibration = None
        if args.int8 and args.int8 != "dynamic":
            cfg = getattr(model, "pretrained_cfg", {})
            calibration = image_folder(args.int8, shape, cfg.get("mean"), cfg.get("std"))
        result = export.export_onnx(
            model,
            output,
            args.img_size,
            dynamic_batch=args.dynamic_batch,
            opset=args.opset,
            fp16=args.fp16,
            check=args.check,
            mobile=args.mobile,
        )
    except ValueError as e:  # ExportError, CheckpointError, input checks, empty calibration folders
        _err(str(e))
        return 2
    ops = ", ".join(f"{op} {n}" for op, n in result.op_counts.most_common(8))
    print(f"wrote {result.path}: {result.nodes} nodes, input (batch, {', '.join(map(str, shape))})")
    print(f"  ops: {ops}")
    if result.max_abs_diff is not None:
        print(f"  onnxruntime vs PyTorch on sample images: max abs diff {result.max_abs_diff:.2e}")
    if args.int8:
        q_path = export.quantize_int8(result.path, Path(output).with_suffix(".int8.onnx"), calibration)
        mode = "dynamic" if calibration is None else f"static QDQ, {len(calibration)} calibration images"
        print(f"wrote {q_path} (int8, {mode})")
    if args.ort:
        for path in export.convert_to_ort(result.path):
            print(f"wrote {path}")
        for ep, r in export.mobile_usability(result.path).items():
            share = f"{r['nodes']}/{r['total']}" if r["total"] else "0"
            print(f"  {ep}: {share} nodes in {r['partitions']} partitions")
    tolerance = args.tolerance if args.tolerance is not None else (MOBILE_TOLERANCE if args.mobile else 1e-4)
    return 0 if result.max_abs_diff is None or result.max_abs_diff <= tolerance else 1


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``vizoo`` command."""
    parser = argparse.ArgumentParser(prog="vizoo", description="Efficient vision backbones registered in timm.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,info,bench,export,train,prune}")

    p = sub.add_parser("list", help="list vizoo models with params and GMACs")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'vmamba*' (default: all)")
    p.add_argument("--no-macs", action="store_true", help="skip MAC counting (faster)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="show params, GMACs, pretrained cfg and feature info of a model")
    p.add_argument("model")
    p.add_argument("--no-macs", action="store_true", help="skip MAC counting")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="measure latency against timm baselines across input sizes")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024], help="square input sizes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument(
        "--baselines",
        nargs="*",
        default=list(DEFAULT_BASELINES),
        help=f"timm models to compare with (default: {' '.join(DEFAULT_BASELINES)}); give none to skip",
    )
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes per point")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed passes per point")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--plot", metavar="PNG", help="write a log-log latency plot to this file")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="export a model to ONNX, check it in onnxruntime, quantize, convert for mobile")
    p.add_argument("model", help="a model name, or a checkpoint folder of finetune_det / finetune_seg")
    p.add_argument("--output", help="ONNX file (default: MODEL.onnx)")
    p.add_argument("--checkpoint", help="weights to load first (timm checkpoint_path)")
    p.add_argument("--img-size", type=int, help="square input size (default: the model's cfg input size)")
    p.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True, help="(default)")
    p.add_argument("--static-batch", dest="dynamic_batch", action="store_false", help="fix the batch size to 1")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--fp16", action="store_true", help="float16 weights and activations, float32 inputs/outputs")
    p.add_argument(
        "--int8",
        metavar="CALIB_DIR",
        help="also write MODEL.int8.onnx: static QDQ calibrated on the "
        "images in CALIB_DIR, or 'dynamic' for weight-only dynamic quantization",
    )
    p.add_argument("--ort", action="store_true", help="convert to ORT format and report NNAPI/CoreML coverage")
    p.add_argument(
        "--mobile",
        action="store_true",
        help="graph for NNAPI/CoreML: tanh GELU and primitive LayerNorm (parity ~1e-3); use with --static-batch",
    )
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime parity check")
    p.add_argument(
        "--tolerance", type=float, help="max abs diff allowed by the check, exit 1 above (default 1e-4; 5e-3 mobile)"
    )
    p.set_defaults(func=_cmd_export)

    from vizoo.pruning import add_prune_parser

    add_prune_parser(sub)
    try:  # the train extra (albumentations) may be missing; the other commands work without it
        from vizoo.train import add_train_parser
    except ImportError as e:
        missing = f"vizoo train needs the train extra ({e}); run: pip install -e '.[train]'"
        p = sub.add_parser("train", help=missing)
        p.set_defaults(func=lambda args: _err(missing) or 2)
    else:
        add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vizoo`` command and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and usage errors
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
