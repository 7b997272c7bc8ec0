"""Bi-WKV (Vision-RWKV): the chunked torch path and the Triton kernels against the quadratic reference, values and
the gradients of w, u, k and v, over generated shapes and chunk lengths, fp32 and bf16, T = 1, odd channel counts,
non-contiguous k / v, negative w and large k; autocast; ONNX export with onnxruntime parity; the torch path's memory
growth; the custom op's registration; input errors. On a CPU the Triton kernels run through Triton's interpreter
(see tests/conftest.py) with 16-channel blocks, so small channel counts still cross block boundaries."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vizoo.kernels import bi_wkv, count_kernel_macs, force_backend
from vizoo.kernels.bi_wkv import BACKENDS, bi_wkv_macs, chunked
from vizoo.kernels.bi_wkv.reference import bi_wkv_reference

tri = pytest.importorskip("vizoo.kernels.bi_wkv.triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FAST = ["torch", "triton"]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(tri, "block_c", lambda channels: 16)


def make_inputs(b, t, c, dtype=torch.float32, k_scale=1.0, w_scale=1.0, seed=0):
    """w of both signs divided by T as Vision-RWKV divides it, u likewise, k and v standard normal (k scaled)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, generator=g) * w_scale / max(t, 1) * 4
    u = torch.randn(c, generator=g) / max(t, 1)
    k = (torch.randn(b, t, c, generator=g) * k_scale).to(dtype)
    v = torch.randn(b, t, c, generator=g).to(dtype)
    return [w, u, k, v]


def run_with_grads(backend, inputs, grad, device=DEVICE):
    """Output and the gradients of w, u, k, v under ``backend`` on ``device``, returned on the CPU."""
    leaves = [t.detach().to(device).requires_grad_(True) for t in inputs]
    out = bi_wkv(*leaves, backend=backend)
    out.backward(grad.to(device))
    return [t.detach().cpu() for t in [out] + [x.grad for x in leaves]]


def assert_all_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype, i
        assert torch.isfinite(a).all(), i
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m, i=i: f"output {i}: {m}")


def test_cpu_runs_use_the_interpreter():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels are compiled, not interpreted")
    from triton.runtime.interpreter import InterpretedFunction

    assert tri.INTERPRETED and isinstance(tri._fwd_kernel, InterpretedFunction)


def test_custom_op_passes_opcheck():
    """vizoo::bi_wkv_fwd: schema, fake (meta) implementation, autograd registration and AOT dispatch."""
    w, u, k, v = (x.to(DEVICE).requires_grad_(True) for x in make_inputs(2, 6, 5))
    results = torch.library.opcheck(tri._bi_wkv_fwd, (w, u, k, v, 16))
    assert set(results.values()) == {"SUCCESS"}, results


def test_reference_is_the_definition():
    """The reference against the formula written out token by token in float64, the official epsilon added to the
    denominator scaled by its largest term."""
    w, u, k, v = make_inputs(2, 6, 3, w_scale=-3.0)
    w64, u64, k64, v64 = (x.double() for x in (w, u, k, v))
    want = torch.empty(2, 6, 3, dtype=torch.float64)
    for t in range(6):
        exps = [u64 + k64[:, t] if i == t else -(abs(t - i) - 1) * w64 + k64[:, i] for i in range(6)]
        top = torch.stack(exps).amax(0)
        num = sum(torch.exp(e - top) * v64[:, i] for i, e in enumerate(exps))
        den = sum(torch.exp(e - top) for e in exps)
        want[:, t] = num / (den + 1e-6)
    torch.testing.assert_close(bi_wkv_reference(w, u, k, v).double(), want, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(
    b=st.integers(1, 2),
    t=st.integers(1, 40),
    c=st.sampled_from([1, 3, 17, 20]),
    chunk=st.sampled_from([2, 3, 4]),
    w_scale=st.sampled_from([-2.0, 1.0, 8.0]),
)
def test_generated_shapes_match_reference(b, t, c, chunk, w_scale):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tri, "block_c", lambda channels: 16)
        mp.setattr(chunked, "chunk_length", lambda n: chunk)
        inputs = make_inputs(b, t, c, w_scale=w_scale)
        grad = torch.randn(b, t, c, generator=torch.Generator().manual_seed(1))
        want = run_with_grads("reference", inputs, grad, device="cpu")
        for name in FAST:
            assert_all_close(run_with_grads(name, inputs, grad), want, 1e-4)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("b, t, c", [(1, 1, 5), (1, 7, 3), (2, 7, 33), (1, 2, 1)])
