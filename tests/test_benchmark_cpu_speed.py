"""tools/benchmark_cpu_speed.py on test_ models against timm's test_vit: one row per model with every mode's
milliseconds and its ratio to the baseline of the same mode and run; a mode a model fails is recorded in the row while
the other modes still run; and the rows render in docs/benchmarks.md."""

from __future__ import annotations

import pytest
import torch

from vizoo.utils.results import read_rows


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("benchmark_cpu_speed")


def test_all_modes_ratios_and_rendering(tool, load_tool, tmp_path):
    out = tmp_path / "cpu_speed_cpu4.csv"
    modes = ["eager_b1", "eager_b8", "train_b2", "ort_b1"]
    argv = ["test_cas_vit", "--baselines", "test_vit", "--modes", *modes, "--rounds", "1", "--threads", "1"]
    assert tool.main([*argv, "--out", str(out)]) == 0
    rows = {r["model"]: r for r in read_rows(out)}
    assert [(m, r["role"], r["family"]) for m, r in rows.items()] == [
        ("test_vit", "baseline", "timm"),
        ("test_cas_vit", "model", "cas_vit"),
    ]
    model, base = rows["test_cas_vit"], rows["test_vit"]
    assert model["threads"] == "1" and model["error"] == "" and model["compiled_b1_ms"] == ""
    for mode in modes:
        assert float(base[f"{mode}_vs_test_vit"]) == 1.0
        ratio = float(model[f"{mode}_ms"]) / float(base[f"{mode}_ms"])
        assert float(model[f"{mode}_vs_test_vit"]) == pytest.approx(ratio, rel=1e-4)
    assert float(model["parity"]) < 1e-4
    text, _ = load_tool("benchmark_docs").render(tmp_path)
    assert "## CPU speed: eager, training, compiled, onnxruntime (cpu4)" in text
    line = next(line for line in text.splitlines() if line.startswith("| test_cas_vit | cas_vit | 64² |"))
    assert line.rstrip(" |").split(" | ")[3:7] == [f"{float(model[f'{m}_vs_test_vit']):.2f}x" for m in modes]


def test_training_step_updates_weights_and_failed_mode_is_recorded(tool, tmp_path, monkeypatch):
    """The training mode really steps the optimizer; a model whose export fails keeps its other modes' figures."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))
    model.num_classes = 4
    before = model[0].weight.detach().clone()
    step = tool.runner("train_b2", model, 16, {"model": "m"}, tmp_path)
    step()
    assert not torch.equal(before, model[0].weight)

    def broken_export(*args, **kwargs):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr("vizoo.export.export_onnx", broken_export)
    out = tmp_path / "cpu_speed_cpu4.csv"
    argv = ["test_cas_vit", "--baselines", "test_vit", "--modes", "eager_b1", "ort_b1", "--rounds", "1"]
    assert tool.main([*argv, "--out", str(out)]) == 0
    row = {r["model"]: r for r in read_rows(out)}["test_cas_vit"]
    assert row["error"] == "ort_b1: RuntimeError: no exporter here" and row["ort_b1_ms"] == ""
    assert float(row["eager_b1_ms"]) > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_net"], "unknown vizoo model 'no_such_net'"),
        (["test_vmamba", "--baselines", "no_such_timm_net"], "unknown timm model"),
        (["test_vmamba", "--rounds", "0"], "must be positive"),
    ],
)
def test_bad_arguments(tool, argv, message, capsys):
    with pytest.raises(SystemExit):
        tool.main(argv)
    assert message in capsys.readouterr().err
