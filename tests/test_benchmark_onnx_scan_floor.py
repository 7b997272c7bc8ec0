"""tools/benchmark_onnx_scan_floor.py on test_vmamba against timm's test_vit: the three graphs of the model (as
exported, SS2D core at its floor, no core) with their node counts, milliseconds and ratios to the baseline of the
same run; the stand-ins fit where the core was; a model without a d_state-1 core is refused; the rows render."""

from __future__ import annotations

import pytest
import timm
import torch

from vizoo.utils.results import read_rows


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("benchmark_onnx_scan_floor")


def test_three_graphs_ratios_and_rendering(tool, load_tool, tmp_path):
    out = tmp_path / "onnx_scan_floor_cpu4.csv"
    argv = ["test_vmamba", "--baselines", "test_vit", "--rounds", "1", "--threads", "1", "--out", str(out)]
    assert tool.main(argv) == 0
    rows = read_rows(out)
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("test_vmamba", "exported"),
        ("test_vmamba", "core_floor"),
        ("test_vmamba", "no_core"),
        ("test_vit", "exported"),
    ]
    assert {r["threads"] for r in rows} == {"1"}
    graphs = {r["variant"]: r for r in rows[:3]}
    # the floor drops passes of the faithful core, and the stand-in drops the core
    assert int(graphs["no_core"]["nodes"]) < int(graphs["core_floor"]["nodes"]) < int(graphs["exported"]["nodes"])
    base_ms = float(rows[3]["ms"])
    assert float(rows[3]["vs_test_vit"]) == 1.0
    for r in rows[:3]:
        assert float(r["ms"]) > 0
        assert float(r["vs_test_vit"]) == pytest.approx(float(r["ms"]) / base_ms, rel=1e-4)
    text, _ = load_tool("benchmark_docs").render(tmp_path)
    assert "## onnxruntime floor of the SS2D core (cpu4)" in text
    floor_line = next(line for line in text.splitlines() if line.startswith("| test_vmamba | SS2D core at its floor |"))
    assert floor_line.rstrip(" |").split(" | ")[2] == graphs["core_floor"]["nodes"]
    baseline_line = next(line for line in text.splitlines() if line.startswith("| test_vit (baseline) |"))
    assert baseline_line.rstrip(" |").split(" | ")[-1] == "1.00x"


def test_stand_ins_fit_where_the_core_was(tool):
    """Each stand-in maps every core input of the model, (b, d, h, w), to the core's output shape, (b, h·w, d)."""
    model = timm.create_model("test_vmamba").eval()
    original = tool.SS2D._cross_scan
    shapes = {}
    for name, core in (("core", original), ("floor", tool.floor_core), ("none", tool.no_core)):
        seen = shapes.setdefault(name, [])

        def recording(ss2d, x, core=core, seen=seen):
            y = core(ss2d, x)
            seen.append((tuple(x.shape), tuple(y.shape)))
            return y

        with tool.core_replaced_by(recording), torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_classes)
        assert tool.SS2D._cross_scan is original  # put back after the block
    assert len(shapes["core"]) == len(tool.single_state_cores(model)) > 0
    assert shapes["floor"] == shapes["core"] == shapes["none"]
    assert all(y == (b, h * w, d) for (b, d, h, w), y in shapes["core"])


def test_model_without_a_single_state_core_is_refused(tool, capsys):
    with pytest.raises(SystemExit):
        tool.main(["test_efficient_vmamba", "--out", "unused.csv"])
    assert "test_efficient_vmamba has no d_state-1 SS2D core" in capsys.readouterr().err
