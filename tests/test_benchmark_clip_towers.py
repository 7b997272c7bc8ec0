"""tools/benchmark_clip_towers.py on test_ towers against timm's test_vit at tiny sizes: one row per tower and size,
tokens per image, img/s of each runtime and ratios against the baseline of the same size and run; a size a tower
cannot take is a row with its error, not a failed run; and the rows render in docs/benchmarks.md."""

from __future__ import annotations

import pytest

from vizoo.utils.results import read_rows

pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("benchmark_clip_towers")


def by_model_and_size(rows):
    return {(r["model"], int(r["size"])): r for r in rows}


def test_eager_rows_tokens_and_ratios(tool, tmp_path):
    out = tmp_path / "clip_towers_cpu4.csv"
    argv = ["--models", "test_vmamba", "test_mlla", "--baselines", "test_vit", "--sizes", "32", "48"]
    assert tool.main([*argv, "--rounds", "1", "--no-onnx", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [(r["model"], r["size"], r["role"]) for r in rows] == [
        ("test_vit", "32", "baseline"),
        ("test_vmamba", "32", "model"),
        ("test_mlla", "32", "model"),
        ("test_vit", "48", "baseline"),
        ("test_vmamba", "48", "model"),
        ("test_mlla", "48", "model"),
    ]
    assert len({r["run"] for r in rows}) == 1 and "--no-onnx" in rows[0]["command"]
    cells = by_model_and_size(rows)
    # test_vit: 16 px patches, class token left out; the vizoo towers: their stride-32 final map
    assert [cells[("test_vit", s)]["tokens"] for s in (32, 48)] == ["4", "9"]
    assert cells[("test_vmamba", 32)]["tokens"] == cells[("test_mlla", 32)]["tokens"] == "1"
    base = float(cells[("test_vit", 32)]["eager_img_s"])
    assert float(cells[("test_vit", 32)]["eager_vs_test_vit"]) == 1.0
    for model in ("test_vmamba", "test_mlla"):
        row = cells[(model, 32)]
        assert float(row["eager_vs_test_vit"]) == pytest.approx(float(row["eager_img_s"]) / base, rel=1e-4)
        assert row["ort_img_s"] == row["ort_vs_test_vit"] == row["parity"] == ""
        # 48 is no multiple of the towers' stride 32: recorded, with what to do, while the ViT still ran at 48
        assert "multiples of 32" in cells[(model, 48)]["error"] and cells[(model, 48)]["eager_img_s"] == ""
    assert float(cells[("test_vit", 48)]["eager_img_s"]) > 0


def test_onnxruntime_rows_render(tool, load_tool, tmp_path):
    out = tmp_path / "clip_towers_cpu4.csv"
    argv = ["--models", "test_cas_vit", "--baselines", "test_vit", "--sizes", "32", "--rounds", "1", "--threads", "1"]
    assert tool.main([*argv, "--out", str(out)]) == 0
    cells = by_model_and_size(read_rows(out))
    row, base = cells[("test_cas_vit", 32)], cells[("test_vit", 32)]
    assert float(row["parity"]) < 1e-4 and float(base["parity"]) < 1e-4
    assert row["threads"] == "1"
    for runtime in ("eager", "ort"):
        ratio = float(row[f"{runtime}_img_s"]) / float(base[f"{runtime}_img_s"])
        assert float(row[f"{runtime}_vs_test_vit"]) == pytest.approx(ratio, rel=1e-4)
    assert float(row["ort_over_eager"]) == pytest.approx(float(row["ort_ms"]) / float(row["eager_ms"]), rel=1e-4)
    text, plots = load_tool("benchmark_docs").render(tmp_path)
    assert "## CLIP image towers (cpu4)" in text and set(plots) == {"clip_towers_cpu4.png"}
    line = next(line for line in text.splitlines() if line.startswith("| test_cas_vit | 32² |"))
    assert line.split(" | ")[6:8] == [
        f"{float(row['eager_vs_test_vit']):.2f}x",
        f"{float(row['ort_vs_test_vit']):.2f}x",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "no_such_net"], "unknown model 'no_such_net'"),
        (["--models", "test_vit"], "not a vizoo model"),
        (["--models", "test_vmamba", "--batch", "0"], "must be positive"),
    ],
)
def test_bad_arguments(tool, argv, message, capsys):
    with pytest.raises(SystemExit):
        tool.main(argv)
    assert message in capsys.readouterr().err
