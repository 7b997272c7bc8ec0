"""Pruning figures on the CPU that runs this script, each as a ratio against a baseline measured in the same run.

1. DeiT-S (random init) at 50% block sparsity, compacted: params, MACs and latency vs the dense model.
2. Accuracy kept on scikit-learn digits: a DeiT-Tiny-shaped ViT (32x32 input, 4x4 patches) trained briefly, then
   pruned 50%, then fine-tuned briefly.
3. ToMe at r = 8 and 16: DeiT-S throughput at batch 1 and 32; at r = 4, 8 and 16 the digits model's accuracy
   change.
4. Vim token pruning (ToP-ViM's blocks 5/10/15, keep 0.8) with and without hidden-state alignment: Vim-S MACs and
   latency vs the dense model, and the accuracy kept by a small Vim trained on digits (no fine-tune, then 1 epoch).

    python tools/benchmark_pruning.py [--sections deit digits tome vim] [--epochs 6] [--threads 2]

Every figure is also appended as a row to results/pruning_<machine>.csv (``--out`` to write elsewhere): the
``section``, the ``model``, the ``method`` (``dense``, ``block``, ``tome``, ``vim-aligned``, ``vim-packed``) and its
``setting`` (sparsity, r, keep rate), the fine-tune epochs after pruning, and the measured params, MACs (per image),
latency (median ms at ``batch``) and accuracy, blank where not measured. Ratios are taken against the ``dense`` row
of the same section and run by tools/benchmark_docs.py, which renders the file into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vizoo.data import digits, photo_batch
from vizoo.pruning import (
    apply_tome,
    apply_vim_token_pruning,
    block_prune,
    compact,
    finetune,
    remove_vim_token_pruning,
)
from vizoo.utils.complexity import count_macs, count_params
from vizoo.utils.results import ResultsWriter, command_line, results_path

COLUMNS = (
    "section",
    "model",
    "method",
    "setting",
    "finetune_epochs",
    "train_epochs",
    "batch",
    "runs",
    "params",
    "macs",
    "latency_ms",
    "accuracy",
)
DIGITS_INPUT = (3, 32, 32)


def latencies(models: dict, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median ms per model, runs interleaved so that load on the machine hits all models alike."""
    times = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(runs):
            for k, m in models.items():
                start = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - start)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def deit_small(args) -> None:
    print("== DeiT-S at 50% block sparsity (32x32 tiles), compacted; random init ==")
    dense = timm.create_model("deit_small_patch16_224").eval()
    pruned = copy.deepcopy(dense)
    calib = photo_batch((3, 224, 224), count=8).split(4)
    start = time.perf_counter()
    block_prune(pruned, 0.5, calib, block=(32, 32), latency_batch=1)
    compact(pruned)
    print(f"prune + compact: {time.perf_counter() - start:.1f}s; report {pruned.pruning_report}")
    p0, p1 = count_params(dense), count_params(pruned)
    m0, m1 = count_macs(dense), count_macs(pruned)
    print(f"params  {p0 / 1e6:.2f} M -> {p1 / 1e6:.2f} M  ratio {p1 / p0:.3f}")
    print(f"GMACs   {m0 / 1e9:.3f} -> {m1 / 1e9:.3f}  ratio {m1 / m0:.3f}")
    for batch in (1, 8):
        t = latencies({"dense": dense, "compact": pruned}, torch.randn(batch, 3, 224, 224), args.runs)
        print(
            f"latency batch {batch}: dense {t['dense']:.1f} ms, compact {t['compact']:.1f} ms, "
            f"speedup {t['dense'] / t['compact']:.2f}x"
        )
        common = dict(section="deit", model="deit_small_patch16_224", batch=batch, runs=args.runs)
        args.writer.write(dict(common, method="dense", params=p0, macs=m0, latency_ms=t["dense"]))
        args.writer.write(dict(common, method="block", setting=0.5, params=p1, macs=m1, latency_ms=t["compact"]))


def accuracy(model, loader) -> float:
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return correct / total


def train(model, loader, epochs: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader), pct_start=0.15)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def digits_model(args):
    torch.manual_seed(0)
    train_set, val_set = digits(img_size=32)
    model = timm.create_model(
        "deit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10, drop_path_rate=0.0
    )  # DeiT-Tiny shape: 12 blocks, 192 wide, 3 heads, 64 patch tokens
    tl = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    vl = DataLoader(val_set, batch_size=128)
    start = time.perf_counter()
    train(model, tl, args.epochs, 1e-3)
    print(f"trained DeiT-Tiny-shaped ViT on digits for {args.epochs} epochs in {time.perf_counter() - start:.0f}s")
    return model, tl, vl


