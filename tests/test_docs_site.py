"""The documentation site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``, and strict mode does fail on a
broken link.

mkdocstrings reads the API reference's docstrings by static analysis (griffe), so a build imports neither vizoo nor
torch. The tests are skipped where the ``docs`` extra is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _build(config: Path, site_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner about MkDocs 2.0, not a build warning
    args = ["build", "--strict", "--config-file", str(config), "--site-dir", str(site_dir)]
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = _build(ROOT / "mkdocs.yml", site)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    # The API reference is rendered from the docstrings, not left empty.
    kernels = (site / "api" / "kernels" / "index.html").read_text(encoding="utf-8")
    assert 'id="vizoo.kernels.selective_scan.selective_scan"' in kernels, output
    models = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert 'id="vizoo.backbones.vmamba.VMamba"' in models, output


def test_strict_build_fails_on_broken_link(tmp_path):
    """A copy of the site with one extra page whose relative link points nowhere must not build."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "broken.md").write_text("# Broken\n\nSee [the missing page](no_such_page.md).\n", encoding="utf-8")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(docs)
    config["nav"].append({"Broken": "broken.md"})
    for plugin in config["plugins"]:  # mkdocstrings finds vizoo relative to the config file: point it at the repo
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    result = _build(config_file, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"a strict build with a broken link succeeded:\n{output}"
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    # The link is what fails it: the copy is otherwise the site that test_site_builds_strict builds cleanly.
    assert warnings and all("no_such_page.md" in line for line in warnings), output
