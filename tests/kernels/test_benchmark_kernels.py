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
