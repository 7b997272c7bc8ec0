"""tools/gpu_check.py on the CPU: it refuses without CUDA, parses its arguments, imports only what the GPU machine's
image has, and its checks run (at tiny sizes, the Triton kernels through the interpreter) and fail when a kernel is
wrong."""

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: Import names of the Python packages in the GPU machine's image (PyTorch, Triton, timm, onnxruntime, pytest and
#: the rest of its scientific stack); nothing else can be installed there.
GPU_IMAGE = {
    "torch", "triton", "timm", "torchvision", "numpy", "scipy", "pytest", "xdist", "hypothesis", "onnx", "onnxruntime",
    "onnxscript", "onnx_ir", "PIL", "yaml", "safetensors", "huggingface_hub", "tqdm", "rich", "sklearn", "skimage",
    "einops", "packaging", "psutil", "typing_extensions", "jinja2", "matplotlib", "pandas", "transformers", "sympy",
    "requests", "filelock", "fsspec", "tabulate", "cv2", "imageio", "networkx", "regex", "tokenizers", "sentencepiece",
}  # fmt: skip


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("gpu_check")


@pytest.fixture(scope="module")
def tiny(tool):
    return tool.Sizes.tiny()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the tool runs the check")
def test_refuses_without_cuda_and_writes_nothing(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path / "out")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_arguments(tool, capsys):
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--help"])
    assert exit_.value.code == 0 and "--sections" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        tool.main(["out", "--sections", "parity", "bogus"])
    assert exit_.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        tool.main([])
    assert exit_.value.code == 2 and "out_dir" in capsys.readouterr().err


