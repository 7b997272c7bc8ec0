"""Regenerate, or check, the table of official weights in ``docs/weights.md``: every vizoo ``name.tag`` with released
weights, its paper top-1, licence, address and whether ``pretrained=True`` downloads it, read from the timm registry
(no model is built, nothing is downloaded). Only the text between ``<!-- weights-table:begin -->`` and
``<!-- weights-table:end -->`` is rewritten; run it after changing a pretrained cfg.

    python tools/weights_table.py            # rewrite the region
    python tools/weights_table.py --check    # exit 1, showing the differences, when it is out of date
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import vizoo  # noqa: F401  (registers the models)
from vizoo import model_table
from vizoo.backbones._pretrained import WEIGHTS_TABLE_MARKERS, render_weights_table

DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "weights.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when out of date")
    parser.add_argument("--docs", type=Path, default=DOCS_PATH, help="default: %(default)s")
    args = parser.parse_args(argv)

    stored = args.docs.read_text()
    try:
        rendered = model_table.replace_region(stored, WEIGHTS_TABLE_MARKERS, render_weights_table())
    except ValueError as e:  # no region, or markers out of order
        print(f"{args.docs}: {e}")
        return 1
    if not args.check:
        if rendered != stored:
            args.docs.write_text(rendered)
        print(f"wrote {args.docs}")
        return 0
    if rendered != stored:
        diff = difflib.unified_diff(stored.splitlines(), rendered.splitlines(), lineterm="", n=0)
        print(f"{args.docs} is out of date; run `python tools/weights_table.py`:")
        print("\n".join(list(diff)[2:22]))
        return 1
    print(f"{args.docs} matches the registry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
