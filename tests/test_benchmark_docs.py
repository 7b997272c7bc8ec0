"""tools/benchmark_docs.py: docs/benchmarks.md is what results/*.csv render, a changed measurement makes ``--check``
fail, and every results file a benchmark tool writes renders into a table (synthetic rows, tmp folders)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from vizoo.utils.results import ResultsWriter

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def docs(load_tool):
    return load_tool("benchmark_docs")


def check(docs, results: Path, page: Path) -> int:
    return docs.main(["--check", "--results", str(results), "--docs", str(page)])


def test_page_matches_the_results_in_the_repo(docs):
    assert check(docs, ROOT / "results", ROOT / "docs" / "benchmarks.md") == 0


def test_page_images_exist(docs):
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    _, plots = docs.render(ROOT / "results")
    for name in plots:
        assert f"(img/{name})" in text
        assert (ROOT / "docs" / "img" / name).read_bytes()[:8] == PNG_MAGIC


def test_a_changed_row_fails_the_check(docs, tmp_path, capsys):
    results, page = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    shutil.copytree(ROOT / "results", results)
    assert docs.main(["--results", str(results), "--docs", str(page)]) == 0
    assert check(docs, results, page) == 0
    memory = results / "memory_cpu2.csv"
    with open(memory, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[-1]["peak_rss_mb"] = str(float(rows[-1]["peak_rss_mb"]) + 1000)  # the last row is of the latest run
    with open(memory, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert check(docs, results, page) == 1
    captured = capsys.readouterr()
    assert "out of date" in captured.err and "-|" in captured.out


def _synthetic_results(folder: Path, load_tool) -> None:
    """One small file of each kind that a benchmark tool writes, with two runs of the latency benchmark."""
    pruning, kernels, gpu = load_tool("benchmark_pruning"), load_tool("benchmark"), load_tool("benchmark_kernels")
    from vizoo.benchmark import RESULT_COLUMNS

    for run, factor in (("2026-01-01T00:00:00Z", 1.0), ("2026-01-02T00:00:00Z", 1.5)):
        w = ResultsWriter(folder / "latency_resolution_cpu4.csv", RESULT_COLUMNS, command="vizoo bench m", run=run)
        for size, scale in ((224, 1.0), (448, 4.0)):
            w.write(dict(model="deit_small_patch16_224", role="baseline", size=size, latency_ms=20.0 * scale))
            w.write(dict(model="fast_net", role="model", size=size, latency_ms=10.0 * scale / factor))
    w = ResultsWriter(folder / "onnx_cpu4.csv", load_tool("benchmark_onnx").COLUMNS, command="python onnx")
    w.write(dict(model="net", input="3x224x224", nodes=10, parity=1e-6, eager_ms=20.0, ort_ms=10.0))
    w.write(dict(ort_over_eager=0.5, round_min=0.4, round_max=0.6, model="net2", input="3x8x8", eager_ms=1.0))
    ratios = ("eager_vs_vit_small_patch16_224", "ort_vs_vit_small_patch16_224")
    clip_columns = ("model", "role", "size", "batch", "tokens", "eager_img_s", "ort_img_s", "parity", "error", *ratios)
    w = ResultsWriter(folder / "clip_towers_cpu4.csv", clip_columns, command="python clip")
    vit = dict(model="vit_small_patch16_224", role="baseline", batch=1, parity=1e-6)
    w.write(dict(vit, size=224, tokens=196, eager_img_s=10.0, ort_img_s=20.0, **dict.fromkeys(ratios, 1.0)))
    w.write(dict(vit, size=448, tokens=784, eager_img_s=2.0, ort_img_s=4.0, **dict.fromkeys(ratios, 1.0)))
    tower = dict(model="tower", role="model", batch=1, parity=2e-6)
    w.write(dict(tower, size=224, tokens=49, eager_img_s=5.0, ort_img_s=30.0, **dict(zip(ratios, (0.5, 1.5)))))
    w.write(dict(tower, size=448, error="ValueError: tower takes multiples of 64"))
    w = ResultsWriter(folder / "pruning_cpu4.csv", pruning.COLUMNS, command="python pruning")
    deit = dict(section="deit", model="deit", batch=1)
    w.write(dict(deit, method="dense", params=100, macs=1000, latency_ms=40.0))
    w.write(dict(deit, method="block", setting=0.5, params=50, macs=500, latency_ms=20.0))
    digits = dict(section="digits", model="vit", batch=64, train_epochs=2)
    w.write(dict(digits, method="dense", params=10, macs=100, latency_ms=8.0, accuracy=0.9))
    w.write(dict(digits, method="tome", setting=8, finetune_epochs=0, macs=25, latency_ms=2.0, accuracy=0.8))
    w.write(dict(digits, method="block", setting=0.5, finetune_epochs=1, macs=50, latency_ms=4.0, accuracy=0.85))
    w = ResultsWriter(folder / "kernels_cpu_cpu4.csv", kernels.COLUMNS, command="python kernels")
    w.write(dict(kernel="scan", shape="b=1", repeats=3, reference_ms=30.0, torch_ms=3.0, speedup=10.0))
    rows = [
        gpu.Row("scan", 1, "triton", {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}, {"fwd": 700.0, "fwd+bwd": 500.0}),
        gpu.Row("scan", 1, "torch", ms={"fwd+bwd": 12.0}),
    ]
    models = {"vmamba (triton)": dict(inference=300.0), "swin_tiny_patch4_window7_224": dict(inference=200.0)}
    gpu.write_results(folder, "cpu16-h100", rows, models, copy=1000.0)
    speed = load_tool("benchmark_cpu_speed")
    columns = [*speed.COLUMNS, *speed.ratio_columns(list(speed.MODES), ["swin_tiny_patch4_window7_224"])]
    w = ResultsWriter(folder / "cpu_speed_cpu4.csv", columns, command="python speed")
    swin = dict(model="swin_tiny_patch4_window7_224", role="baseline", family="timm", size=224, eager_b1_ms=100.0)
    w.write(dict(swin, compiled_b1_ms=50.0, eager_b1_vs_swin_tiny_patch4_window7_224=1.0))
    net = dict(model="ssm", role="model", family="vmamba", size=224, eager_b1_ms=150.0, compiled_b1_ms=75.0)
    w.write(dict(net, compile_s=30.0, eager_b1_vs_swin_tiny_patch4_window7_224=1.5, error="ort_b1: ValueError: no"))


def test_every_kind_of_results_file_renders(docs, load_tool, tmp_path):
    results = tmp_path / "results"
    _synthetic_results(results, load_tool)
    shutil.copy(ROOT / "results" / "memory_cpu2.csv", results)
    text, plots = docs.render(results)
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert titles == [
        "## Latency against resolution (cpu4)",
        "## onnxruntime against eager PyTorch (cpu4)",
        "## CLIP image towers (cpu4)",
        "## Pruning (cpu4)",
        "## Kernels on CPU (cpu4)",
        "## GPU kernels (cpu16-h100)",
        "## Models on GPU (cpu16-h100)",
        "## Training memory (cpu2)",
        "## CPU speed: eager, training, compiled, onnxruntime (cpu4)",
    ]
    lines = text.splitlines()
    fast = next(line for line in lines if line.startswith("| fast_net |"))
    assert fast.split(" | ")[1:3] == ["3.00x", "3.00x"]  # the latest run: 20 / (10 / 1.5)
    assert "fast_net at 224²: 2.00-3.00 over 2 runs" in text
    assert "run 2026-01-02T00:00:00Z" in text and "`vizoo bench m`" in text
    assert "| net2 | 3x8x8 | 0.50x | 0.40-0.60 |" in text
    assert "| block pruning, sparsity 0.5 | 1 | 0.50 | 0.50 | 2.00x | 20.0 | 40.0 |" in text
    assert "| ToMe, r = 8 | 80.0% | -10.0 pt | 0.25 | 4.00x |" in text
    assert "| ViT-S/16 (baseline) | 448² | 784 | 2.0 | 4.0 | 1.00x | 1.00x | 1.0e-06 |" in text
    assert "| tower | 224² | 49 | 5.0 | 30.0 | 0.50x | 1.50x | 2.0e-06 |" in text
    assert "Not measured: `tower at 448²: ValueError: tower takes multiples of 64`." in text
    assert "| scan | b=1 | 10.0x |" in text
    assert "| scan | 1 | triton | 4.0x | 70% | 50% |" in text
    assert "| vmamba (triton) | 1.50x | 300 |" in text
    assert "| vanilla_vmamba_tiny | train | 1 | 224² | recompute | ok | " in text
    assert "| ssm | vmamba | 224² | 1.50x |" in text and "| ssm | 150.0 | 75.0 | 30 | 2.00x |" in text
    assert "- not measured: ssm: ort_b1: ValueError: no" in text
    assert set(plots) == {
        "latency_resolution_cpu4.png",
        "onnx_cpu4.png",
        "clip_towers_cpu4.png",
        "pruning_accuracy_cpu4.png",
    }

    page = tmp_path / "docs" / "benchmarks.md"
    assert docs.main(["--results", str(results), "--docs", str(page)]) == 0
    images = {p.name: p.read_bytes() for p in (page.parent / "img").iterdir()}
    assert set(images) == set(plots) and all(b[:8] == PNG_MAGIC for b in images.values())
    assert docs.main(["--results", str(results), "--docs", str(page)]) == 0  # the same bytes again
    assert {p.name: p.read_bytes() for p in (page.parent / "img").iterdir()} == images


def test_onnx_tool_rows_render(docs, load_tool, tmp_path):
    """benchmark_onnx appends one row per model to the file it is given, which renders into the onnx table."""
    out = tmp_path / "results" / "onnx_cpu4.csv"
    tool = load_tool("benchmark_onnx")
    assert tool.main(["test_vmamba", "--rounds", "1", "--out", str(out)]) == 0
    assert tool.main(["test_vmamba", "--parity-only", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["test_vmamba", "test_vmamba"] and rows[0]["run"] <= rows[1]["run"]
    assert float(rows[0]["ort_over_eager"]) > 0 and rows[1]["ort_over_eager"] == ""
    assert "test_vmamba" in rows[0]["command"] and rows[0]["machine"].startswith("cpu")
    text, _ = docs.render(out.parent)
    assert "| test_vmamba | 3x64x64 |" in text
