"""The model table (vizoo/models.csv, the generated regions of docs/models.md and README.md) against the registry it
is generated from.

Every model's params, family, input size, weights source and paper figures are checked through a meta-device build
(no weights allocated or initialized); MACs need a real forward pass, so they are checked for every ``test_`` model
and for the smallest real variant of a few families. A failure here means: run ``python tools/model_table.py``.
"""

import dataclasses
import shutil

import pytest
import timm

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
    """The CSV is in canonical form and the generated regions of docs/models.md are exactly what the CSV renders to."""
    assert model_table.CSV_PATH.read_text() == model_table.render_csv(ROWS)
    docs = model_table.DOCS_PATH.read_text()
    assert model_table.read_region(docs, model_table.TABLE_MARKERS) == model_table.render_markdown(ROWS)
    assert model_table.read_region(docs, model_table.SUMMARY_MARKERS) == model_table.render_family_summary(ROWS, "")
    assert docs == model_table.fill_regions(docs, ROWS, "")
    assert "python tools/model_table.py" in docs.split(model_table.SUMMARY_MARKERS[0])[0]


def test_readme_summary_is_current():
    """README.md's summary region, where the README has the markers, is what the table renders to."""
    readme = model_table.README_PATH.read_text()
    if model_table.read_region(readme, model_table.SUMMARY_MARKERS) is None:
        pytest.skip("README.md has no model-summary markers")
    assert readme == model_table.fill_regions(readme, ROWS, "docs/models.md")


def test_paper_columns_are_the_cfgs_figures():
    """Each row's paper figures are its pretrained cfg's (read from the registry, no model built), and the page
    shows them."""
    for r in ROWS:
        figures = model_table.paper_figures(r.model)
        assert {c: getattr(r, c) for c in model_table.PAPER_COLUMNS} == {
            c: figures.get(c) for c in model_table.PAPER_COLUMNS
        }, r.model
        assert r.paper == timm.get_pretrained_cfg(r.model).paper_ids
    row = BY_NAME["vmamba_tiny_s1l8"]
    assert (row.paper, row.paper_params_m, row.paper_gmacs, row.paper_top1) == ("arXiv:2401.10166", 30, 4.9, 82.6)
    row_text = "| vmamba_tiny_s1l8 | 30.25 | 30 | 4.876 | 4.9 | 82.6 | 3x224x224 | [vssm1_tiny"
    assert row_text in model_table.DOCS_PATH.read_text()
    assert BY_NAME["vim_tiny"].paper_gmacs is None and BY_NAME["lightnet_tiny"].paper_params_m is None


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
    drifted = [dataclasses.replace(r, paper_gmacs=5.0) if r.model == "vmamba_tiny_s1l8" else r for r in drifted]
    drifted = [r for r in drifted if r.model != "test_vssd"]
    drifted.append(Row("stray_model", "vmamba", 1, None, (3, 224, 224), ""))
    report = model_table.compare(ROWS, drifted)
    assert len(report) == 4
    assert "test_vssd: registered but missing from the table" in report
    assert "stray_model: in the table but not registered" in report
    params = BY_NAME["test_vmamba"].params
    assert f"test_vmamba: params is {params + 1} in the table, the registry gives {params}" in report
    assert "vmamba_tiny_s1l8: paper_gmacs is 5.0 in the table, the registry gives 4.9" in report
    assert model_table.render_markdown(drifted) != model_table.render_markdown(ROWS)


def test_csv_round_trips_uncounted_macs_weights_and_paper_figures():
    rows = [
        Row("a", "fam", 10, None, (3, 64, 64), ""),
        Row("b", "fam", 2_000_000, 3_000_000_000, (3, 224, 224), "https://example.org/b.pth", "arXiv:1", 30, 4.9, 82.6),
        Row("c", "other", 5, 7, (3, 32, 48), "org/c", "arXiv:2", 3.2, 0.255, None),
    ]
    text = model_table.render_csv(rows)
    assert model_table.read_csv(text) == rows
    assert "https://example.org/b.pth,arXiv:1,30,4.9,82.6\n" in text  # figures as the cfg writes them: 30, not 30.0
    assert isinstance(model_table.read_csv(text)[1].paper_params_m, int)
    page = model_table.render_markdown(rows)
    assert "| a | 0.00 | - | n/a | - | - | 3x64x64 | - |" in page
    assert "| b | 2.00 | 30 | 3.000 | 4.9 | 82.6 | 3x224x224 | [b.pth](https://example.org/b.pth) |" in page
    assert "[hf-hub:org/c](https://huggingface.co/org/c)" in page
    assert "Paper: [arXiv:1](https://arxiv.org/abs/1)." in page
    assert page.index("### fam") < page.index("### other")
    with pytest.raises(ValueError, match="columns"):
        model_table.read_csv("name,params\na,1\n")


