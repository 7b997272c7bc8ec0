"""The model table: family, params, MACs, input size, weights source and the paper's figures of every registered
vizoo model.

Counting params and MACs means building every model and running a forward pass on each, which is far too slow for
``vizoo list``. So the table is computed once from the timm registry (``measure_all``), stored as ``vizoo/models.csv``
inside the package (an installed vizoo reads it too) and rendered into the generated regions of ``docs/models.md``
(and of ``README.md`` where it has the summary markers): the text between ``<!-- model-table:begin -->`` and
``<!-- model-table:end -->`` (one table per family) and between ``<!-- model-summary:begin -->`` and
``<!-- model-summary:end -->`` (one line per family); the prose around them is hand-written and left alone.
``tools/model_table.py`` regenerates the CSV and the regions or checks them; ``tests/test_model_table.py`` checks
them against the registry.

The counts are the ones ``vizoo info`` prints: ``count_params`` and ``count_macs`` (``vizoo.utils.complexity``) on
the model built by ``timm.create_model(name, pretrained=False)``, MACs at the model's default input size. The CSV
keeps exact integers (``params``, ``macs``); the CLI and the Markdown page show them as M params and GMACs. The
paper's figures (``paper_params_m``, ``paper_gmacs``, ``paper_top1``) are copied from the variant's pretrained cfg in
the registry (``vizoo.backbones._builder.PaperCfg``), their one source, which the paper-table tests also read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import timm
import torch

import vizoo
from vizoo.backbones import FAMILIES
from vizoo.backbones._builder import PAPER_FIGURES
from vizoo.utils.complexity import count_macs, count_params

__all__ = [
    "CSV_PATH",
    "DOCS_PATH",
    "PAPER_COLUMNS",
    "PAPER_KEYS",
    "README_PATH",
    "SUMMARY_MARKERS",
    "TABLE_MARKERS",
    "Row",
    "compare",
    "create",
    "default_input_size",
    "families",
    "fill_regions",
    "format_gmacs",
    "format_params",
    "gmacs_text",
    "load_rows",
    "macs_or_none",
    "measure",
    "measure_all",
    "paper_figures",
    "read_csv",
    "read_region",
    "render_csv",
    "render_family_summary",
    "render_markdown",
    "replace_region",
    "weights_source",
]

CSV_PATH = Path(__file__).with_name("models.csv")
# The Markdown pages live in the source checkout (they are not installed with the package).
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "models.md"
README_PATH = Path(__file__).resolve().parents[1] / "README.md"

# The generated regions of a page: the per-family tables (docs/models.md) and the one-line-per-family summary
# (docs/models.md, and README.md where the lead puts the markers).
TABLE_MARKERS = ("<!-- model-table:begin -->", "<!-- model-table:end -->")
SUMMARY_MARKERS = ("<!-- model-summary:begin -->", "<!-- model-summary:end -->")

# The paper's figures a pretrained cfg may carry (``PaperCfg``); the first three are columns of the table.
PAPER_COLUMNS = ("paper_params_m", "paper_gmacs", "paper_top1")
PAPER_KEYS = PAPER_FIGURES

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One model of the table. ``macs`` is None where the forward pass could not be counted."""

    model: str
    family: str
    params: int
    macs: int | None
    input_size: tuple[int, int, int]
    weights: str  # the pretrained cfg's url or hf_hub_id; "" when vizoo ships no download for the model
    paper: str = ""  # the pretrained cfg's paper_ids, e.g. "arXiv:2401.10166"
    # The paper's figures from the pretrained cfg, as the paper prints them; None where it gives none.
    paper_params_m: float | None = None
    paper_gmacs: float | None = None  # at input_size
    paper_top1: float | None = None


COLUMNS = tuple(f.name for f in fields(Row))
_NUMBER_COLUMNS = ("params", "macs", *PAPER_COLUMNS)


def create(name: str) -> torch.nn.Module:
    """The model as ``vizoo info`` builds it: random init, eval mode, default cfg."""
    return timm.create_model(name, pretrained=False).eval()


def families() -> dict[str, str]:
    """Registered vizoo model name -> its backbone module (family), e.g. ``vmamba_tiny_s1l8`` -> ``vmamba``."""
    return {name: family for family in FAMILIES for name in timm.list_models(module=family)}


def macs_or_none(model: torch.nn.Module, name: str, size: tuple[int, int, int]) -> int | None:
    """MACs of one forward pass at ``size`` (C, H, W); None (with a logged warning) when the pass fails, so one
    uncountable model does not abort a listing."""
    try:
        return count_macs(model, input_size=size)
    except Exception as e:
        _log.warning("could not count MACs of %s at %s: %s", name, size, e)
        return None


def format_params(params: int | None) -> str:
    return "-" if params is None else f"{params / 1e6:.2f}"


def format_gmacs(macs: int | None) -> str:
    return "n/a" if macs is None else f"{macs / 1e9:.3f}"


