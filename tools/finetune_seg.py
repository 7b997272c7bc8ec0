"""Fine-tune a segmentor (UperNet, all-MLP or Semantic FPN head) on image + mask folders (or the built-in coins data)
and print mIoU.

    python tools/finetune_seg.py --coins /tmp/coins --backbone test_vmamba --head mlp --img-size 96 --epochs 4
    python tools/finetune_seg.py --train-images img/train --train-masks ann/train --val-images img/val \
        --val-masks ann/val --num-classes 150 --backbone vmamba_tiny_s1l8 --head upernet --img-size 512 --amp
"""

from __future__ import annotations

import argparse
import json
import logging

from vizoo.data.coins import COINS_CLASSES, build_coins_datasets
from vizoo.data.segmentation import SegmentationFolder, segmentation_transforms
from vizoo.eval import segmentation_miou
from vizoo.heads import SEG_HEADS, create_segmentor
from vizoo.train.finetune import (
    FinetuneConfig,
    add_finetune_arguments,
    export_finetuned,
    finetune_segmentor,
    parse_finetune_arguments,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coins", help="build the scikit-image coins dataset in this folder and use it")
    parser.add_argument("--train-images")
    parser.add_argument("--train-masks")
    parser.add_argument("--val-images")
    parser.add_argument("--val-masks")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--ignore-index", type=int, default=255)
    parser.add_argument("--backbone", default="test_vmamba")
    parser.add_argument("--head", default="upernet", choices=sorted(SEG_HEADS))
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--out-indices", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--img-size", type=int, nargs="+", default=[512], help="H [W], divisible by 32")
    add_finetune_arguments(parser)
    args = parse_finetune_arguments(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.coins:
        paths = build_coins_datasets(args.coins)
        args.train_images, args.train_masks = paths["train_images"], paths["train_masks"]
        args.val_images, args.val_masks = paths["val_images"], paths["val_masks"]
        args.num_classes = args.num_classes or len(COINS_CLASSES)
    if not all([args.train_images, args.train_masks, args.val_images, args.val_masks, args.num_classes]):
        parser.error("give --coins DIR, or all of --train-images --train-masks --val-images --val-masks --num-classes")
    size = tuple(args.img_size) if len(args.img_size) == 2 else args.img_size[0]
    train_set = SegmentationFolder(args.train_images, args.train_masks, segmentation_transforms(size, train=True))
    val_set = SegmentationFolder(args.val_images, args.val_masks, segmentation_transforms(size, train=False))
    model = create_segmentor(
        args.backbone, args.head, args.num_classes, out_indices=tuple(args.out_indices), channels=args.channels
    )
    before = segmentation_miou(model, val_set, args.num_classes, args.batch_size, args.ignore_index, args.device)
    print(f"untrained: mIoU {before['miou']:.3f}")
    config = FinetuneConfig.from_args(args)
    result = finetune_segmentor(
        model, train_set, val_set, args.num_classes, config, ignore_index=args.ignore_index, resume=args.resume
    )
    print(f"trained:   mIoU {result.metrics['miou']:.3f} (losses per epoch {result.losses})")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    summary = {"untrained": before, "trained": result.metrics}
    if args.onnx:
        summary["onnx_max_abs_diff"] = export_finetuned(model, args.onnx, size, args.fp16)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
