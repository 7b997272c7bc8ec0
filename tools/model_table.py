"""Regenerate, or check, the model table: ``vizoo/models.csv`` (read by ``vizoo list``) and the generated regions of
``docs/models.md`` and ``README.md``.

Every registered vizoo model is built and counted (params, and MACs at its default input size, as ``vizoo info``
counts them), so a run builds every model once; run it after adding or changing a model or a paper figure in a
pretrained cfg. Only the text between the markers is rewritten: ``<!-- model-table:begin -->`` /
``<!-- model-table:end -->`` (the per-family tables; docs/models.md must have them) and
``<!-- model-summary:begin -->`` / ``<!-- model-summary:end -->`` (one line per family; in docs/models.md and in
README.md where they are present). The prose around them is left as it is.

    python tools/model_table.py            # rewrite the CSV and the regions
    python tools/model_table.py --check    # exit 1, listing the differences, when any of them is out of date
    python tools/model_table.py --stored   # rewrite the regions from the stored CSV, building no model
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from vizoo import model_table


def _progress(name: str) -> None:
    print(f"  {name}", file=sys.stderr, flush=True)


def _diff(path: Path, stored: str, expected: str) -> list[str]:
    diff = list(difflib.unified_diff(stored.splitlines(), expected.splitlines(), lineterm="", n=0))
    changed = sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))
    return [f"{path}: {changed} lines differ from what the table renders", *("  " + line for line in diff[2:22])]


def _new_docs_page() -> str:
    """A docs page that does not exist yet: the two regions under a heading, for prose to be written around them."""
    (s_begin, s_end), (t_begin, t_end) = model_table.SUMMARY_MARKERS, model_table.TABLE_MARKERS
    return f"# Models\n\n{s_begin}\n{s_end}\n\n{t_begin}\n{t_end}\n"


def _pages(args: argparse.Namespace, rows: list[model_table.Row]) -> tuple[dict[Path, tuple[str, str]], list[str]]:
    """Page -> (stored text, the text with its regions rendered from ``rows``), and the errors: a docs page without
    the table markers, or markers out of order. A README without markers is left out."""
    pages, errors = {}, []
    for path, link_page in ((args.docs, ""), (args.readme, "docs/models.md")):
        stored = path.read_text() if path.exists() else ""
        text = stored or (_new_docs_page() if path == args.docs else "")
        try:
            regions = [
                model_table.read_region(text, m) for m in (model_table.TABLE_MARKERS, model_table.SUMMARY_MARKERS)
            ]
            if path == args.docs and regions[0] is None:
                raise ValueError(f"the page has no {' ... '.join(model_table.TABLE_MARKERS)} region")
            if all(r is None for r in regions):
                continue
            pages[path] = (stored, model_table.fill_regions(text, rows, link_page))
        except ValueError as e:
            errors.append(f"{path}: {e}")
    return pages, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when out of date")
    parser.add_argument("--stored", action="store_true", help="render the pages from the stored CSV (no model built)")
    parser.add_argument("--csv", type=Path, default=model_table.CSV_PATH, help="default: %(default)s")
    parser.add_argument("--docs", type=Path, default=model_table.DOCS_PATH, help="default: %(default)s")
    parser.add_argument("--readme", type=Path, default=model_table.README_PATH, help="default: %(default)s")
    args = parser.parse_args(argv)

    if args.stored:
        try:
            rows = model_table.load_rows(args.csv)
        except ValueError as e:  # a CSV of an older layout
            print(f"{args.csv}: {e}; run without --stored to count the models")
            return 1
        if not rows:
            print(f"{args.csv} is missing or empty; run without --stored to count the models")
            return 1
    else:
        print("counting every registered vizoo model:", file=sys.stderr)
        rows = model_table.measure_all(callback=_progress)
    csv_text = model_table.render_csv(rows)
    pages, errors = _pages(args, rows)
    if errors:
        print("\n".join(errors))
        return 1

    if not args.check:
        if not args.stored:
            args.csv.write_text(csv_text)
        for path, (stored, rendered) in pages.items():
            if rendered != stored:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(rendered)
        written = ([] if args.stored else [args.csv]) + list(pages)
        print(f"wrote {', '.join(map(str, written))} ({len(rows)} models)")
        return 0

    report = []
    if not args.stored:
        stored_csv = args.csv.read_text() if args.csv.exists() else ""
        report = model_table.compare(rows, model_table.read_csv(stored_csv) if stored_csv else [])
        if not report and stored_csv != csv_text:  # same values, different text (formatting, row order)
            report.append(f"{args.csv}: same values, different text")
    for path, (stored, rendered) in pages.items():
        if stored != rendered:
            report += _diff(path, stored, rendered)
    if report:
        print("the model table is out of date; run `python tools/model_table.py`:")
        print("\n".join(report))
        return 1
    checked = ([] if args.stored else [args.csv]) + list(pages)
    print(f"{', '.join(map(str, checked))} match the registry ({len(rows)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