def gmacs_text(model: torch.nn.Module, name: str, size: tuple[int, int, int]) -> str:
    """GMACs as the CLI prints them ("n/a" when the forward pass cannot be counted)."""
    return format_gmacs(macs_or_none(model, name, size))


def default_input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) input size of the model's pretrained cfg, (3, 224, 224) when it names none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))  # type: ignore[return-value]


def weights_source(model: torch.nn.Module) -> str:
    """Where the official weights download from: the pretrained cfg's ``url`` or ``hf_hub_id``, else ""."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("url") or cfg.get("hf_hub_id") or ""


def paper_figures(name: str) -> dict[str, float]:
    """The paper's figures of registered model ``name`` (the ``PAPER_KEYS`` its default pretrained cfg sets), read
    from the registry without building the model: their one source, for the table and the paper-table tests. A built
    model's ``pretrained_cfg`` dict does not carry them (``PaperCfg.to_dict``)."""
    cfg = timm.models.get_pretrained_cfg(name)
    return {k: v for k in PAPER_KEYS if (v := getattr(cfg, k, None)) is not None}


def _paper_id(cfg: dict) -> str:
    ids = cfg.get("paper_ids") or ""
    return ids if isinstance(ids, str) else ", ".join(ids)


def measure(name: str, family: str | None = None, macs: bool = True, device: str | None = None) -> Row:
    """Build ``name`` and count its params and (unless ``macs`` is False, then ``macs`` is None) its MACs.

    ``device="meta"`` builds the model without allocating or initializing weights, which counts params (and reads
    the cfg) at a fraction of the cost; MACs need a real forward pass, so they are not counted there. Warnings
    raised while building and running the model (EcoFormer's unfitted hashing) are silenced: they concern a
    random-init model and would interleave with the table.
    """
    if family is None:
        family = families().get(name, "")
    if device == "meta":
        macs = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = create(name)
        size = default_input_size(model)
        n_macs = macs_or_none(model, name, size) if macs else None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    figures = paper_figures(name)
    paper = {k: figures.get(k) for k in PAPER_COLUMNS}
    return Row(name, family, count_params(model), n_macs, size, weights_source(model), _paper_id(cfg), **paper)


def measure_all(
    names: Iterable[str] | None = None, macs: bool = True, callback: Callable[[str], None] | None = None
) -> list[Row]:
    """Rows for ``names`` (default: every registered vizoo model), in sorted order; ``callback(name)`` before each."""
    family = families()
    rows = []
    for name in sorted(vizoo.list_models() if names is None else names):
        if callback is not None:
            callback(name)
        rows.append(measure(name, family.get(name, ""), macs=macs))
    return rows


def _number_text(value: float | None) -> str:
    return "" if value is None else str(value)


def _parse_number(text: str) -> float | None:
    """Inverse of ``_number_text``: "" is None, an integer stays an int (30 as printed, not 30.0)."""
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def render_csv(rows: Sequence[Row]) -> str:
    """CSV text of ``rows``: exact integer params and MACs (MACs empty when uncounted), input size as ``3x224x224``,
    the paper's figures as written in the cfg (empty where the paper gives none)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        cells = {f: getattr(r, f) for f in COLUMNS}
        cells.update({f: _number_text(cells[f]) for f in _NUMBER_COLUMNS})
        cells["input_size"] = "x".join(str(s) for s in r.input_size)
        writer.writerow([cells[f] for f in COLUMNS])
    return out.getvalue()


def read_csv(text: str) -> list[Row]:
    """Rows of CSV ``text`` written by ``render_csv``."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"model table columns are {reader.fieldnames}, expected {list(COLUMNS)}")
    rows = []
    for d in reader:
        values: dict = {f: _parse_number(d[f]) for f in _NUMBER_COLUMNS}
        values["input_size"] = tuple(int(s) for s in d["input_size"].split("x"))
        rows.append(Row(**{f: values.get(f, d[f]) for f in COLUMNS}))
    return rows


def load_rows(path: Path | str = CSV_PATH) -> list[Row]:
    """The stored table (``vizoo/models.csv`` by default); [] when the file is missing."""
    path = Path(path)
    return read_csv(path.read_text()) if path.exists() else []


def _weights_md(weights: str) -> str:
    if not weights:
        return "-"
    if weights.startswith(("http://", "https://")):
        return f"[{weights.rsplit('/', 1)[-1]}]({weights})"
    return f"[hf-hub:{weights}](https://huggingface.co/{weights})"


def _paper_md(paper: str) -> str:
    """A paper id as a link where it is an arXiv id ("arXiv:2401.10166"), else as written ("-" when empty)."""
    links = []
    for ident in filter(None, (p.strip() for p in paper.split(","))):
        if ident.lower().startswith("arxiv:"):
            ident = f"[{ident}](https://arxiv.org/abs/{ident.split(':', 1)[1]})"
        links.append(ident)
    return ", ".join(links) or "-"


def _figure_md(value: float | None) -> str:
    return "-" if value is None else str(value)


