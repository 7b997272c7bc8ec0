"""vizoo.benchmark: timing, slope, table and plot (tiny models only, CPU)."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import vizoo  # noqa: F401  (registers the vizoo models)
from vizoo.benchmark import (
    BenchRow,
    bench_models,
    format_slopes,
    format_table,
    latency_slope,
    measure_latency,
    model_slopes,
    plot_latency,
)
from vizoo.utils import results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows() -> list[BenchRow]:
    rows = [BenchRow("base_net", s, role="baseline", latency_ms=2e-4 * s * s) for s in (64, 128, 256)]
    for s in (64, 128, 256):
        lat = 1e-4 * s * s
        rows.append(BenchRow("fast_net", s, latency_ms=lat, throughput=1e3 / lat, ratios={"base_net": 2.0}))
    return rows


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_latency_slope_recovers_exponent(exponent):
    pixels = [32**2, 64**2, 224**2, 512**2, 1024**2]
    noise = [1.02, 0.98, 1.01, 0.99, 1.0]
    latencies = [3e-3 * p**exponent * n for p, n in zip(pixels, noise, strict=True)]
    assert latency_slope(pixels, latencies) == pytest.approx(exponent, abs=0.02)


def test_latency_slope_needs_two_sizes():
    with pytest.raises(ValueError, match="two distinct"):
        latency_slope([100], [1.0])
    with pytest.raises(ValueError, match="positive"):
        latency_slope([100, 200], [1.0, 0.0])


def test_measure_latency_tiny_module():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    stats = measure_latency(model, (3, 16, 16), batch_size=4, warmup=1, min_time_s=0.05)
    assert stats["latency_ms"] > 0 and stats["throughput"] > 0
    assert stats["iters"] >= 3
    assert stats["throughput"] == pytest.approx(4 * 1e3 / stats["latency_ms"])
    assert not model.training  # measured in eval mode


def test_measure_latency_rejects_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        measure_latency(nn.Identity(), 8, device="cuda")


def test_format_table_and_slopes():
    rows = _rows()
    table = format_table(rows)
    assert "fast_net" in table and "base_net (baseline)" in table
    assert "2.00x" in table
    slopes = model_slopes(rows)
    assert slopes["fast_net"] == pytest.approx(1.0) and slopes["base_net"] == pytest.approx(1.0)
    assert "fast_net: 1.00" in format_slopes(rows)


def test_bench_models_ratio_and_unavailable_baseline():
    # test_vit has 16-pixel patches: it cannot run at 8x8, which must be recorded, not raised.
    rows = bench_models(["test_resnet"], [8, 32], baselines=["test_vit"], warmup=1, min_time_s=0.02)
    by_key = {(r.model, r.size): r for r in rows}
    assert set(by_key) == {("test_vit", 8), ("test_vit", 32), ("test_resnet", 8), ("test_resnet", 32)}
    assert by_key[("test_vit", 8)].latency_ms is None and "test_vit" in by_key[("test_vit", 8)].error
    small, big = by_key[("test_resnet", 8)], by_key[("test_resnet", 32)]
    assert small.ratios["test_vit"] is None and "patch" in small.unavailable["test_vit"]
    ratio = big.ratios["test_vit"]
    assert ratio is not None and math.isclose(ratio, by_key[("test_vit", 32)].latency_ms / big.latency_ms)
    assert "unavailable: test_vit @ 8" in format_table(rows)


def test_plot_latency_writes_png(tmp_path):
    path = plot_latency(_rows(), tmp_path / "sub" / "latency.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_bench_models_in_interleaved_rounds():
    calls = []
    rows = bench_models(
        ["test_resnet"], [32], baselines=["test_vit"], warmup=1, min_time_s=0.03, rounds=3,
        callback=lambda label, i, total: calls.append((label, total)),
    )  # fmt: skip
    by_model = {r.model: r for r in rows}
    assert [label for label, _ in calls[:-1]] == ["test_vit @ 32", "test_resnet @ 32"] * 3 and calls[0][1] == 6
    resnet, vit = by_model["test_resnet"], by_model["test_vit"]
    assert resnet.iters >= 9 and resnet.ratios["test_vit"] == pytest.approx(vit.latency_ms / resnet.latency_ms)
    assert resnet.throughput == pytest.approx(1e3 / resnet.latency_ms)
    with pytest.raises(ValueError, match="rounds"):
        bench_models(["test_resnet"], [32], rounds=0)


# ------------------------------------------------------------------------------------------- vizoo.utils.results


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("Tesla T4", "t4"),
        ("NVIDIA L4", "l4"),
        ("", "gpu"),
    ],
)
def test_gpu_slug(name, slug):
    assert results.gpu_slug(name) == slug


def test_machine_tag_and_paths(monkeypatch):
    monkeypatch.setattr(results, "cpu_count", lambda: 16)
    assert results.machine_tag() == "cpu16" == results.machine_tag("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert results.machine_tag("cuda") == "cpu16-h100"
    path = results.results_path("latency_resolution", "cpu16-h100", "out")
    assert path == Path("out/latency_resolution_cpu16-h100.csv")
    assert results.split_name(path) == ("latency_resolution", "cpu16-h100")
    assert results.results_path("onnx").name == "onnx_cpu16.csv"
    with pytest.raises(ValueError, match="machine tag"):
        results.results_path("onnx", "my_host")


def test_results_writer_appends_runs_and_widens_the_header(tmp_path):
    path = tmp_path / "sub" / "bench_cpu2.csv"
    run = "2026-01-01T00:00:00Z"
    first = results.ResultsWriter(path, ["model", "ms"], machine="cpu2", command="python a.py", run=run)
    first.write(dict(model="a", ms=1.23456789))
    first.write(dict(model="b", ms=None))
    second = results.ResultsWriter(path, ["model", "ms", "note"], machine="cpu2", threads=3, command="python a.py -x")
    second.write(dict(model="a", ms=2.0, note="n"))
    rows = results.read_rows(path)
    assert list(rows[0]) == [*results.COMMON_COLUMNS, "model", "ms", "note"]
    assert [(r["model"], r["ms"], r["note"]) for r in rows] == [("a", "1.23457", ""), ("b", "", ""), ("a", "2", "n")]
    assert rows[0]["run"] == "2026-01-01T00:00:00Z" and rows[0]["date"] == "2026-01-01"
    assert rows[2]["run"] == second.run > rows[0]["run"] and rows[2]["threads"] == "3"
    assert rows[0]["threads"] == str(torch.get_num_threads()) and rows[0]["torch"] == torch.__version__.split("+")[0]
    assert rows[2]["command"] == "python a.py -x" and second.rows_written == 1
    with pytest.raises(KeyError, match="undeclared|not declared"):
        second.write(dict(model="c", typo=1))
    assert results.read_rows(tmp_path / "missing.csv") == []


def test_command_line_quotes():
    assert results.command_line(["a b", "--x", "*"], program="vizoo") == "vizoo 'a b' --x '*'"


def test_vizoo_bench_appends_results(tmp_path, capsys):
    from vizoo.cli import main

    out = tmp_path / "lat.csv"
    argv = ["bench", "test_vmamba", "--sizes", "32", "--baselines", "test_resnet", "--warmup", "1"]
    argv += ["--min-time", "0.02", "--rounds", "2", "--results", str(out)]
    assert main(argv) == 0 and main(argv) == 0
    rows = results.read_rows(out)
    assert [(r["model"], r["role"], r["size"]) for r in rows] == [
        ("test_resnet", "baseline", "32"),
        ("test_vmamba", "model", "32"),
    ] * 2  # noqa: E501
    assert all(float(r["latency_ms"]) > 0 and r["dtype"] == "float32" and r["error"] == "" for r in rows)
    assert rows[0]["command"] == "vizoo bench test_vmamba --sizes 32 --baselines test_resnet --min-time 0.02 " \
        "--rounds 2 --results"  # fmt: skip
    assert f"wrote 2 rows to {out}" in capsys.readouterr().out


def test_results_go_to_the_folder_the_environment_names(tmp_path, monkeypatch):
    from vizoo.utils.results import RESULTS_DIR, results_path

    monkeypatch.setenv("VIZOO_RESULTS_DIR", str(tmp_path))
    assert results_path("onnx", "cpu2") == tmp_path / "onnx_cpu2.csv"
    monkeypatch.delenv("VIZOO_RESULTS_DIR")
    assert results_path("onnx", "cpu2") == RESULTS_DIR / "onnx_cpu2.csv"
