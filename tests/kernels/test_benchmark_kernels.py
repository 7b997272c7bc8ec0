"""tools/benchmark_kernels.py: without a GPU it says so and exits with code 2; its kernel cases are wired right (run
here once each, forward and backward, at a tiny size on the CPU)."""

import pytest
import torch


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("benchmark_kernels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the tool runs the full benchmark")
def test_exits_with_code_2_and_a_message_without_cuda(tool, capsys):
    assert tool.main(["--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bytes_count_each_tensor_once(tool):
    x = torch.zeros(4, 8)
    assert tool.nbytes(x, x, x.half(), None) == 4 * 8 * 4 + 4 * 8 * 2


def test_kernel_cases_run_forward_and_backward(tool, monkeypatch, device):
    monkeypatch.setattr(tool, "BATCH", 1)
    monkeypatch.setattr(tool, "D", 2)
    monkeypatch.setattr(tool, "SIDE", 3)
    outputs = {}
    for op, backend, fn, inputs in tool.kernel_cases(1, torch.float32, str(device)):
        leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items()}
        out = fn(**leaves)
        out.sum().backward()
        assert all(v.grad is not None for v in leaves.values()), (op, backend)
        outputs.setdefault(op, []).append(out)
    for op, outs in outputs.items():  # every backend of an op computes the same thing
        for out in outs[1:]:
            torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-4, msg=op)


def test_model_ratios_compare_vmamba_with_swin_only_where_both_were_measured(tool):
    models = {
        "vmamba_tiny_s1l8 (triton)": dict(inference=300.0, training=90.0),
        "swin_tiny_patch4_window7_224": dict(inference=200.0),  # training ran out of memory
    }
    assert tool.model_ratios(models) == {"inference vs swin_tiny": 1.5}
    assert tool.model_ratios({}) == {}


def test_rows_go_to_the_shared_results_files(tool, tmp_path):
    """Kernel rows and model rows of a run are appended to gpu_kernels_<machine>.csv and gpu_models_<machine>.csv."""
    from vizoo.utils.results import read_rows

    rows = [
        tool.Row("selective_scan", 1, "triton", ms={"fwd": 1.0, "fwd+bwd": 3.0}, gbps={"fwd": 900.0}, peak_mb=5.0),
        tool.Row("cross_scan", 1, "torch", error="out of memory"),
    ]
    models = {"swin_tiny_patch4_window7_224": dict(inference=200.0, inference_peak_mb=10.0)}
    for _ in range(2):
        paths = tool.write_results(tmp_path, "cpu16-h100", rows, models, copy=1000.0)
    assert [p.name for p in paths] == ["gpu_kernels_cpu16-h100.csv", "gpu_models_cpu16-h100.csv"]
    kernels, model_rows = (read_rows(p) for p in paths)
    assert len(kernels) == 4 and len(model_rows) == 2
    scan, cross = kernels[:2]
    assert (scan["op"], scan["n"], scan["backend"], scan["fwd_ms"], scan["fwdbwd_ms"], scan["bwd_ms"]) == (
        "selective_scan", "1", "triton", "1", "3", ""
    )  # fmt: skip
    assert scan["fwd_gbps"] == "900" and scan["copy_gbps"] == "1000" and scan["machine"] == "cpu16-h100"
    assert cross["error"] == "out of memory" and cross["peak_mb"] == ""
    assert model_rows[0]["model"] == "swin_tiny_patch4_window7_224" and model_rows[0]["inference"] == "200"
    assert model_rows[0]["batch"] == str(tool.BATCH)
