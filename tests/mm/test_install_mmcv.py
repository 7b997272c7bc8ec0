"""tools/install_mmcv.sh's patch step, on a fake mmcv setup.py (the 25-minute build itself is not run here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "install_mmcv.sh"

FAKE_SETUP = """\
extra_compile_args = {'nvcc': [], 'cxx': []}
if platform.system() != 'Windows':
    extra_compile_args['cxx'] = ['-std=c++14']
if parse_version(torch.__version__) >= parse_version('2.1.0'):
    extra_compile_args['cxx'] += ['-std=c++17']
    extra_compile_args['nvcc'] += ['-std=c++17']
"""


def test_patch_only_moves_every_standard_to_cxx20(tmp_path):
    (tmp_path / "setup.py").write_text(FAKE_SETUP)
    out = subprocess.run(["bash", str(SCRIPT), "--patch-only", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    patched = (tmp_path / "setup.py").read_text()
    assert "c++14" not in patched and "c++17" not in patched
    assert patched.count("-std=c++20") == 3
    assert patched.replace("-std=c++20", "") == FAKE_SETUP.replace("-std=c++14", "").replace("-std=c++17", "")


def test_patch_only_errors(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--patch-only", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0 and "no setup.py" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr
