"""The model table (vizoo/models.csv, docs/models.md) against the registry it is generated from.

Every model's params, family, input size and weights source are checked through a meta-device build (no weights
allocated or initialized); MACs need a real forward pass, so they are checked for every ``test_`` model and for
the smallest real variant of a few families. A failure here means: run ``python tools/model_table.py``.
"""

import dataclasses

import pytest

import vizoo
from vizoo import model_table
from vizoo.model_table import Row

ROWS = model_table.load_rows()
BY_NAME = {r.model: r for r in ROWS}
# Small real variants (under 0.6 GMACs) of three families, counted live at their default input size.
REAL_MACS = ["mobilemamba_t2", "cas_vit_xs", "pvt_v2_b0_ecoformer"]


def test_table_lists_exactly_the_registered_models():
    assert {r.model for r in ROWS} == set(vizoo.list_models())
    assert len(ROWS) == len(BY_NAME)


def test_files_are_what_rendering_the_table_gives():
    """The CSV is in canonical form and docs/models.md is exactly the Markdown that the CSV renders to."""
    assert model_table.CSV_PATH.read_text() == model_table.render_csv(ROWS)
    assert model_table.DOCS_PATH.read_text() == model_table.render_markdown(ROWS)
    assert "python tools/model_table.py" in model_table.DOCS_PATH.read_text().split("\n## ")[0]


def test_params_family_input_size_and_weights_match_a_meta_build():
    family = model_table.families()
    live = [model_table.measure(name, family[name], device="meta") for name in vizoo.list_models()]
    stored = [dataclasses.replace(BY_NAME[r.model], macs=None) for r in live if r.model in BY_NAME]
    assert model_table.compare(live, stored) == []


@pytest.mark.parametrize("name", [*vizoo.list_models("test_*"), *REAL_MACS])
def test_macs_match_a_live_count(name):
    assert name in BY_NAME, f"{name} is missing from the model table"
    assert model_table.compare([model_table.measure(name)], [BY_NAME[name]]) == []


def test_compare_reports_a_table_that_drifted():
    """Edited, dropped and stray rows each show in the report, and the edited table renders to a different page."""
    drifted = [dataclasses.replace(r, params=r.params + 1) if r.model == "test_vmamba" else r for r in ROWS]
    drifted = [r for r in drifted if r.model != "test_vssd"]
    drifted.append(Row("stray_model", "vmamba", 1, None, (3, 224, 224), ""))
    report = model_table.compare(ROWS, drifted)
    assert len(report) == 3
    assert "test_vssd: registered but missing from the table" in report
    assert "stray_model: in the table but not registered" in report
    params = BY_NAME["test_vmamba"].params
    assert f"test_vmamba: params is {params + 1} in the table, the registry gives {params}" in report
    assert model_table.render_markdown(drifted) != model_table.render_markdown(ROWS)


def test_csv_round_trips_uncounted_macs_and_weights():
    rows = [
        Row("a", "fam", 10, None, (3, 64, 64), ""),
        Row("b", "fam", 2_000_000, 3_000_000_000, (3, 224, 224), "https://example.org/b.pth"),
        Row("c", "other", 5, 7, (3, 32, 48), "org/c"),
    ]
    assert model_table.read_csv(model_table.render_csv(rows)) == rows
    page = model_table.render_markdown(rows)
    assert "| a | 0.00 | n/a | 3x64x64 | - |" in page
    assert "| b | 2.00 | 3.000 | 3x224x224 | [b.pth](https://example.org/b.pth) |" in page
    assert "[hf-hub:org/c](https://huggingface.co/org/c)" in page
    assert page.index("## fam") < page.index("## other")
    with pytest.raises(ValueError, match="columns"):
        model_table.read_csv("name,params\na,1\n")


def test_check_mode_of_the_tool(load_tool, tmp_path, monkeypatch, capsys):
    """``tools/model_table.py --check`` passes on current files and reports a stale CSV and docs page (exit 1);
    the registry's rows are the stored ones here, so no model is built."""
    tool = load_tool("model_table")
    monkeypatch.setattr(model_table, "measure_all", lambda callback=None: list(ROWS))
    csv_path, docs = tmp_path / "models.csv", tmp_path / "models.md"
    argv = ["--csv", str(csv_path), "--docs", str(docs)]
    assert tool.main(argv) == 0
    assert (
        csv_path.read_text() == model_table.render_csv(ROWS) and docs.read_text() == model_table.DOCS_PATH.read_text()
    )
    assert tool.main([*argv, "--check"]) == 0

    csv_path.write_text(model_table.render_csv(ROWS[1:]))
    docs.write_text(docs.read_text().replace("| test_vmamba |", "| test_vmamba_old |"))
    capsys.readouterr()
    assert tool.main([*argv, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"{ROWS[0].model}: registered but missing from the table" in out
    assert "models.md: 2 lines differ" in out and "+| test_vmamba |" in out
