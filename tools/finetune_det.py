"""Fine-tune an FCOS detector on a COCO-format dataset (or the built-in coins data), print COCO mAP, and with
``--onnx`` export it with its NMS (boxes, scores, labels, image index) and check it in onnxruntime.

    python tools/finetune_det.py --coins /tmp/coins --backbone test_vmamba --img-size 96 --epochs 8
    python tools/finetune_det.py --train-images imgs/ --train-ann train.json --val-images imgs/ --val-ann val.json \
        --backbone vmamba_tiny_s1l8 --img-size 512 --epochs 12 --amp --output runs/det --onnx runs/det.onnx
"""

from __future__ import annotations

import argparse
import json
import logging

from vizoo.data.coins import build_coins_datasets
from vizoo.data.detection import CocoDetection, detection_transforms
from vizoo.eval import coco_map
from vizoo.heads import create_detector
from vizoo.train.finetune import (
    FinetuneConfig,
    add_finetune_arguments,
    export_finetuned,
    finetune_detector,
    parse_finetune_arguments,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coins", help="build the scikit-image coins dataset in this folder and use it")
    parser.add_argument("--train-images")
    parser.add_argument("--train-ann")
    parser.add_argument("--val-images")
    parser.add_argument("--val-ann")
    parser.add_argument("--backbone", default="test_vmamba")
    parser.add_argument("--out-indices", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--num-convs", type=int, default=4)
    parser.add_argument("--extra-levels", type=int, default=2)
    parser.add_argument("--img-size", type=int, nargs="+", default=[512], help="H [W], divisible by 32")
    add_finetune_arguments(parser)
    args = parse_finetune_arguments(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.coins:
        paths = build_coins_datasets(args.coins)
        args.train_images, args.train_ann = paths["train_images"], paths["train_ann"]
        args.val_images, args.val_ann = paths["val_images"], paths["val_ann"]
    if not all([args.train_images, args.train_ann, args.val_images, args.val_ann]):
        parser.error("give --coins DIR, or all of --train-images --train-ann --val-images --val-ann")
    size = tuple(args.img_size) if len(args.img_size) == 2 else args.img_size[0]
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
    config = FinetuneConfig.from_args(args)
    result = finetune_detector(model, train_set, val_set, config, resume=args.resume)
    after = result.metrics
    print(f"trained:   mAP {after['map']:.3f}, mAP50 {after['map50']:.3f} (losses per epoch {result.losses})")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    summary = {"untrained": before, "trained": after}
    if args.onnx:
        summary["onnx_max_abs_diff"] = export_finetuned(model, args.onnx, size, args.fp16)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