def test_family_summary_gives_one_line_per_family_without_test_models():
    rows = [
        Row("test_a", "fam", 10, 20, (3, 64, 64), "", "arXiv:1"),
        Row("a_s", "fam", 2_000_000, 1_000_000_000, (3, 224, 224), "", "arXiv:1", 2, 1.0, 70.5),
        Row("a_l", "fam", 12_340_000, 4_500_000_000, (3, 224, 224), "", "arXiv:1", 12, 4.4, 80.1),
        Row("b", "other", 5_000_000, None, (3, 224, 224), "", "", None, None, None),
        Row("test_c", "tests_only", 1, 1, (3, 64, 64), ""),
    ]
    summary = model_table.render_family_summary(rows)
    line = "| [fam](docs/models.md#fam) | 2 | 2.0–12.3 | 1.00–4.50 | 70.5–80.1 | [arXiv:1](https://arxiv.org/abs/1) |"
    assert line in summary
    assert "| [other](docs/models.md#other) | 1 | 5.0 | - | - | - |" in summary
    assert "tests_only" not in summary
    assert "](#fam)" in model_table.render_family_summary(rows, "")


def test_regions_are_replaced_and_the_prose_around_them_kept():
    begin, end = model_table.TABLE_MARKERS
    page = f"# Title\n\nprose before\n{begin}\nstale\n{end}\nprose after\n"
    filled = model_table.replace_region(page, model_table.TABLE_MARKERS, "| new |\n")
    assert filled == f"# Title\n\nprose before\n{begin}\n\n| new |\n\n{end}\nprose after\n"
    assert model_table.read_region(filled, model_table.TABLE_MARKERS) == "| new |\n"
    assert model_table.read_region(page, model_table.SUMMARY_MARKERS) is None
    assert model_table.fill_regions("no markers here\n", ROWS) == "no markers here\n"
    with pytest.raises(ValueError, match="no <!-- model-summary:begin -->"):
        model_table.replace_region(page, model_table.SUMMARY_MARKERS, "x")
    with pytest.raises(ValueError, match="exactly one"):
        model_table.read_region(f"{end}\n{begin}\n", model_table.TABLE_MARKERS)
    with pytest.raises(ValueError, match="exactly one"):
        model_table.read_region(f"{begin}\n", model_table.TABLE_MARKERS)


def test_check_mode_of_the_tool(load_tool, tmp_path, monkeypatch, capsys):
    """``tools/model_table.py --check`` passes on current files and reports a stale CSV, docs page and README summary
    (exit 1); the registry's rows are the stored ones here, so no model is built."""
    tool = load_tool("model_table")
    monkeypatch.setattr(model_table, "measure_all", lambda callback=None: list(ROWS))
    csv_path, docs, readme = tmp_path / "models.csv", tmp_path / "models.md", tmp_path / "README.md"
    shutil.copy(model_table.DOCS_PATH, docs)
    readme.write_text("# vizoo\n\n" + "\n".join(model_table.SUMMARY_MARKERS) + "\n\nmore\n")
    argv = ["--csv", str(csv_path), "--docs", str(docs), "--readme", str(readme)]
    assert tool.main(argv) == 0
    assert csv_path.read_text() == model_table.render_csv(ROWS)
    assert docs.read_text() == model_table.DOCS_PATH.read_text()
    assert model_table.read_region(readme.read_text(), model_table.SUMMARY_MARKERS) == (
        model_table.render_family_summary(ROWS, "docs/models.md")
    )
    assert tool.main([*argv, "--check"]) == 0

    csv_path.write_text(model_table.render_csv(ROWS[1:]))
    docs.write_text(docs.read_text().replace("| test_vmamba |", "| test_vmamba_old |"))
    readme.write_text(readme.read_text().replace("[vmamba]", "[vmamba_old]"))
    capsys.readouterr()
    assert tool.main([*argv, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"{ROWS[0].model}: registered but missing from the table" in out
    assert "models.md: 2 lines differ" in out and "+| test_vmamba |" in out
    assert "README.md: 2 lines differ" in out


def test_tool_rewrites_only_the_regions(load_tool, tmp_path, monkeypatch):
    """Hand-written prose around the regions survives a rewrite byte for byte, a README without markers is left
    untouched, a docs page without the table markers is refused, and ``--stored`` builds no model."""
    tool = load_tool("model_table")
    monkeypatch.setattr(model_table, "measure_all", lambda callback=None: list(ROWS))
    csv_path, docs, readme = tmp_path / "models.csv", tmp_path / "models.md", tmp_path / "README.md"
    original = model_table.DOCS_PATH.read_text()
    edited = original.replace("## Families", "## Families\n\nA new hand-written paragraph.")
    edited = edited.replace("| vmamba_tiny_s1l8 |", "| vmamba_tiny_s1l8_stale |")
    docs.write_text(edited)
    readme.write_text("# vizoo\n\nno markers\n")
    argv = ["--csv", str(csv_path), "--docs", str(docs), "--readme", str(readme)]
    assert tool.main(argv) == 0
    assert docs.read_text() == original.replace("## Families", "## Families\n\nA new hand-written paragraph.")
    assert readme.read_text() == "# vizoo\n\nno markers\n"

    def no_build(callback=None):
        raise AssertionError("--stored must not build models")

    monkeypatch.setattr(model_table, "measure_all", no_build)
    docs.write_text(edited)
    assert tool.main([*argv, "--stored"]) == 0 and tool.main([*argv, "--stored", "--check"]) == 0
    assert model_table.read_region(docs.read_text(), model_table.TABLE_MARKERS) == model_table.render_markdown(ROWS)

    docs.write_text("# Models\n\nprose only\n")
    assert tool.main([*argv, "--stored"]) == 1
    assert docs.read_text() == "# Models\n\nprose only\n"
