"""The weights commands of ``vizoo``: ``convert`` and ``push-to-hub`` (:mod:`vizoo.hub`) and ``validate``
(:mod:`vizoo.eval.classification`). Exit codes as ``vizoo.cli``: 0 success, 1 failure, 2 bad input."""

from __future__ import annotations

import argparse
import shlex
import sys

import timm
import torch

__all__ = ["add_weights_parsers"]

_NUM_CLASSES_HELP = "the checkpoint's classifier size, when it is not the variant's (e.g. a fine-tuned checkpoint)"


def _err(msg: str) -> int:
    print(f"vizoo: error: {msg}", file=sys.stderr)
    return 2


def _model_error(name: str) -> int | None:
    """Exit code 2 with close matches for an unknown model name, None for a vizoo model."""
    import vizoo
    from vizoo.cli import _unknown_model

    base = timm.models.split_model_name_tag(name)[0]
    if not timm.is_model(base):
        return _unknown_model(name)
    if base not in vizoo.list_models():
        return _err(f"{name!r} is a timm model, not a vizoo one; `vizoo list` shows the vizoo models")
    return None


def _cmd_convert(args: argparse.Namespace) -> int:
    from vizoo.hub import convert
    from vizoo.utils.checkpoint import CheckpointError

    code = _model_error(args.model)
    if code is not None:
        return code
    try:
        folder = convert(args.checkpoint, args.model, args.output, num_classes=args.num_classes, force=args.force)
    except (CheckpointError, ValueError) as e:
        return _err(str(e))
    print(f"wrote {folder}: config.json, model.safetensors, README.md")
    print(f'  load it with: timm.create_model("local-dir:{folder}", pretrained=True) after `import vizoo`')
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vizoo.hub import push_to_hub
    from vizoo.utils.checkpoint import CheckpointError

    if not Path(args.source).is_dir():
        code = _model_error(args.source)
        if code is not None:
            return code
    try:
        info = push_to_hub(
            args.source,
            args.repo_id,
            checkpoint=args.checkpoint,
            num_classes=args.num_classes,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.message,
        )
    except (CheckpointError, ValueError) as e:
        return _err(str(e))
    print(f"uploaded to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0


_RESULT_COLUMNS = (
    "model",
    "weights",
    "data_dir",
    "images",
    "classes",
    "top1",
    "top5",
    "loss",
    "input_size",
    "crop_pct",
    "interpolation",
    "batch_size",
    "device",
)


def _validate_command(args: argparse.Namespace) -> str:
    """The ``vizoo validate`` command line that measured a row (options that change it)."""
    argv = ["vizoo", "validate", args.model, "--data-dir", args.data_dir]
    argv += ["--split", args.split] if args.split else []
    argv += ["--pretrained"] if args.pretrained else []
    argv += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    argv += ["--num-classes", str(args.num_classes)] if args.num_classes is not None else []
    argv += ["--class-map", args.class_map] if args.class_map else []
    argv += ["--batch-size", str(args.batch_size), "--device", args.device]
    return shlex.join(argv)


def _cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vizoo.eval.classification import validate
    from vizoo.hub import load_checkpoint
    from vizoo.utils import results
    from vizoo.utils.checkpoint import CheckpointError

    folder = args.model.startswith(("local-dir:", "hf-hub:"))  # the folder or Hub repo holds the weights
    if not folder:
        code = _model_error(args.model)
        if code is not None:
            return code
    if folder and (args.pretrained or args.checkpoint):
        return _err(f"{args.model} holds its weights: drop --pretrained / --checkpoint")
    if not folder and not (args.pretrained or args.checkpoint):
        return _err("give the weights to validate: --pretrained (the official release) or --checkpoint FILE")
    if args.num_classes is not None and not args.checkpoint:
        return _err("--num-classes sizes the classifier of a --checkpoint; other weights bring their own")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        return _err(f"invalid --device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _err(f"--device {args.device} requested but CUDA is not available")
    data_dir = Path(args.data_dir)
    if args.split:
        data_dir = data_dir / args.split
    elif (data_dir / "val").is_dir():  # ImageNet's layout: DATA/val/<synset>/
        data_dir = data_dir / "val"
    try:
        if args.checkpoint:
            model = load_checkpoint(args.model, args.checkpoint, args.num_classes)
        else:
            try:
                model = timm.create_model(args.model, pretrained=True).eval()
            except (RuntimeError, OSError) as e:  # a failed download (vizoo's WeightsDownloadError is an OSError)
                return _err(f"cannot load pretrained {args.model}: {e}")
        result = validate(
            model,
            data_dir,
            class_map=args.class_map,
            batch_size=args.batch_size,
            workers=args.workers,
            device=device,
        )
    except (CheckpointError, ValueError) as e:
        return _err(str(e))
    config = result.data_config
    size = "x".join(map(str, config["input_size"]))
    print(
        f"{args.model}: top-1 {result.top1:.3f}%, top-5 {result.top5:.3f}% over {result.images} images of "
        f"{result.classes} classes (input {size}, crop_pct {config['crop_pct']}, {config['interpolation']})"
    )
    machine = results.machine_tag(device)
    path = Path(args.results) if args.results else results.results_path("validate", machine)
    writer = results.ResultsWriter(path, _RESULT_COLUMNS, machine=machine, command=_validate_command(args))
    writer.write(
        dict(
            model=args.model,
            weights=args.checkpoint or ("pretrained" if args.pretrained else args.model),
            data_dir=str(data_dir),
            images=result.images,
            classes=result.classes,
            top1=result.top1,
            top5=result.top5,
            loss=result.loss,
            input_size=size,
            crop_pct=config["crop_pct"],
            interpolation=config["interpolation"],
            batch_size=args.batch_size,
            device=args.device,
        )
    )
    print(f"wrote 1 row to {path}")
    return 0


def add_weights_parsers(subparsers) -> None:
    """Add ``convert``, ``push-to-hub`` and ``validate`` to the ``vizoo`` command's subparsers."""
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint into a Hub-ready folder (config.json, model.safetensors, model card)",
        description="Convert an official or vizoo checkpoint of MODEL (through the family's converter, loaded "
        "strictly) into the folder timm's save_for_hf writes, plus a model card README.md with the paper, the "
        "counted params and MACs, the source file, the licence and the paper's top-1. The folder loads with "
        'timm.create_model("local-dir:DIR", pretrained=True) and transformers.TimmWrapperModel.from_pretrained.',
    )
    p.add_argument("checkpoint", help="the checkpoint file (.pth, .pt, .bin or .safetensors)")
    p.add_argument("--model", required=True, help="the vizoo model the checkpoint belongs to, e.g. vmamba_tiny_s1l8")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument("--num-classes", type=int, help=_NUM_CLASSES_HELP)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder (replaces the three files only)")
    p.set_defaults(func=_cmd_convert)

    p = subparsers.add_parser(
        "push-to-hub",
        help="upload a converted folder (or a model converted from --checkpoint) to the Hugging Face Hub",
        description="Upload a folder written by `vizoo convert` to a Hugging Face Hub model repository (created if "
        "missing), after checking that it loads with timm; or convert MODEL's --checkpoint first. Log in with "
        "`hf auth login` or set HF_TOKEN.",
    )
    p.add_argument("source", metavar="DIR_OR_MODEL", help="a folder written by `vizoo convert`, or a model name")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository")
    p.add_argument("--checkpoint", help="with a model name: the weights to convert and upload")
    p.add_argument("--num-classes", type=int, help=_NUM_CLASSES_HELP)
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--message", default="Add model", help="the commit message")
    p.set_defaults(func=_cmd_push)

    p = subparsers.add_parser(
        "validate",
        help="top-1/top-5 of a model on an ImageNet-style folder, with the model's own eval transform",
        description="Report top-1 and top-5 on a folder of class folders with the model's eval transform (timm's, "
        "as timm's validate.py), and append a row to results/validate_<machine>.csv. Folders named by ImageNet "
        "synset ids map to the right logits (a subset of the classes is fine); other names need one folder per "
        "class or --class-map.",
    )
    p.add_argument("model", help="a vizoo model, or local-dir:DIR / hf-hub:ORG/NAME (which hold their weights)")
    p.add_argument(
        "--data-dir", required=True, help="a folder of class folders, or one with a val/ folder (ImageNet's layout)"
    )
    p.add_argument("--split", help="the sub-folder of --data-dir to read (default: val/ where it exists)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="the variant's official weights (downloaded)")
    weights.add_argument("--checkpoint", help="a checkpoint file, loaded strictly through the family's converter")
    p.add_argument("--num-classes", type=int, help=_NUM_CLASSES_HELP)
    p.add_argument(
        "--class-map", metavar="FILE", help="one class name per line, line i naming logit i (vizoo train's classes.txt)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="data loader processes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--results", metavar="CSV", help="the results file (default: results/validate_<machine>.csv)")
    p.set_defaults(func=_cmd_validate)