def digits_latencies(args, models: dict, batch: int = 64) -> dict[str, float]:
    """Median ms of the digits-sized models at ``batch``, interleaved."""
    return latencies(models, torch.randn(batch, *DIGITS_INPUT), max(3, args.runs // 2))


def digits_pruning(args, model, tl, vl) -> None:
    print("== accuracy kept on scikit-learn digits (DeiT-Tiny shape, 32x32, 50% block sparsity, 32x32 tiles) ==")
    base = accuracy(model, vl)
    pruned = copy.deepcopy(model)
    calib = [(x, y) for i, (x, y) in enumerate(tl) if i < 4]
    block_prune(pruned, 0.5, calib, block=(32, 32), latency_batch=1)
    compact(pruned)
    one_shot = accuracy(pruned, vl)
    finetune(pruned, tl, epochs=args.ft_epochs, lr=2e-4)
    tuned = accuracy(pruned, vl)
    print(
        f"dense {base:.4f} | pruned 50% (no fine-tune) {one_shot:.4f} | + {args.ft_epochs}-epoch fine-tune "
        f"{tuned:.4f}  (val n={len(vl.dataset)}); heads {pruned.pruning_report['heads']}"
    )
    t = digits_latencies(args, {"dense": model, "pruned": pruned})
    common = dict(section="digits", model="deit_tiny_digits", train_epochs=args.epochs, batch=64)
    common.update(runs=max(3, args.runs // 2))
    args.writer.write(
        dict(common, method="dense", params=count_params(model), macs=count_macs(model, DIGITS_INPUT))
        | dict(latency_ms=t["dense"], accuracy=base)
    )
    size = dict(params=count_params(pruned), macs=count_macs(pruned, DIGITS_INPUT), latency_ms=t["pruned"])
    args.writer.write(dict(common, method="block", setting=0.5, finetune_epochs=0, accuracy=one_shot, **size))
    args.writer.write(dict(common, method="block", setting=0.5, finetune_epochs=args.ft_epochs, accuracy=tuned, **size))


def tome(args, model=None, vl=None) -> None:
    print("== ToMe: DeiT-S (random init) throughput at 224, and digits-model accuracy ==")
    dense = timm.create_model("deit_small_patch16_224").eval()
    merged = {r: apply_tome(copy.deepcopy(dense), r) for r in (8, 16)}
    for batch, runs in ((1, args.runs), (32, max(3, args.runs // 8))):
        t = latencies(
            {"dense": dense, **{f"r={r}": m for r, m in merged.items()}}, torch.randn(batch, 3, 224, 224), runs
        )
        gains = ", ".join(f"{k} {t[k]:.1f} ms ({t['dense'] / t[k]:.2f}x)" for k in t if k != "dense")
        print(f"batch {batch}: dense {t['dense']:.1f} ms; {gains}")
        common = dict(section="tome", model="deit_small_patch16_224", batch=batch, runs=runs)
        common.update(params=count_params(dense))  # token merging keeps every parameter
        args.writer.write(dict(common, method="dense", macs=count_macs(dense), latency_ms=t["dense"]))
        for r, m in merged.items():
            args.writer.write(dict(common, method="tome", setting=r, macs=count_macs(m), latency_ms=t[f"r={r}"]))
    if model is not None:
        base = accuracy(model, vl)
        merged = {r: apply_tome(copy.deepcopy(model), r) for r in (4, 8, 16)}
        t = digits_latencies(args, {"dense": model, **{f"r={r}": m for r, m in merged.items()}})
        common = dict(section="digits_tome", model="deit_tiny_digits", train_epochs=args.epochs, finetune_epochs=0)
        common.update(batch=64, runs=max(3, args.runs // 2), params=count_params(model))
        dense_macs = count_macs(model, DIGITS_INPUT)
        args.writer.write(dict(common, method="dense", macs=dense_macs, latency_ms=t["dense"], accuracy=base))
        for r, m in merged.items():
            kept = accuracy(m, vl)
            print(f"digits (64 patch tokens, 12 blocks) r={r}: accuracy {base:.4f} -> {kept:.4f}")
            macs = count_macs(m, DIGITS_INPUT)
            args.writer.write(dict(common, method="tome", setting=r, macs=macs, latency_ms=t[f"r={r}"], accuracy=kept))


def vim_token_pruning(args) -> None:
    print("== Vim token pruning: ToP-ViM schedule (keep 0.8 in blocks 5, 10, 15 of 24), aligned vs packed ==")
    dense = timm.create_model("vim_small").eval()
    variants = {
        "aligned": apply_vim_token_pruning(copy.deepcopy(dense), 0.8, align=True),
        "packed": apply_vim_token_pruning(copy.deepcopy(dense), 0.8, align=False),
    }
    m0 = count_macs(dense)
    print(
        f"vim_small GMACs: dense {m0 / 1e9:.3f}; "
        + ", ".join(f"{k} {count_macs(m) / 1e9:.3f} ({count_macs(m) / m0:.3f})" for k, m in variants.items())
    )
    runs = max(3, args.runs // 4)
    t = latencies({"dense": dense, **variants}, torch.randn(1, 3, 224, 224), runs)
    print("vim_small latency batch 1: " + ", ".join(f"{k} {v:.0f} ms ({t['dense'] / v:.2f}x)" for k, v in t.items()))
    common = dict(section="vim", model="vim_small", batch=1, runs=runs)
    args.writer.write(dict(common, method="dense", params=count_params(dense), macs=m0, latency_ms=t["dense"]))
    for k, m in variants.items():
        args.writer.write(dict(common, method=f"vim-{k}", setting=0.8, macs=count_macs(m), latency_ms=t[k]))

    print("== accuracy kept on scikit-learn digits: Vim (6 blocks, 64 wide, 32x32, 4x4 patches, 64 patch tokens) ==")
    torch.manual_seed(0)
    train_set, val_set = digits(img_size=32)
    tl = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    vl = DataLoader(val_set, batch_size=128)
    model = timm.create_model(
        "vim_tiny", img_size=32, patch_size=4, embed_dim=64, depth=6, d_state=4, num_classes=10, drop_path_rate=0.0
    )
    start = time.perf_counter()
    train(model, tl, args.epochs, 1e-3)
    base = accuracy(model, vl)
    print(f"trained for {args.epochs} epochs in {time.perf_counter() - start:.0f}s: dense accuracy {base:.4f}")
    common = dict(section="vim_digits", model="vim_digits", train_epochs=args.epochs, batch=64)
    common.update(runs=max(3, args.runs // 2))
    variants = {
        (keep, align): apply_vim_token_pruning(copy.deepcopy(model), keep, layers=[2, 4], align=align)
        for keep in (0.7, 0.5)
        for align in (True, False)
    }
    t = digits_latencies(args, {"dense": model, **{str(k): m for k, m in variants.items()}})
    macs = count_macs(model, DIGITS_INPUT)
    args.writer.write(
        dict(common, method="dense", params=count_params(model), macs=macs, latency_ms=t["dense"], accuracy=base)
    )
    for keep in (0.7, 0.5):
        row = []
        for align in (True, False):
            pruned = variants[keep, align]
            one_shot = accuracy(pruned, vl)
            size = dict(macs=count_macs(pruned, DIGITS_INPUT), latency_ms=t[str((keep, align))])
            method = dict(common, method="vim-aligned" if align else "vim-packed", setting=keep, **size)
            args.writer.write(dict(method, finetune_epochs=0, accuracy=one_shot))
            train(pruned, tl, args.ft_epochs, 2e-4)
            tuned = accuracy(pruned, vl)
            args.writer.write(dict(method, finetune_epochs=args.ft_epochs, accuracy=tuned))
            row.append(f"{'aligned' if align else 'packed'} {one_shot:.4f} -> {tuned:.4f}")
            remove_vim_token_pruning(pruned)
        print(f"keep {keep} in blocks 2/4 (no fine-tune -> {args.ft_epochs}-epoch fine-tune): " + "; ".join(row))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = ["deit", "digits", "tome", "vim"]
    parser.add_argument("--sections", nargs="+", default=sections, choices=sections)
    parser.add_argument("--epochs", type=int, default=6, help="digits training epochs")
    parser.add_argument("--ft-epochs", type=int, default=1, help="fine-tune epochs after pruning")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model at batch 1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, help="results CSV to append to (default results/pruning_<machine>.csv)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = command_line(argv, "python tools/benchmark_pruning.py")
    args.writer = ResultsWriter(args.out or results_path("pruning"), COLUMNS, command=command)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "deit" in args.sections:
        deit_small(args)
    model = vl = None
    if "digits" in args.sections:
        model, tl, vl = digits_model(args)
        digits_pruning(args, model, tl, vl)
    if "tome" in args.sections:
        tome(args, model, vl)
    if "vim" in args.sections:
        vim_token_pruning(args)
    print(f"wrote {args.writer.rows_written} rows to {args.writer.path}")


if __name__ == "__main__":
    main()