def test_odd_shapes(name, b, t, c):
    inputs = make_inputs(b, t, c)
    grad = torch.randn(b, t, c)
    assert_all_close(run_with_grads(name, inputs, grad), run_with_grads("reference", inputs, grad, "cpu"), 1e-5)


def test_single_token_is_v():
    """With one token the sum holds only the token's own term: y = v / (1 + 1e-6), and only the epsilon's share of a
    gradient reaches u and k (none reaches w)."""
    w, u, k, v = make_inputs(2, 1, 4)
    for name in FAST:
        got = run_with_grads(name, [w, u, k, v], torch.ones(2, 1, 4))
        torch.testing.assert_close(got[0], v / (1 + 1e-6), rtol=1e-7, atol=1e-7)
        assert not got[1].any() and got[2].abs().max() < 1e-5 and got[3].abs().max() < 1e-5


@pytest.mark.parametrize("name", FAST)
def test_non_contiguous_inputs(name):
    """k as a strided slice of a packed (B, T, 2C) projection, v transposed storage, the gradient transposed too."""
    b, t, c = 2, 13, 20
    w, u, _, _ = make_inputs(b, t, c)
    kk = torch.randn(b, t, 2 * c, device=DEVICE)  # made on the device: .to() would copy a strided view densely
    k, v = kk[..., ::2], torch.randn(b, c, t, device=DEVICE).transpose(1, 2)
    grad = torch.randn(b, c, t, device=DEVICE).transpose(1, 2)
    assert not (k.is_contiguous() or v.is_contiguous() or grad.is_contiguous())
    want = run_with_grads("reference", [w, u, k, v], grad, device="cpu")
    got = run_with_grads(name, [w.to(DEVICE), u.to(DEVICE), k, v], grad)
    assert_all_close(got, want, 1e-5)


@pytest.mark.parametrize("name", FAST)
def test_negative_w_weights_grow_with_distance(name, monkeypatch):
    """w < 0 (allowed: Vision-RWKV does not exp-transform it): far tokens dominate; exponents reach T·|w|."""
    monkeypatch.setattr(chunked, "chunk_length", lambda n: 3)
    b, t, c = 1, 30, 17
    w, u, k, v = make_inputs(b, t, c)
    w = -torch.rand(c) * 3  # e^{29·3} would overflow fp32 without the shift
    grad = torch.randn(b, t, c)
    want = run_with_grads("reference", [w, u, k, v], grad, device="cpu")
    assert_all_close(run_with_grads(name, [w, u, k, v], grad), want, 1e-4)


