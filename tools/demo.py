"""End-to-end demo: train a tiny vizoo backbone on real images on CPU, then benchmark a real-size one.

1. Trains ``--model`` (default ``test_vmamba``) from scratch on faces vs non-faces (``vizoo.data.lfw_faces``:
   200 real 25x25 LFW crops bundled with scikit-image, resized to ``--img-size``) with timm's AdamW and cosine
   schedule, and checks that validation accuracy is well above chance.
2. Exports the trained model to ONNX, checks onnxruntime against PyTorch on the validation images, and compares
   int8 (dynamic and static QDQ) with fp32 in accuracy and latency.
3. Prints the latency table of ``--bench-model`` (default ``vmamba_tiny_s1l8``) at 224x224 against DeiT-S and
   Swin-T, measured in the same run (CPU, batch 1, short timing).

Run ``python tools/demo.py`` (what ``make demo`` runs); exits non-zero if validation accuracy <= ``--min-val-acc``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import random_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import vizoo
from vizoo.benchmark import DEFAULT_BASELINES, bench_models, build_model, format_table
from vizoo.data import lfw_faces
from vizoo.utils.complexity import count_params


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
    p.add_argument("--output-dir", default="outputs/demo", help="where the ONNX files go")
    return p.parse_args(argv)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and +-2 pixel translations (reflect padding) of a batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return xp[:, :, dy : dy + h, dx : dx + w]


@torch.inference_mode()
def accuracy(model: nn.Module, ds: TensorDataset, batch_size: int = 64) -> float:
    model.eval()
    correct = 0
    for x, y in DataLoader(ds, batch_size=batch_size):
        correct += (model(x).argmax(-1) == y).sum().item()
    return correct / len(ds)


def train(args: argparse.Namespace) -> tuple[nn.Module, TensorDataset, TensorDataset, float]:
    """Train ``args.model`` on LFW faces vs non-faces; returns (model, train set, val set, validation accuracy)."""
    random_seed(args.seed)
    train_ds, val_ds = lfw_faces(img_size=args.img_size, seed=args.seed)
    model, _ = build_model(args.model, args.img_size, num_classes=2)
    print(
        f"training {args.model} ({count_params(model) / 1e6:.2f} M params) on LFW faces vs non-faces at "
        f"{args.img_size}x{args.img_size}: {len(train_ds)} train / {len(val_ds)} val images, "
        f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    loader = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        warmup_lr=args.lr * 0.01,
        min_lr=args.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=len(loader),
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    aug_gen = torch.Generator().manual_seed(args.seed + 1)
    updates = 0
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, file=sys.stderr, disable=None)
        for x, y in bar:
            logits = model(augment(x, aug_gen))
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(updates)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        lr = optimizer.param_groups[0]["lr"]
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  train loss {loss_sum / seen:.4f}  train acc {correct / seen:.3f}  "
            f"lr {lr:.2e}  {time.perf_counter() - t0:5.1f}s"
        )
    train_acc, val_acc = accuracy(model, train_ds), accuracy(model, val_ds)
    print(f"trained in {time.perf_counter() - t0:.1f}s")
    print(f"train accuracy {train_acc:.2f}")
    print(f"validation accuracy {val_acc:.2f} (chance 0.50)")
    return model, train_ds, val_ds, val_acc


def export(args: argparse.Namespace, model: nn.Module, train_ds: TensorDataset, val_ds: TensorDataset) -> bool:
    """Export the trained model to ONNX, check parity on the validation images, and compare int8 with fp32."""
    from vizoo.export import export_onnx, onnx_latency_ms, quantize_int8, run_onnx

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
    print(f"{'onnxruntime CPU':<16} {'val acc':>7} {'latency ms':>10} {'vs fp32':>8}")
    base_ms = None
    for label, path in rows:
        acc = float((run_onnx(path, val_x).argmax(-1) == val_y.numpy()).mean())
        ms = onnx_latency_ms(path, val_x[:1])
        base_ms = base_ms or ms
        print(f"{label:<16} {acc:>7.2f} {ms:>10.2f} {ms / base_ms:>7.2f}x")
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
