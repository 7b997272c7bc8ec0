"""``vizoo finetune det`` and ``vizoo finetune seg``: fine-tune a detector or a segmentor from the command line.

``vizoo/cli.py`` adds them with :func:`add_finetune_parser`; both kinds share the training options of
:func:`vizoo.train.finetune.add_finetune_arguments`. A run prints the metric before and after training, the checkpoint
it wrote, and last a JSON line with the metrics (and, with ``--onnx``, onnxruntime's max abs difference from PyTorch).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .finetune import FinetuneConfig, add_finetune_arguments, export_finetuned, finetune_argument_error

__all__ = ["add_finetune_parser", "run_finetune"]

DET_EXAMPLES = """examples:
  vizoo finetune det --coins /tmp/coins --backbone test_vmamba --img-size 96 --epochs 8
  vizoo finetune det --train-images imgs/ --train-ann train.json --val-images imgs/ --val-ann val.json \\
      --backbone vmamba_tiny_s1l8 --img-size 512 --epochs 12 --amp --output runs/det --onnx runs/det.onnx
"""

SEG_EXAMPLES = """examples:
  vizoo finetune seg --coins /tmp/coins --backbone test_vmamba --head mlp --img-size 96 --epochs 4
  vizoo finetune seg --train-images img/train --train-masks ann/train --val-images img/val \\
      --val-masks ann/val --num-classes 150 --backbone vmamba_tiny_s1l8 --head upernet --img-size 512 --amp
