"""The Triton selective scan against the sequential reference: values, last state and every gradient over generated
shapes, dtypes, layouts; out_fp32 on every backend; backend picking and its errors; torch.compile / torch.export; the
kernels compile for a Hopper GPU even here. On a CPU the kernels run through Triton's interpreter (see conftest.py),
so sequences stay short."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vizoo.kernels import backend as backend_mod
from vizoo.kernels import force_backend, selective_scan
from vizoo.kernels.selective_scan import BACKENDS

tri = pytest.importorskip("vizoo.kernels.selective_scan.triton")


def make_inputs(b, d, length, n, g, dtype=torch.float32, with_d=True, with_z=True, with_bias=True, device="cpu"):
    u = torch.randn(b, d, length, dtype=dtype)
    delta = (torch.randn(b, d, length) * 0.5).to(dtype)
    A = -torch.rand(d, n) * 4 - 0.1
    B = torch.randn(b, g, n, length, dtype=dtype)
    C = torch.randn(b, g, n, length, dtype=dtype)
    D = torch.randn(d) if with_d else None
    z = torch.randn(b, d, length, dtype=dtype) if with_z else None
    bias = torch.randn(d) * 0.5 if with_bias else None
    return [t.to(device) if t is not None else None for t in (u, delta, A, B, C, D, z, bias)]


def run_with_grads(backend, inputs, grad, softplus=True, **kwargs):
    """y, last state and the gradients of every input under ``backend``."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y, last = selective_scan(*leaves, delta_softplus=softplus, return_last_state=True, backend=backend, **kwargs)
    y.backward(grad)
    return [y, last] + [t.grad if t is not None else None for t in leaves]


def assert_all_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:
            assert a is None, i
        else:
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m, i=i: f"output {i}: {m}")


@pytest.fixture
def short_chunks(monkeypatch):
    """16-step chunks, so short sequences still cross chunk boundaries (the state carry) and end mid-chunk."""
    monkeypatch.setattr(tri, "chunk_length", lambda n: 16)


