"""The model table: family, params, MACs, input size and weights source of every registered vizoo model.

Counting params and MACs means building every model and running a forward pass on each, which is far too slow for
``vizoo list``. So the table is computed once from the timm registry (``measure_all``), stored as ``vizoo/models.csv``
inside the package (an installed vizoo reads it too) and rendered as ``docs/models.md``. ``tools/model_table.py``
regenerates both files or checks them; ``tests/test_model_table.py`` checks them against the registry.

The counts are the ones ``vizoo info`` prints: ``count_params`` and ``count_macs`` (``vizoo.utils.complexity``) on
the model built by ``timm.create_model(name, pretrained=False)``, MACs at the model's default input size. The CSV
keeps exact integers (``params``, ``macs``); the CLI and the Markdown page show them as M params and GMACs.
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
from vizoo.utils.complexity import count_macs, count_params

__all__ = [
    "CSV_PATH",
    "DOCS_PATH",
    "Row",
    "compare",
    "create",
    "default_input_size",
    "families",
    "format_gmacs",
    "format_params",
    "gmacs_text",
    "load_rows",
    "macs_or_none",
    "measure",
    "measure_all",
    "read_csv",
    "render_csv",
    "render_markdown",
    "weights_source",
]

CSV_PATH = Path(__file__).with_name("models.csv")
# The Markdown page lives in the source checkout's docs/ (it is not installed with the package).
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "models.md"

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


COLUMNS = tuple(f.name for f in fields(Row))


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
    return Row(name, family, count_params(model), n_macs, size, weights_source(model))


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


def render_csv(rows: Sequence[Row]) -> str:
    """CSV text of ``rows``: exact integer params and MACs (MACs empty when uncounted), input size as ``3x224x224``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        size = "x".join(str(s) for s in r.input_size)
        writer.writerow([r.model, r.family, r.params, "" if r.macs is None else r.macs, size, r.weights])
    return out.getvalue()


def read_csv(text: str) -> list[Row]:
    """Rows of CSV ``text`` written by ``render_csv``."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"model table columns are {reader.fieldnames}, expected {list(COLUMNS)}")
    return [
        Row(
            model=d["model"],
            family=d["family"],
            params=int(d["params"]),
            macs=int(d["macs"]) if d["macs"] else None,
            input_size=tuple(int(s) for s in d["input_size"].split("x")),  # type: ignore[arg-type]
            weights=d["weights"],
        )
        for d in reader
    ]


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


def render_markdown(rows: Sequence[Row]) -> str:
    """``docs/models.md``: an intro, then one table per family (families and models in sorted order)."""
    lines = [
        "# Models",
        "",
        "Every model registered by vizoo, generated by `python tools/model_table.py` from the timm registry; do not "
        "edit this page by hand (`python tools/model_table.py --check` tells whether it is current). Params and "
        "GMACs are counted as `vizoo info` counts them, on one image at the model's default input size "
        "(a selective scan counts 9·B·L·D·N MACs; elementwise ops and norms are not counted). The weights column "
        "gives the download of the official weights where vizoo has one; `-` means load a downloaded checkpoint "
        "with `pretrained_cfg_overlay=dict(file=path)` (see the README). The `test_` models are tiny variants for "
        "tests.",
    ]
    by_family: dict[str, list[Row]] = {}
    for r in rows:
        by_family.setdefault(r.family, []).append(r)
    for family in sorted(by_family):
        lines += [
            "",
            f"## {family}",
            "",
            "| model | params (M) | GMACs | input size | weights |",
            "|---|--:|--:|--:|---|",
        ]
        for r in sorted(by_family[family], key=lambda r: r.model):
            cells = [r.model, format_params(r.params), format_gmacs(r.macs), "x".join(map(str, r.input_size))]
            lines.append("| " + " | ".join([*cells, _weights_md(r.weights)]) + " |")
    return "\n".join(lines) + "\n"


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
