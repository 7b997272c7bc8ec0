"""Regenerate, or check, the model table: ``vizoo/models.csv`` (read by ``vizoo list``) and ``docs/models.md``.

Every registered vizoo model is built and counted (params, and MACs at its default input size, as ``vizoo info``
counts them), so a run builds every model once; run it after adding or changing a model.

    python tools/model_table.py            # rewrite both files
    python tools/model_table.py --check    # exit 1, listing the differences, when either file is out of date
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from vizoo import model_table


def _progress(name: str) -> None:
    print(f"  {name}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when out of date")
    parser.add_argument("--csv", type=Path, default=model_table.CSV_PATH, help="default: %(default)s")
    parser.add_argument("--docs", type=Path, default=model_table.DOCS_PATH, help="default: %(default)s")
    args = parser.parse_args(argv)

    print("counting every registered vizoo model:", file=sys.stderr)
    rows = model_table.measure_all(callback=_progress)
    csv_text, docs_text = model_table.render_csv(rows), model_table.render_markdown(rows)

    if not args.check:
        args.csv.write_text(csv_text)
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(docs_text)
        print(f"wrote {args.csv} and {args.docs} ({len(rows)} models)")
        return 0

    stored_csv = args.csv.read_text() if args.csv.exists() else ""
    stored_docs = args.docs.read_text() if args.docs.exists() else ""
    report = model_table.compare(rows, model_table.read_csv(stored_csv) if stored_csv else [])
    if not report and stored_csv != csv_text:  # same values, different text (formatting, row order)
        report.append(f"{args.csv}: same values, different text")
    if stored_docs != docs_text:
        diff = list(difflib.unified_diff(stored_docs.splitlines(), docs_text.splitlines(), lineterm="", n=0))
        changed = sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))
        report.append(f"{args.docs}: {changed} lines differ from what the table renders")
        report += ["  " + line for line in diff[2:22]]
    if report:
        print("the model table is out of date; run `python tools/model_table.py`:")
        print("\n".join(report))
        return 1
    print(f"{args.csv} and {args.docs} match the registry ({len(rows)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