def _by_family(rows: Iterable[Row]) -> dict[str, list[Row]]:
    by_family: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: (r.family, r.model)):
        by_family.setdefault(r.family, []).append(r)
    return by_family


def render_markdown(rows: Sequence[Row]) -> str:
    """The generated region of ``docs/models.md``: one table per family (families and models in sorted order), each
    under a ``### family`` heading with a link to the family's paper."""
    lines = []
    for family, members in _by_family(rows).items():
        papers = sorted({r.paper for r in members if r.paper})
        lines += [
            f"### {family}",
            "",
            f"Paper: {_paper_md(', '.join(papers))}.",
            "",
            "| model | params (M) | paper params (M) | GMACs | paper GMACs | paper top-1 (%) | input size | weights |",
            "|---|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in members:
            cells = [r.model, format_params(r.params), _figure_md(r.paper_params_m), format_gmacs(r.macs)]
            cells += [_figure_md(r.paper_gmacs), _figure_md(r.paper_top1), "x".join(map(str, r.input_size))]
            lines.append("| " + " | ".join([*cells, _weights_md(r.weights)]) + " |")
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


def _span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "-"
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def render_family_summary(rows: Sequence[Row], page: str = "docs/models.md") -> str:
    """One line per family: its variants (the ``test_`` models left out), their params and GMACs ranges as counted,
    the paper's top-1 range and the paper. Each family links to its table on ``page`` ("" links within the page)."""
    lines = [
        "| family | variants | params (M) | GMACs | paper top-1 (%) | paper |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for family, members in _by_family(rows).items():
        real = [r for r in members if not r.model.startswith("test_")]
        if not real:
            continue
        params = _span([r.params / 1e6 for r in real], lambda v: f"{v:.1f}")
        gmacs = _span([r.macs / 1e9 for r in real if r.macs is not None], lambda v: f"{v:.2f}")
        top1 = _span([r.paper_top1 for r in real if r.paper_top1 is not None], str)
        papers = ", ".join(sorted({r.paper for r in real if r.paper}))
        cells = [f"[{family}]({page}#{family})", str(len(real)), params, gmacs, top1, _paper_md(papers)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Params and GMACs as `vizoo info` counts them, GMACs at each model's default input size;",
        "the paper's top-1 as printed, where it gives one.",
    ]
    return "\n".join(lines) + "\n"


def _region_span(text: str, markers: tuple[str, str]) -> tuple[int, int] | None:
    """(start, end) of the text between the two marker lines, None when the page has neither marker."""
    begin, end = markers
    i, j = text.find(begin), text.find(end)
    if i < 0 and j < 0:
        return None
    if i < 0 or j < 0 or j < i or text.count(begin) > 1 or text.count(end) > 1:
        raise ValueError(f"the page needs exactly one {begin} followed by one {end}")
    return i + len(begin), j


def read_region(text: str, markers: tuple[str, str]) -> str | None:
    """The generated text between ``markers`` (without the blank lines around it); None when the page has none."""
    span = _region_span(text, markers)
    return None if span is None else text[span[0] : span[1]].strip("\n") + "\n"


def replace_region(text: str, markers: tuple[str, str], body: str) -> str:
    """``text`` with the region between ``markers`` replaced by ``body`` (blank lines around it); everything outside
    the markers is kept byte for byte. ValueError when the page has no such region."""
    span = _region_span(text, markers)
    if span is None:
        raise ValueError(f"the page has no {markers[0]} ... {markers[1]} region")
    return text[: span[0]] + "\n\n" + body.strip("\n") + "\n\n" + text[span[1] :]


def fill_regions(text: str, rows: Sequence[Row], page: str = "docs/models.md") -> str:
    """``text`` with each generated region it has rewritten from ``rows``: the per-family tables and the summary
    (whose family links point to ``page``, "" for the page itself). A page without markers comes back unchanged."""
    for markers, body in (
        (TABLE_MARKERS, lambda: render_markdown(rows)),
        (SUMMARY_MARKERS, lambda: render_family_summary(rows, page)),
    ):
        if _region_span(text, markers) is not None:
            text = replace_region(text, markers, body())
    return text


def compare(expected: Sequence[Row], actual: Sequence[Row]) -> list[str]:
    """Differences between two tables, one line each ([] when they agree): models only in one of them, and each
    field that differs for a model in both. ``expected`` is what the registry gives, ``actual`` the stored table."""
    exp = {r.model: r for r in expected}
    act = {r.model: r for r in actual}
    report = [f"{name}: registered but missing from the table" for name in sorted(exp.keys() - act.keys())]
    report += [f"{name}: in the table but not registered" for name in sorted(act.keys() - exp.keys())]
    for name in sorted(exp.keys() & act.keys()):
        for col in COLUMNS[1:]:
            want, got = getattr(exp[name], col), getattr(act[name], col)
            if want != got:
                report.append(f"{name}: {col} is {got!r} in the table, the registry gives {want!r}")
    return report
