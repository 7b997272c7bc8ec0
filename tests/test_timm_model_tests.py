"""tools/timm_model_tests.py: fetching timm's tests from its sdist, and the pytest plugin that points them at vizoo's
models (offline: the sdist is a file made here, the tests a small file written in test_models.py's manner)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture
def tool(load_tool):
    return load_tool("timm_model_tests")


def _write_sdist(path: Path, version: str) -> None:
    files = {
        f"timm-{version}/tests/test_models.py": "def test_x():\n    pass\n",
        f"timm-{version}/tests/conftest.py": "",
        f"timm-{version}/tests/data/helper.py": "",
        f"timm-{version}/timm/__init__.py": "",
        f"timm-{version}/pyproject.toml": "",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))


def test_fetch_downloads_the_sdist_once_and_unpacks_only_the_tests(tool, monkeypatch, tmp_path):
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        _write_sdist(Path(command[command.index("-d") + 1]) / "timm-9.9.9.tar.gz", "9.9.9")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(tool.subprocess, "run", pip)
    for _ in range(2):
        tests_dir = tool.fetch_timm_tests("9.9.9", cache_dir=tmp_path)
    assert len(calls) == 1 and calls[0][3:7] == ["download", "timm==9.9.9", "--no-binary", ":all:"]
    unpacked = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert unpacked == [
        "timm-9.9.9.tar.gz",
        "timm-9.9.9/pyproject.toml",
        "timm-9.9.9/tests/conftest.py",
        "timm-9.9.9/tests/test_models.py",
    ]
    assert tests_dir == tmp_path / "timm-9.9.9" / "tests"


def test_failed_fetch_says_where_to_get_the_sdist(tool, monkeypatch, tmp_path):
    failed = subprocess.CompletedProcess([], 1, "", "No matching distribution found for timm==9.9.9")
    monkeypatch.setattr(tool.subprocess, "run", lambda command, **kwargs: failed)
    with pytest.raises(RuntimeError, match=r"(?s)No matching distribution.*pypi.org/project/timm/9.9.9"):
        tool.fetch_timm_tests("9.9.9", cache_dir=tmp_path)


def test_model_selection(tool):
    models = tool.select_models(tool.DEFAULT_PATTERNS, tool.SMALL_REAL_MODELS)
    assert "test_vmamba" in models and set(tool.SMALL_REAL_MODELS) <= set(models)
    assert all(m.startswith("test_") or m in tool.SMALL_REAL_MODELS for m in models)
    with pytest.raises(ValueError, match="no vizoo model matches 'resnet\\*'"):
        tool.select_models(["resnet*"])
    with pytest.raises(ValueError, match="unknown vizoo models"):
        tool.select_models(["test_*"], ("vmamba_tiny",))


# A test module in the manner of timm's test_models.py: lists built at import time from timm.list_models, a test of a
# named timm model, a test that reads the Hub, and one listed in KNOWN_FAILURES.
FAKE_TEST_MODELS = """
import socket
import pytest
from timm import list_models

@pytest.mark.parametrize("model_name", list_models(exclude_filters=["*vim*"]))
def test_model_forward(model_name):
    assert not model_name.startswith("resnet")

@pytest.mark.parametrize("model_name", list_models(module=["resnet", "convnext"]))
def test_model_forward_intermediates(model_name):
    pass

@pytest.mark.parametrize("model_name", ["resnet18"])
def test_resnet_only(model_name):
    pass

@pytest.mark.parametrize("model_name", list_models())
def test_model_inference(model_name):
    pass

@pytest.mark.parametrize("model_name", list_models())
def test_model_forward_torchscript(model_name):
    pass

@pytest.mark.parametrize("model_name", list_models("test_vim"))
@pytest.mark.parametrize("host", ["huggingface.co", "127.0.0.1"])
def test_model_network(model_name, host):
    with pytest.raises(OSError, match="run offline"):
        socket.create_connection((host, 443))
"""


def test_plugin_points_timm_tests_at_vizoo_models(tool, tmp_path):
    (tmp_path / "test_models.py").write_text(FAKE_TEST_MODELS)
    env = dict(os.environ, **{tool.MODELS_ENV: "test_vmamba,test_vim"}, PYTHONPATH=str(TOOLS))
    command = [sys.executable, "-m", "pytest", "test_models.py", "-p", "timm_model_tests", "-p", "no:cacheprovider"]
    result = subprocess.run([*command, "-rA", "-n", "0"], cwd=tmp_path, env=env, capture_output=True, text=True)
    outcomes = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines() if "test_models.py::" in line}
    # Every list is vizoo's selection (filters still apply; module= does not), named timm models and the Hub test
    # are deselected, a known failure is a strict xfail (here it passes, which fails the run), and connections fail.
    assert outcomes == {
        "test_models.py::test_model_forward[test_vmamba]": "PASSED",
        "test_models.py::test_model_forward_intermediates[test_vim]": "PASSED",
        "test_models.py::test_model_forward_intermediates[test_vmamba]": "PASSED",
        "test_models.py::test_model_forward_torchscript[test_vim]": "FAILED",  # a strict xfail that passed
        "test_models.py::test_model_forward_torchscript[test_vmamba]": "FAILED",
        "test_models.py::test_model_network[huggingface.co-test_vim]": "PASSED",
        "test_models.py::test_model_network[127.0.0.1-test_vim]": "PASSED",
    }, result.stdout
    assert result.returncode == 1 and "[XPASS(strict)] timm's TorchScript" in result.stdout
    assert "3 deselected" in result.stdout
