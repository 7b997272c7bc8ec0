"""vizoo.benchmark: timing, slope, table and plot (tiny models only, CPU)."""

import math

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
