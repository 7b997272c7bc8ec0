"""Every `make <target>` that the project's text tells a user to run is a target the Makefile defines."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {name for line in re.findall(r"^([\w .-]+):(?!=)", text, re.M) for name in line.split()}


def test_named_make_targets_exist():
    targets = makefile_targets()
    assert {"demo", "test"} <= targets
    texts = [ROOT / "pyproject.toml", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts += sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "tools").glob("*.sh"))
    missing = [
        f"{path.relative_to(ROOT)}: make {name}"
        for path in texts
        for name in re.findall(r"(?:`|``|^|[#(]\s*)make ([a-z][\w-]*)", path.read_text(), re.M)
        if name not in targets
    ]
    assert not missing, missing
