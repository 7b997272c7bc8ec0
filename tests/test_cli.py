"""The ``vizoo`` command, run in-process through ``vizoo.cli.main`` (tiny models, CPU)."""

import subprocess
import sys

import timm
import torch

import vizoo
from vizoo.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_test_vmamba_registered():
    assert timm.is_model("test_vmamba") and "test_vmamba" in vizoo.list_models()


def test_list(capsys):
    code, out, _ = _run(capsys, "list", "test_*")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("test_vmamba"))
    params, gmacs = line.split()[1:3]
    assert 0.1 < float(params) < 2.0 and float(gmacs) > 0


def test_list_no_match(capsys):
    code, _, err = _run(capsys, "list", "no_such_model_*", "--no-macs")
    assert code == 1 and "no vizoo models match" in err


def test_info(capsys):
    code, out, _ = _run(capsys, "info", "test_vmamba")
    assert code == 0
    assert "params:" in out and "GMACs:" in out
    for field in ("input_size", "mean", "std", "crop_pct", "first_conv", "classifier", "pool_size"):
        assert field in out
    assert "feature_info:" in out and "reduction" in out
    assert "no_weight_decay:" in out


def test_info_unknown_model(capsys):
    code, _, err = _run(capsys, "info", "test_vmamab")
    assert code == 2
    assert "unknown model 'test_vmamab'" in err and "test_vmamba" in err and "vizoo list" in err


def test_bench(capsys, tmp_path):
    png = tmp_path / "lat.png"
    argv = ["bench", "test_vmamba", "--sizes", "32", "64", "--baselines", "test_resnet"]
    code, out, _ = _run(capsys, *argv, "--warmup", "1", "--min-time", "0.05", "--plot", str(png))
    assert code == 0
    assert "vs test_resnet" in out and "test_resnet (baseline)" in out
    model_lines = [line for line in out.splitlines() if line.startswith("test_vmamba ")]
    assert len(model_lines) == 2 and all(line.rstrip().endswith("x") for line in model_lines)
    assert "slope" in out
    slope_line = next(line for line in out.splitlines() if line.strip().startswith("test_vmamba:"))
    float(slope_line.split(":")[1])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_unknown_baseline(capsys):
    code, _, err = _run(capsys, "bench", "test_vmamba", "--sizes", "32", "--baselines", "deit_smal_patch16_224")
    assert code == 2 and "deit_small_patch16_224" in err


def test_bench_cuda_unavailable(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = _run(capsys, "bench", "test_vmamba", "--sizes", "32", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err and out == ""


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["bench"]) == 2
    assert main(["--help"]) == 0


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "vizoo", "list", "test_*", "--no-macs"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "test_vmamba" in proc.stdout