def test_cpu_runs_use_the_interpreter():
    """Fails if tests/conftest.py did not switch Triton to its interpreter before triton was first imported, on a
    machine without a GPU: vizoo's kernels and Triton's own jit library (tl.sum, tl.sigmoid) must be interpreted."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels are compiled, not interpreted")
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert tri.INTERPRETED and isinstance(tri._scan_fwd_kernel, InterpretedFunction)
    assert isinstance(standard.sum, InterpretedFunction) and isinstance(standard.sigmoid, InterpretedFunction)


@settings(max_examples=8, deadline=None)
@given(
    b=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    per_group=st.integers(1, 2),
    length=st.integers(1, 33),
    n=st.sampled_from([1, 16]),
    with_d=st.booleans(),
    with_z=st.booleans(),
    with_bias=st.booleans(),
    softplus=st.booleans(),
)
def test_generated_shapes_match_reference(b, groups, per_group, length, n, with_d, with_z, with_bias, softplus):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tri, "chunk_length", lambda n: 16)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(0)  # each example draws the same way, so hypothesis can replay a failure
        inputs = make_inputs(b, groups * per_group, length, n, groups, torch.float32, with_d, with_z, with_bias)
        if not softplus:  # positive step sizes delta + bias, as softplus would give
            inputs[1] = inputs[1].abs()
            inputs[7] = inputs[7].abs() if inputs[7] is not None else None
        grad = torch.randn(b, groups * per_group, length)
        want = run_with_grads("reference", inputs, grad, softplus)
        got = run_with_grads(
            "triton", [t.to(device) if t is not None else None for t in inputs], grad.to(device), softplus
        )
        assert_all_close([t.cpu() if t is not None else None for t in got], want, 1e-4)


@pytest.mark.parametrize(
    "b, d, length, n, g",
    [
        (1, 4, 37, 1, 1),  # n = 1 fast path; l not a multiple of the chunk; batch 1
        (2, 6, 37, 16, 3),  # n = 16, three groups of two channels
        (1, 2, 20, 3, 2),  # n not a power of two
        (1, 1, 18, 64, 1),  # the largest d_state
        (2, 8, 5, 2, 1),  # shorter than one chunk, one group shared by 8 channels
    ],
)
def test_shapes_match_reference(short_chunks, device, b, d, length, n, g):
    inputs = make_inputs(b, d, length, n, g, device=device)
    grad = torch.randn(b, d, length, device=device)
    assert_all_close(run_with_grads("triton", inputs, grad), run_with_grads("reference", inputs, grad), 1e-4)


def test_default_chunks_and_ungrouped_B_C(device):
    inputs = make_inputs(1, 2, 150, 1, 1, device=device)  # 128-step chunks at n = 1
    inputs[3], inputs[4] = inputs[3][:, 0], inputs[4][:, 0]  # (b, n, l): one group
    grad = torch.randn(1, 2, 150, device=device)
    assert_all_close(run_with_grads("triton", inputs, grad), run_with_grads("reference", inputs, grad), 1e-4)


def test_non_contiguous_inputs(short_chunks, device):
    """Transposed storage, every other element of a larger tensor, and a batch-broadcast B: the kernels read strides."""
    b, d, length, n = 2, 4, 24, 4
    bases = {
        "u": torch.randn(b, length, d, device=device),  # transposed storage
        "delta": torch.randn(b, d, 2 * length, device=device) * 0.5,  # every other step
        "B": torch.randn(1, 2, n, length, device=device),  # broadcast over the batch
        "C": torch.randn(b, 2, length, n, device=device),
        "z": torch.randn(b, d, length, device=device),
    }
    A, D = -torch.rand(d, n, device=device) - 0.1, torch.randn(d, device=device)
    grad = torch.randn(d, b, length, device=device).transpose(0, 1)

    def run(backend):
        leaves = {k: v.clone().requires_grad_(True) for k, v in bases.items()}
        views = dict(
            u=leaves["u"].transpose(1, 2),
            delta=leaves["delta"][..., ::2],
            B=leaves["B"].expand(b, -1, -1, -1),
            C=leaves["C"].transpose(2, 3),
            z=leaves["z"],
        )
        assert not any(views[k].is_contiguous() for k in ("u", "delta", "B", "C"))
        y = selective_scan(A=A, D=D, delta_softplus=True, backend=backend, **views)
        y.backward(grad)
        return [y] + [leaves[k].grad for k in bases]

    assert_all_close(run("triton"), run("reference"), 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(short_chunks, device, dtype):
    inputs = make_inputs(2, 4, 30, 16, 2, dtype=dtype, device=device)
    grad = torch.randn(2, 4, 30, device=device, dtype=dtype)
    got = run_with_grads("triton", inputs, grad)
    assert got[0].dtype == dtype and got[2].dtype == dtype and got[3].dtype == dtype  # y, du, ddelta
    # The same inputs upcast: the kernel must match the fp32 computation up to half-precision rounding.
    want = run_with_grads("reference", [t.float() if t is not None else None for t in inputs], grad.float())
    assert_all_close(got, want, 5e-2)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter's fp16 inf
@pytest.mark.parametrize("name", ["reference", "torch", "triton"])
def test_out_fp32_on_every_backend(short_chunks, device, name):
    """fp16 in and out overflows where fp32 out does not; out_fp32 gives the fp32 result on every backend."""
    b, d, length, n = 1, 2, 20, 4
    u = torch.full((b, d, length), 300.0, dtype=torch.float16, device=device)
    delta = torch.ones(b, d, length, dtype=torch.float16, device=device)
    A = torch.full((d, n), -1e-3, device=device)
    B = torch.full((b, 1, n, length), 4.0, dtype=torch.float16, device=device)
    C = B.clone()
    y16 = selective_scan(u, delta, A, B, C, backend=name)
    y32 = selective_scan(u, delta, A, B, C, backend=name, out_fp32=True)
    want = selective_scan(u.float(), delta.float(), A, B.float(), C.float(), backend="reference")
    assert y16.dtype == torch.float16 and not torch.isfinite(y16).all()
    assert y32.dtype == torch.float32 and y32.max() > 65504
    torch.testing.assert_close(y32, want, rtol=1e-4, atol=1e-2)


def test_d_state_limit(device):
    with pytest.raises(ValueError, match="d_state must be in 1..64"):
        selective_scan(*make_inputs(1, 2, 4, 65, 1, device=device)[:5], backend="triton")


def test_default_backend_per_device_and_export(monkeypatch):
    assert backend_mod.default_backend(BACKENDS, torch.device("cpu")) == "torch"
    assert backend_mod.default_backend(BACKENDS, torch.device("cuda")) == "triton"
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert backend_mod.default_backend(BACKENDS, torch.device("cuda")) == "torch"  # ONNX export gets torch ops
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert backend_mod.default_backend(BACKENDS, torch.device("cuda")) == "torch"
    monkeypatch.setattr(backend_mod, "TRITON_INSTALLED", False)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: False)
    assert backend_mod.default_backend(BACKENDS, torch.device("cuda")) == "torch"


def test_forcing_triton_where_it_cannot_run_says_why(monkeypatch):
    inputs = make_inputs(1, 2, 4, 1, 1)[:5]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selective_scan(*inputs, backend="triton")
    with force_backend("triton"), pytest.raises(RuntimeError, match="runs on CUDA tensors"):
        selective_scan(*inputs)
    monkeypatch.setattr(backend_mod, "TRITON_INSTALLED", False)
    with pytest.raises(RuntimeError, match="triton package, which is not installed"):
        selective_scan(*inputs, backend="triton")


def test_compile_and_export_see_one_op(short_chunks, device):
    inputs = make_inputs(1, 4, 20, 2, 2, with_z=False, device=device)

    def scan(u, delta, A, B, C, D, bias):
        return selective_scan(u, delta, A, B, C, D, None, bias, True, backend="triton")

    args = [t for t in inputs if t is not None]
    compiled = torch.compile(scan, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_(True) for t in args]
    y = compiled(*leaves)
    torch.testing.assert_close(y, scan(*args), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert all(t.grad is not None for t in leaves)

    class Scan(torch.nn.Module):
        def forward(self, *args):
            return scan(*args)

    program = torch.export.export(Scan(), tuple(args))
    assert "vizoo.selective_scan_fwd" in str(program.graph)
    torch.testing.assert_close(program.module()(*args), scan(*args))


def test_kernels_compile_for_hopper():
    """The interpreter runs kernels as Python; tools/compile_kernels.py compiles them to sm_90 code (no GPU needed), to
    catch what only Triton's compiler rejects. A fresh process: kernels defined under the interpreter cannot compile."""
    pytest.importorskip("triton.backends.nvidia")
    tool = Path(__file__).parents[2] / "tools" / "compile_kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(tool), "--quick"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("compiled in") == 6


def test_custom_op_passes_opcheck(short_chunks, device):
    """torch.library.opcheck: schema, fake tensors (shapes and strides as the kernels return them), autograd
    registration, and AOT tracing of forward and backward with dynamic shapes. B and C are strided views, as in SS2D."""
    b, d, length, n = 1, 2, 6, 2
    _, B, C = torch.randn(b, 1, 2 * n + 1, length, device=device).split([1, n, n], dim=2)
    u, delta, A, _, _, D, z, bias = make_inputs(b, d, length, n, 1, device=device)
    args = [t.requires_grad_(True) for t in (u, delta.abs(), A, B.detach(), C.detach(), D, z, bias)]
    torch.library.opcheck(tri._selective_scan_fwd, (*args, True, False, True, 16))
