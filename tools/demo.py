"""End-to-end demo: train a tiny vizoo backbone on real images on CPU, then benchmark a real-size one.

1. Trains ``--model`` (default ``test_vmamba``) from scratch on faces vs non-faces (200 real 25x25 LFW crops
   bundled with scikit-image, written as an ImageNet-layout folder and resized to ``--img-size``) through
   ``vizoo.train``, the code path of ``vizoo train`` (timm's AdamW and warmup + cosine schedule, albumentations
   augmentation, checkpoints), and checks that validation accuracy is well above chance.
2. Exports the trained model to ONNX, checks onnxruntime against PyTorch on the validation images, and compares
   int8 (dynamic and static QDQ) with fp32 in accuracy and latency.
3. Prints the latency table of ``--bench-model`` (default ``vmamba_tiny_s1l8``) at 224x224 against DeiT-S and
   Swin-T, measured in the same run (CPU, batch 1, short timing).

Run ``python tools/demo.py`` (what ``make demo`` runs); exits non-zero if validation accuracy <= ``--min-val-acc``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import resolve_data_config
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import vizoo
from vizoo.benchmark import DEFAULT_BASELINES, bench_models, format_table
from vizoo.data import LFW_CLASSES, stratified_split
from vizoo.train import ImageFolderDataset, TrainConfig, build_eval_transform, scan_dataset
from vizoo.train import train as train_classifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="test_vmamba", help="timm/vizoo model to train (default: test_vmamba)")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-val-acc", type=float, default=0.7, help="fail (exit 1) at or below this accuracy")
    p.add_argument("--bench-model", default="vmamba_tiny_s1l8", help="model benchmarked at 224 after training")
    p.add_argument("--bench-size", type=int, default=224)
    p.add_argument("--bench-min-time", type=float, default=1.0, help="seconds of timed passes per point")
    p.add_argument("--no-bench", action="store_true", help="skip the latency benchmark")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export, parity and int8 check")
    p.add_argument("--output-dir", default="outputs/demo", help="where the data, the run and the ONNX files go")
    return p.parse_args(argv)


def write_lfw_folder(root: Path, seed: int) -> Path:
    """LFW faces vs non-faces (``vizoo.data.lfw_faces``' images and split) as PNGs in root/{train,val}/<class>/."""
    from PIL import Image
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset(), dtype=np.float32)
    images = images / 255.0 if images.max() > 1.0 else images
    labels = np.concatenate([np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)])
    train_idx, val_idx = stratified_split(labels, 0.25, seed)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        for i in idx:
            folder = root / split / LFW_CLASSES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((images[i] * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def as_tensors(split, transform) -> TensorDataset:
    """A folder split through the evaluation transform, as one (images, labels) TensorDataset."""
    ds = ImageFolderDataset(split, transform)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


@torch.inference_mode()
def accuracy(model: nn.Module, ds: TensorDataset, batch_size: int = 64) -> float:
    model.eval()
    correct = 0
    for x, y in DataLoader(ds, batch_size=batch_size):
        correct += (model(x).argmax(-1) == y).sum().item()
    return correct / len(ds)


def train(args: argparse.Namespace) -> tuple[nn.Module, TensorDataset, TensorDataset, float]:
    """Train ``args.model`` on LFW faces vs non-faces with vizoo.train (what ``vizoo train`` runs).

    Returns (model, train set, val set, validation accuracy); the sets are the images after the evaluation transform.
    """
    out = Path(args.output_dir)
    data_dir = write_lfw_folder(out / "lfw_faces", args.seed)
    cfg = TrainConfig(
        model=args.model, data_dir=str(data_dir), output=str(out / "train"), img_size=args.img_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, warmup_lr=args.lr * 0.01, min_lr=args.lr * 0.01, seed=args.seed,
        # a small data set: light augmentation, no mixup/cutmix, no EMA (too few steps for it)
        mixup=0.0, cutmix=0.0, smoothing=0.1, model_ema=False, aa=None, reprob=0.0, scale=(0.7, 1.0),
        color_jitter=0.2, clip_grad=None, workers=0, eval_every=10, log_every=10,
    )  # fmt: skip
    print(
        f"training {args.model} with vizoo.train (the code path of vizoo train) on LFW faces vs non-faces at "
        f"{args.img_size}x{args.img_size}: {args.epochs} epochs, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads; data in {data_dir}, run in {cfg.output}"
    )
    t0 = time.perf_counter()
    result = train_classifier(cfg)
    print(f"trained in {time.perf_counter() - t0:.1f}s")
    model = result.model.eval()
    train_split, val_split = scan_dataset(data_dir)
    data_cfg = resolve_data_config({}, model=model)
    eval_tf = build_eval_transform(args.img_size, data_cfg["mean"], data_cfg["std"], data_cfg["crop_pct"])
    train_ds, val_ds = as_tensors(train_split, eval_tf), as_tensors(val_split, eval_tf)
    train_acc, val_acc = accuracy(model, train_ds), accuracy(model, val_ds)
    print(f"train accuracy {train_acc:.2f}")
    print(f"validation accuracy {val_acc:.2f} (chance 0.50)")
    return model, train_ds, val_ds, val_acc


def export(args: argparse.Namespace, model: nn.Module, train_ds: TensorDataset, val_ds: TensorDataset) -> bool:
    """Export the trained model to ONNX, check parity on the validation images, and compare int8 with fp32."""
    from vizoo.export import export_onnx, quantize_int8, run_onnx
    from vizoo.export.timing import onnx_latencies_ms

    model.eval()
    out_dir = Path(args.output_dir)
    t0 = time.perf_counter()
    result = export_onnx(model, out_dir / f"{args.model}.onnx", img_size=args.img_size)
    val_x, val_y = val_ds.tensors
    with torch.no_grad():
        torch_logits = model(val_x).numpy()
    onnx_logits = run_onnx(result.path, val_x)
    parity = float(np.abs(onnx_logits - torch_logits).max())
    print(f"\nexported {result.path} ({result.nodes} nodes) in {time.perf_counter() - t0:.0f}s")
    print(
        f"onnxruntime vs PyTorch: max abs diff {parity:.2e} on {len(val_x)} validation images, "
        f"{result.max_abs_diff:.2e} on scikit-image photos"
    )
    rows = [("fp32", result.path)]
    rows.append(("int8 dynamic", quantize_int8(result.path, out_dir / f"{args.model}.int8-dynamic.onnx")))
    calibration = train_ds.tensors[0][:32]
    rows.append(("int8 static QDQ", quantize_int8(result.path, out_dir / f"{args.model}.int8-qdq.onnx", calibration)))
    print(f"{'onnxruntime CPU':<16} {'val acc':>7} {'latency ms':>10} {'vs fp32':>8}  (batch 1, blocks in turn)")
    latencies = onnx_latencies_ms([path for _, path in rows], val_x[:1], rounds=6, passes=10)
    for (label, path), ms in zip(rows, latencies):
        acc = float((run_onnx(path, val_x).argmax(-1) == val_y.numpy()).mean())
        print(f"{label:<16} {acc:>7.2f} {ms:>10.2f} {ms / latencies[0]:>7.2f}x")
    return parity <= 1e-4


def bench(args: argparse.Namespace) -> None:
    print(f"\nlatency at {args.bench_size}x{args.bench_size} (CPU, batch 1, {torch.get_num_threads()} threads):")
    with tqdm(total=1 + len(DEFAULT_BASELINES), desc="benchmarking", leave=False, file=sys.stderr, disable=None) as bar:

        def progress(label: str, index: int, total: int) -> None:
            bar.n = index
            bar.set_postfix_str(label)

        rows = bench_models(
            [args.bench_model],
            [args.bench_size],
            baselines=DEFAULT_BASELINES,
            device="cpu",
            batch_size=1,
            min_time_s=args.bench_min_time,
            callback=progress,
        )
    print(format_table(rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # quiet onnxscript/onnxruntime INFO chatter
    logging.getLogger("vizoo").setLevel(logging.INFO)  # vizoo.train's per-epoch lines
    torch.set_num_threads(os.cpu_count() or 1)
    names = [args.model] + ([] if args.no_bench else [args.bench_model])
    missing = [n for n in names if not timm.is_model(n)]
    if missing:
        print(
            f"error: model(s) not registered: {', '.join(missing)}; vizoo has: {vizoo.list_models()}", file=sys.stderr
        )
        return 2
    start = time.perf_counter()
    model, train_ds, val_ds, val_acc = train(args)
    parity_ok = args.no_export or export(args, model, train_ds, val_ds)
    if not args.no_bench:
        bench(args)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s")
    if val_acc <= args.min_val_acc:
        print(f"FAILED: validation accuracy {val_acc:.2f} <= {args.min_val_acc}", file=sys.stderr)
        return 1
    if not parity_ok:
        print("FAILED: the ONNX export differs from PyTorch by more than 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
