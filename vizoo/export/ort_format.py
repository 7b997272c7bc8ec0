"""Mobile deployment of an exported graph with onnxruntime's own tools, each run in a subprocess: the ORT format
(``convert_to_ort``) and the NNAPI / CoreML usability report (``mobile_usability``), what ``vizoo export --ort`` does.

Apart from the export because they take a saved ``.onnx`` file and only wrap onnxruntime's command-line tools; the
model rewrites that make a graph mobile-friendly before export are in ``vizoo.export.mobile``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def mobile_usability(path: str | os.PathLike) -> dict[str, dict]:
    """Run onnxruntime's mobile usability checker; per execution provider, nodes it takes and in how many partitions.

    Returns ``{ep: {"nodes": taken, "total": all, "partitions": n, "fixed_shape": bool}}`` for the checker's
    as-is report and, where it prints one, the report with fixed input shapes.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"mobile usability checker failed on {path}:\n{log[-2000:]}")
    report: dict[str, dict] = {}
    ep = None
    fixed = False
    for line in log.splitlines():
        if m := re.search(r"Checking (?:if model will perform well with |)(NNAPI|CoreML \w+)", line):
            ep, fixed = m[1], False
        elif "if the dynamic shapes are fixed" in line:
            fixed = True
        elif ep and (m := re.search(r"(\d+) partitions? with a total of (\d+)/(\d+) nodes", line)):
            key = f"{ep} (fixed shapes)" if fixed else ep
            report[key] = {"partitions": int(m[1]), "nodes": int(m[2]), "total": int(m[3])}
        elif ep and (m := re.search(r"(NNAPI|CoreML \w+) cannot run any nodes", line)):
            report.setdefault(f"{ep} (fixed shapes)" if fixed else ep, {"partitions": 0, "nodes": 0, "total": None})
    return report


def convert_to_ort(path: str | os.PathLike) -> list[Path]:
    """ORT format for mobile runtimes (``--optimization_style Runtime``, for NNAPI/CoreML); returns the .ort files."""
    path = Path(path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(path),
            "--optimization_style",
            "Runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    files = sorted(path.parent.glob(path.stem + "*.ort"))
    if proc.returncode != 0 or not files:
        raise RuntimeError(f"ORT conversion failed for {path}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return files