@pytest.mark.parametrize("name", FAST)
def test_large_k_stays_finite(name, monkeypatch):
    """k spread over hundreds (e^{k} alone overflows fp32, and a chunk's keys span more than exp()'s range): the
    output and gradients stay finite and equal the reference's."""
    monkeypatch.setattr(chunked, "chunk_length", lambda n: 3)
    inputs = make_inputs(2, 23, 20, k_scale=150.0)
    assert inputs[2].abs().max() > 200
    grad = torch.randn(2, 23, 20)
    want = run_with_grads("reference", inputs, grad, device="cpu")
    assert all(torch.isfinite(x).all() for x in want)
    assert_all_close(run_with_grads(name, inputs, grad), want, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", FAST)
def test_half_precision_inputs(name, dtype):
    """bf16 / fp16 k and v: fp32 inside, output and gradients in the input dtype, as the reference on the same inputs
    up to the final rounding."""
    inputs = make_inputs(2, 19, 20, dtype=dtype)
    grad = torch.randn(2, 19, 20).to(dtype)
    want = run_with_grads("reference", inputs, grad, device="cpu")
    got = run_with_grads(name, inputs, grad)
    assert got[0].dtype == dtype and got[3].dtype == dtype and got[4].dtype == dtype
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    assert_all_close(got, want, 2e-2)


def test_autocast_computes_in_fp32_and_returns_v_dtype():
    w, u, k, v = make_inputs(1, 9, 6)
    k16, v16 = k.bfloat16(), v.bfloat16()
    for name in ("reference", "torch"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bi_wkv(w, u, k16, v16, backend=name)
            out32 = bi_wkv(w, u, k, v, backend=name)
        assert out.dtype == torch.bfloat16 and out32.dtype == torch.float32
        assert torch.equal(out, bi_wkv(w, u, k16.float(), v16.float(), backend=name).bfloat16())


def test_default_backend_on_cpu_is_torch(monkeypatch):
    calls = []
    monkeypatch.setitem(BACKENDS, "torch", lambda *args: calls.append("torch") or bi_wkv_reference(*args))
    inputs = make_inputs(1, 5, 3)
    bi_wkv(*inputs)
    with force_backend("reference"):
        bi_wkv(*inputs)
    assert calls == ["torch"]


def test_macs_are_counted_as_the_paper_counts_them():
    """29 MACs per token and channel (the official get_flops_backbone.py), recorded on every backend."""
    with count_kernel_macs() as macs:
        for name in ("reference", "torch"):
            bi_wkv(*make_inputs(2, 5, 3), backend=name)
    assert macs["bi_wkv"] == 2 * bi_wkv_macs(2, 5, 3) == 2 * 29 * 2 * 5 * 3


def test_torch_path_memory_is_linear_in_tokens():
    """What autograd keeps for the torch path grows linearly with T (fixed-size blocks at every level of the
    chunking), a few dozen numbers per input element; the reference's (T, T) blocks grow quadratically."""

    def saved_bytes(t):
        storages = {}

        def pack(x):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        w, u, k, v = (x.requires_grad_(True) for x in make_inputs(1, t, 8))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            bi_wkv(w, u, k, v, backend="torch")
        return sum(storages.values())

    small, large = saved_bytes(256), saved_bytes(2048)
    assert large < 9 * small
    assert large < 48 * 2048 * 8 * 4  # fp32 numbers per input element; the reference's block alone is 2048


def test_onnx_export_parity(tmp_path):
    """The torch path exports (opset 17, dynamo, dynamic batch) without loops and runs in onnxruntime with the
    reference's values, at another batch size than the one exported."""
    ort = pytest.importorskip("onnxruntime")

    class Mix(torch.nn.Module):
        def __init__(self, w, u):
            super().__init__()
            self.w, self.u = torch.nn.Parameter(w), torch.nn.Parameter(u)

        def forward(self, k, v):
            return bi_wkv(self.w, self.u, k, v)

    w, u, k, v = make_inputs(2, 37, 6, w_scale=-2.0)
    model = Mix(w, u).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (k, v),
            dynamo=True,
            opset_version=17,
            input_names=["k", "v"],
            output_names=["y"],
            dynamic_shapes=({0: "batch"}, {0: "batch"}),
            verbose=False,
        )
    program.save(str(tmp_path / "bi_wkv.onnx"))
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert not ops & {"Loop", "If", "Scan"}, ops
    session = ort.InferenceSession(str(tmp_path / "bi_wkv.onnx"), providers=["CPUExecutionProvider"])
    _, _, k, v = make_inputs(3, 37, 6, seed=1)
    (got,) = session.run(None, {"k": k.numpy(), "v": v.numpy()})
    want = bi_wkv_reference(w, u, k, v).numpy()
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w, u, k, v: (w, u, k, v[:, :-1]), "v must have k's shape"),
        (lambda w, u, k, v: (w, u, k[0], v[0]), "k must be a 3-d tensor"),
        (lambda w, u, k, v: (w[:-1], u, k, v), r"w must be a \(C,\) = \(4,\) tensor"),
        (lambda w, u, k, v: (w, u[None], k, v), r"u must be a \(C,\) = \(4,\) tensor"),
        (lambda w, u, k, v: (w.bfloat16(), u, k, v), r"w must be fp32.*pass w.float\(\)"),
        (lambda w, u, k, v: (w, u, k.long(), v), "k must be floating point"),
        (lambda w, u, k, v: (w, u, k, v.half()), "k and v must share a dtype"),
        (lambda w, u, k, v: (w, u, k, v.numpy()), "v must be a 3-d tensor"),
        (lambda w, u, k, v: (w, u, k[:, :0], v[:, :0]), "hold no tokens"),
    ],
)
def test_bad_inputs_say_what_to_pass(change, message):
    with pytest.raises(ValueError, match=message):
        bi_wkv(*change(*make_inputs(2, 5, 4)))


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; choose one of \['reference', 'torch', 'triton'\]"):
        bi_wkv(*make_inputs(1, 3, 2), backend="cuda")