"""


def add_finetune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``finetune`` with its kinds ``det`` and ``seg`` to an argparse subparsers object; returns its parser.

    Each kind's parser sets ``func`` to :func:`run_finetune`, which returns the exit code.
    """
    from vizoo.heads import SEG_HEADS

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a detector (det) or a segmentor (seg) on a backbone, optionally export it to ONNX",
        description="Fine-tune a detector or a segmentor on a vizoo or timm backbone: "
        "`vizoo finetune det --help`, `vizoo finetune seg --help`.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{det,seg}")

    p = kinds.add_parser(
        "det",
        help="FCOS detector on a COCO-format dataset; COCO mAP",
        description="Fine-tune an FCOS detector on a COCO-format dataset (or the built-in coins data), print COCO "
        "mAP, and with --onnx export it with its NMS (boxes, scores, labels, image index) and check it in "
        "onnxruntime.",
        epilog=DET_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_and_backbone(p, labels="ann")
    p.add_argument("--out-indices", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--fpn-channels", type=int, default=128)
    p.add_argument("--num-convs", type=int, default=4)
    p.add_argument("--extra-levels", type=int, default=2)
    _add_size_and_training(p)

    p = kinds.add_parser(
        "seg",
        help="UperNet, all-MLP or Semantic FPN segmentor on image + mask folders; mIoU",
        description="Fine-tune a segmentor (UperNet, all-MLP or Semantic FPN head) on image + mask folders (or the "
        "built-in coins data) and print mIoU; with --onnx export it and check it in onnxruntime.",
        epilog=SEG_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_and_backbone(p, labels="masks")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--head", default="upernet", choices=sorted(SEG_HEADS))
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--out-indices", type=int, nargs="+", default=[0, 1, 2, 3])
    _add_size_and_training(p)
    return parser


def _add_data_and_backbone(p: argparse.ArgumentParser, labels: str) -> None:
    """The data options both kinds take (``--train-ann`` or ``--train-masks`` by ``labels``) and the backbone."""
    p.add_argument("--coins", help="build the scikit-image coins dataset in this folder and use it")
    p.add_argument("--train-images")
    p.add_argument(f"--train-{labels}")
    p.add_argument("--val-images")
    p.add_argument(f"--val-{labels}")
    p.add_argument("--backbone", default="test_vmamba")


def _add_size_and_training(p: argparse.ArgumentParser) -> None:
    """The input size and the shared training options, then what runs the command."""
    p.add_argument("--img-size", type=int, nargs="+", default=[512], help="H [W], divisible by 32")
    add_finetune_arguments(p)
    p.set_defaults(func=run_finetune, parser=p)


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``vizoo finetune det|seg`` from parsed arguments. 0: done; 2: options missing or given without the ones
    they need (message on stderr, as argparse writes it). Training and export errors propagate."""
    error = finetune_argument_error(args)
    if error is None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        error = _resolve_detection_data(args) if args.kind == "det" else _resolve_segmentation_data(args)
    if error is not None:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {error}", file=sys.stderr)
        return 2
    summary = _finetune_detector(args) if args.kind == "det" else _finetune_segmentor(args)
    print(json.dumps(summary))
    return 0


def _resolve_detection_data(args: argparse.Namespace) -> str | None:
    """Fill in the data paths of ``--coins`` (building the dataset there); the usage error when some are missing."""
    if args.coins:
        from vizoo.data.coins import build_coins_datasets

        paths = build_coins_datasets(args.coins)
        args.train_images, args.train_ann = paths["train_images"], paths["train_ann"]
        args.val_images, args.val_ann = paths["val_images"], paths["val_ann"]
    if not all([args.train_images, args.train_ann, args.val_images, args.val_ann]):
        return "give --coins DIR, or all of --train-images --train-ann --val-images --val-ann"
    return None


def _resolve_segmentation_data(args: argparse.Namespace) -> str | None:
    """Fill in the data paths and class count of ``--coins`` (building the dataset there); the usage error when some
    are missing."""
    if args.coins:
        from vizoo.data.coins import COINS_CLASSES, build_coins_datasets

        paths = build_coins_datasets(args.coins)
        args.train_images, args.train_masks = paths["train_images"], paths["train_masks"]
        args.val_images, args.val_masks = paths["val_images"], paths["val_masks"]
        args.num_classes = args.num_classes or len(COINS_CLASSES)
    if not all([args.train_images, args.train_masks, args.val_images, args.val_masks, args.num_classes]):
        return "give --coins DIR, or all of --train-images --train-masks --val-images --val-masks --num-classes"
    return None


def _img_size(args: argparse.Namespace) -> int | tuple[int, int]:
    return tuple(args.img_size) if len(args.img_size) == 2 else args.img_size[0]


def _finetune_detector(args: argparse.Namespace) -> dict:
    """Build the detector, report COCO mAP untrained, train, report it trained, export with ``--onnx``."""
    from vizoo.data.detection import CocoDetection, detection_transforms
    from vizoo.eval import coco_map
    from vizoo.heads import create_detector

    from .finetune import finetune_detector

    size = _img_size(args)
    train_set = CocoDetection(args.train_images, args.train_ann, detection_transforms(size, train=True))
    val_set = CocoDetection(args.val_images, args.val_ann, detection_transforms(size, train=False))
    model = create_detector(
        args.backbone,
        len(train_set.cat_ids),
        out_indices=tuple(args.out_indices),
        fpn_channels=args.fpn_channels,
        num_convs=args.num_convs,
        extra_levels=args.extra_levels,
    )
    before = coco_map(model, val_set, args.batch_size, args.device)
    print(f"untrained: mAP {before['map']:.3f}, mAP50 {before['map50']:.3f}")
    result = finetune_detector(model, train_set, val_set, FinetuneConfig.from_args(args), resume=args.resume)
    after = result.metrics
    print(f"trained:   mAP {after['map']:.3f}, mAP50 {after['map50']:.3f} (losses per epoch {result.losses})")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    summary = {"untrained": before, "trained": after}
    if args.onnx:
        summary["onnx_max_abs_diff"] = export_finetuned(model, args.onnx, size, args.fp16)
    return summary


def _finetune_segmentor(args: argparse.Namespace) -> dict:
    """Build the segmentor, report mIoU untrained, train, report it trained, export with ``--onnx``."""
    from vizoo.data.segmentation import SegmentationFolder, segmentation_transforms
    from vizoo.eval import segmentation_miou
    from vizoo.heads import create_segmentor

    from .finetune import finetune_segmentor

    size = _img_size(args)
    train_set = SegmentationFolder(args.train_images, args.train_masks, segmentation_transforms(size, train=True))
    val_set = SegmentationFolder(args.val_images, args.val_masks, segmentation_transforms(size, train=False))
    model = create_segmentor(
        args.backbone, args.head, args.num_classes, out_indices=tuple(args.out_indices), channels=args.channels
    )
    before = segmentation_miou(model, val_set, args.num_classes, args.batch_size, args.ignore_index, args.device)
    print(f"untrained: mIoU {before['miou']:.3f}")
    result = finetune_segmentor(
        model,
        train_set,
        val_set,
        args.num_classes,
        FinetuneConfig.from_args(args),
        ignore_index=args.ignore_index,
        resume=args.resume,
    )
    print(f"trained:   mIoU {result.metrics['miou']:.3f} (losses per epoch {result.losses})")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    summary = {"untrained": before, "trained": result.metrics}
    if args.onnx:
        summary["onnx_max_abs_diff"] = export_finetuned(model, args.onnx, size, args.fp16)
    return summary