def test_imports_only_what_the_gpu_image_has():
    """Every module that gpu_check and the vizoo code it runs import (also inside functions) is in the image. The CPU
    loops (numba, which the image lacks) are left out: the dispatcher takes them only where numba imports."""
    script = textwrap.dedent(
        f"""
        import ast, importlib, pkgutil, sys
        sys.path.insert(0, {str(ROOT / "tools")!r})
        import timm, gpu_check, vizoo.kernels
        for name in gpu_check.MODELS:
            timm.create_model(name)
        for info in pkgutil.walk_packages(vizoo.kernels.__path__, "vizoo.kernels."):
            if not info.name.endswith((".cpu", ".cpu_loops")):
                importlib.import_module(info.name)
        ours = [m for n, m in list(sys.modules.items())
                if n.split(".")[0] in ("vizoo", "gpu_check", "benchmark_kernels") and getattr(m, "__file__", None)]
        imported = set()
        for module in ours:
            for node in ast.walk(ast.parse(open(module.__file__).read())):
                if isinstance(node, ast.Import):
                    imported.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
        print(sorted(imported - set(sys.stdlib_module_names)))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    imported = set(eval(out.strip().splitlines()[-1]))
    assert {"torch", "triton", "timm"} <= imported
    assert imported - GPU_IMAGE - {"vizoo", "gpu_check", "benchmark_kernels"} == set()


@pytest.fixture(scope="module")
def parity_result(tool, tiny):
    return tool.parity(tiny, DEVICE)


def test_parity_passes_on_every_case_in_both_dtypes(parity_result):
    rows = parity_result["rows"]
    assert parity_result["passed"] and all(r["passed"] for r in rows)
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"} and len(rows) == 20
    scan = next(r for r in rows if r["case"] == "selective_scan vim n=16 gated" and r["dtype"] == "fp32")
    assert set(scan["grads"]) == {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"}
    assert 0 < scan["out"] < 1e-5


def _first_case_only(tool, monkeypatch):
    every_case = tool.kernel_cases
    monkeypatch.setattr(tool, "kernel_cases", lambda *a, **k: itertools.islice(every_case(*a, **k), 1))


def _wrong_triton_scan(monkeypatch, change):
    """Make the selective scan's Triton backend return ``change(y)``; the tool must notice."""
    from vizoo.kernels.selective_scan import interface

    right = interface.BACKENDS["triton"]
    monkeypatch.setitem(interface.BACKENDS, "triton", lambda *a, **k: change(right(*a, **k)))


def test_parity_fails_when_a_kernel_is_off_by_one_percent(tool, tiny, monkeypatch):
    _first_case_only(tool, monkeypatch)
    _wrong_triton_scan(monkeypatch, lambda y: y * 1.01)
    result = tool.parity(tiny, DEVICE)
    assert not result["passed"]
    assert [r["passed"] for r in result["rows"]] == [False, True]  # fp32 caught; 1% is within bf16's tolerance


def test_sweep_finds_kernels_finite_and_catches_an_overflow(tool, tiny, monkeypatch):
    result = tool.overflow_sweep(tiny, DEVICE)
    assert result["passed"] and len(result["rows"]) == 10
    assert all(not r["triton_only_nonfinite"] for r in result["rows"])
    _first_case_only(tool, monkeypatch)
    _wrong_triton_scan(monkeypatch, lambda y: torch.where(y.abs() > 50, float("inf"), y))
    broken = tool.overflow_sweep(tiny, DEVICE)
    assert not broken["passed"] and broken["rows"][0]["triton_only_nonfinite"] == ["out"]


@pytest.fixture(scope="module")
def training_result(tool):
    # The reference backend stands in for Triton: the interpreter runs a whole model too slowly for the suite.
    return tool.training("test_vmamba", steps=3, batch=2, size=32, device=DEVICE, grad_batch=1, backend="reference")


def test_training_check_trains_and_compares_gradients(training_result):
    assert training_result["passed"] and training_result["finite"] and len(training_result["losses"]) == 3
    assert training_result["loss_last"] < training_result["loss_first"]
    grads = training_result["gradients"]
    assert grads["compared"] > 50 and not grads["missing"] and 0 < grads["worst_ratio"] < 1e-4


def test_training_check_catches_wrong_gradients(tool, monkeypatch):
    from vizoo.kernels.cross_selective_scan import interface

    right = interface.BACKENDS["reference"]
    # Not a plain rescaling: SS2D's output norm would cancel it.
    monkeypatch.setitem(interface.BACKENDS, "reference", lambda *a, **k: (y := right(*a, **k)) + 0.1 * y.roll(1, 1))
    result = tool.training("test_vmamba", steps=1, batch=2, size=32, device=DEVICE, grad_batch=1, backend="reference")
    assert not result["passed"] and not result["gradients"]["passed"]
    assert result["gradients"]["worst_ratio"] > 1e-3


def test_kernel_tests_section_runs_pytest_and_reads_its_report(tool, tmp_path):
    passing = tool.kernel_tests(
        tmp_path, 300, workers=1, paths=("tests/kernels/test_cross_scan.py::test_routes_visit_every_pixel_once",)
    )
    assert passing["passed"] and passing["returncode"] == 0
    assert (passing["tests"], passing["failures"], passing["errors"], passing["failed"]) == (1, 0, 0, [])
    bad = tmp_path / "test_bad.py"
    bad.write_text("def test_ok():\n    pass\n\ndef test_wrong():\n    assert 1 == 2, 'one is not two'\n")
    failing = tool.kernel_tests(tmp_path, 300, workers=1, paths=(str(bad),))
    assert not failing["passed"] and (failing["tests"], failing["failures"]) == (2, 1)
    assert "test_wrong" in failing["failed"][0] and "one is not two" in failing["failed"][0]


def test_summary_names_every_section_with_its_figures(tool, parity_result, training_result):
    report = dict(
        sections=dict(
            parity=dict(status="passed", seconds=1.0, result=parity_result),
            train=dict(status="passed", seconds=2.0, result=training_result),
            models=dict(status="error", seconds=0.5, error="Traceback ...\nRuntimeError: CUDA error: out of memory"),
            compile=dict(status="skipped", error="time budget of 480 s spent"),
        )
    )
    lines = tool.summary_lines(report)
    assert [line.split()[:2] for line in lines] == [
        ["parity", "passed"], ["train", "passed"], ["models", "error"], ["compile", "skipped"]
    ]  # fmt: skip
    assert "worst" in lines[0] and "->" in lines[1] and "out of memory" in lines[2] and "budget" in lines[3]
    json.dumps(report, default=str)  # the JSON file holds the same
