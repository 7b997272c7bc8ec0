"""Linear attention: the torch and Triton paths against the quadratic reference (values and every gradient) over
generated shapes, weights, normalisation, packed ragged sequences, non-contiguous views and dtypes; large-magnitude
fp16/bf16 stays finite; input errors; LightNet's additive recurrence. On a CPU the Triton kernels run through Triton's
interpreter (see tests/conftest.py) with 16-token blocks, so short sequences cross block boundaries."""

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vizoo.kernels import additive_recurrence, force_backend, linear_attention
from vizoo.kernels import backend as backend_mod
from vizoo.kernels.linear_attention import BACKENDS

tri = pytest.importorskip("vizoo.kernels.linear_attention.triton")
linear_attention_module = importlib.import_module("vizoo.kernels.linear_attention.interface")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FAST = ["torch", "triton"]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(tri, "block_n", lambda: 16)


def make_inputs(b, h, n, d, dv, with_w=False, dtype=torch.float32, scale=1.0):
    """q, k positive (as after a feature map such as ELU+1), v signed, weights positive."""
    q = (torch.rand(b, h, n, d) * scale + 0.05).to(dtype)
    k = (torch.rand(b, h, n, d) * scale + 0.05).to(dtype)
    v = (torch.randn(b, h, n, dv) * scale).to(dtype)
    w = (torch.rand(b, h, n) + 0.1).to(dtype) if with_w else None
    return [q, k, v, w]


def run_with_grads(backend, inputs, grad, device=DEVICE, **kwargs):
    """Output and the gradients of q, k, v (and weights) under ``backend``, on ``device``, returned on the CPU."""
    leaves = [t.detach().to(device).requires_grad_(True) if t is not None else None for t in inputs]
    out = linear_attention(*leaves[:3], weights=leaves[3], backend=backend, **kwargs)
    out.backward(grad.to(device))
    return [
        t.detach().cpu() if t is not None else None for t in [out] + [x.grad if x is not None else None for x in leaves]
    ]


def assert_all_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:
            assert a is None, i
        else:
            assert a.dtype == b.dtype, i
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m, i=i: f"output {i}: {m}")


def test_cpu_runs_use_the_interpreter():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels are compiled, not interpreted")
    from triton.runtime.interpreter import InterpretedFunction

    assert tri.INTERPRETED and isinstance(tri._kv_kernel, InterpretedFunction)


@settings(max_examples=10, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 2),
    n=st.integers(1, 40),
    d=st.sampled_from([1, 4, 16, 20]),
    dv=st.sampled_from([1, 4, 8, 70]),
    with_w=st.booleans(),
    normalize=st.booleans(),
)
def test_generated_shapes_match_reference(b, h, n, d, dv, with_w, normalize):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tri, "block_n", lambda: 16)
        torch.manual_seed(0)  # each example draws the same way, so hypothesis can replay a failure
        inputs = make_inputs(b, h, n, d, dv, with_w)
        grad = torch.randn(b, h, n, dv)
        want = run_with_grads("reference", inputs, grad, device="cpu", normalize=normalize)
        for name in FAST:
            assert_all_close(run_with_grads(name, inputs, grad, normalize=normalize), want, 1e-4)


@pytest.mark.parametrize("name", FAST)
def test_non_contiguous_inputs(name):
    """Transposed (b, n, h, d) storage, as a qkv projection gives, and a strided v slice."""
    b, h, n, d = 2, 3, 21, 8
    qkv = torch.rand(b, n, 3, h, d) + 0.1
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    v = torch.randn(b, h, n, 2 * d)[..., ::2]
    w = torch.rand(b, n, h).transpose(1, 2)
    assert not (q.is_contiguous() or v.is_contiguous() or w.is_contiguous())
    grad = torch.randn(b, h, n, d)
    want = run_with_grads("reference", [q, k, v, w], grad, device="cpu")
    assert_all_close(run_with_grads(name, [q, k, v, w], grad), want, 1e-4)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", ["reference", *FAST])
def test_shared_query_key_head_matches_expanded_heads(name, normalize, packed):
    """q and k with one head serve all of v's heads (VSSD's shared B and C): same values and gradients as expanding
    them, and the gradient of the shared head sums over the heads."""
    b, h, n, d, dv = (1, 3, 23, 4, 5)
    q, k, _, _ = make_inputs(b, 1, n, d, dv)
    _, _, v, w = make_inputs(b, h, n, d, dv, with_w=True)
    kwargs = dict(normalize=normalize, cu_seqlens=torch.tensor([0, 9, 23], dtype=torch.int32) if packed else None)
    grad = torch.randn(b, h, n, dv)
    got = run_with_grads(name, [q, k, v, w], grad, device="cpu" if name == "reference" else DEVICE, **kwargs)
    expanded = [t.expand(-1, h, -1, -1) for t in (q, k)]
    want = run_with_grads("reference", [*expanded, v, w], grad, device="cpu", **kwargs)
    assert got[0].shape == (b, h, n, dv)
    want[1], want[2] = (g.sum(1, keepdim=True) for g in want[1:3])  # expand's backward
    assert_all_close(got, want, 1e-4)


RAGGED = [[5, 0, 17, 1, 33], [16], [3, 40], [1, 1, 1]]


@pytest.mark.parametrize("lengths", RAGGED)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", FAST)
def test_packed_sequences_match_each_sequence_alone(name, normalize, lengths):
    total, h, d, dv = sum(lengths), 2, 4, 6
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    inputs = make_inputs(1, h, total, d, dv, with_w=True)
    grad = torch.randn(1, h, total, dv)
    kwargs = dict(normalize=normalize, cu_seqlens=cu.to(DEVICE))
    got = run_with_grads(name, inputs, grad, **kwargs)
    assert_all_close(
        got, run_with_grads("reference", inputs, grad, device="cpu", normalize=normalize, cu_seqlens=cu), 1e-4
    )
    # Each sequence on its own gives the same rows and gradients.
    pieces = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        part = [t[:, :, start:end] for t in inputs]
        pieces.append(run_with_grads(name, part, grad[:, :, start:end], normalize=normalize))
    alone = [torch.cat([p[i] for p in pieces], dim=2) for i in range(5)]
    assert_all_close(got, alone, 1e-4)


@pytest.mark.parametrize("name", FAST)
def test_kv_scale_mean_is_per_sequence(name):
    """kv_scale='mean' scales each key by 1/len(its sequence): unnormalised output equals q·mean_j(k_jᵀ v_j)."""
    lengths = [3, 10]
    q, k, v, _ = make_inputs(1, 1, 13, 4, 4)
    cu = torch.tensor([0, 3, 13], dtype=torch.int32, device=DEVICE)
    got = linear_attention(
        *(t.to(DEVICE) for t in (q, k, v)), normalize=False, cu_seqlens=cu, kv_scale="mean", backend=name
    )
    want = []
    for start, n in zip([0, 3], lengths):
        qs, ks, vs = q[..., start : start + n, :], k[..., start : start + n, :], v[..., start : start + n, :]
        want.append(qs @ (ks.transpose(-1, -2) @ vs) / n)
    torch.testing.assert_close(got.cpu(), torch.cat(want, 2), rtol=1e-5, atol=1e-5)
    plain = linear_attention(q, k, v, kv_scale=0.5, normalize=False)
    torch.testing.assert_close(plain, linear_attention(q, k, v, normalize=False) * 0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", FAST)
def test_half_inputs_accumulate_in_fp32(name, dtype):
    inputs = make_inputs(2, 2, 37, 8, 8, with_w=True, dtype=dtype)
    grad = torch.randn(2, 2, 37, 8).to(dtype)
    want = run_with_grads("reference", [t.float() for t in inputs], grad.float(), device="cpu")
    got = run_with_grads(name, inputs, grad)
    assert all(t.dtype == dtype for t in got)
    assert_all_close([t.float() for t in got], want, 2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["reference", *FAST])
def test_large_magnitudes_stay_finite(name, dtype):
    """Entries up to ~100 over 200 tokens: k·v sums reach ~1e9 and q·Σk ~1e7, beyond fp16's 65504, yet the outputs and
    gradients stay finite because the sums are fp32. Unnormalised bf16 too, with the 1/N pre-scaling."""
    inputs = make_inputs(1, 2, 200, 16, 16, with_w=True, dtype=dtype, scale=100.0)
    grad = torch.ones(1, 2, 200, 16, dtype=dtype)
    device = "cpu" if name == "reference" else DEVICE
    for t in run_with_grads(name, inputs, grad, device=device):
        assert torch.isfinite(t).all()
    if dtype == torch.bfloat16:
        out = linear_attention(*(t.to(device) for t in inputs[:3]), normalize=False, kv_scale="mean", backend=name)
        assert torch.isfinite(out).all()


def test_weights_gradient_through_kv_scale():
    """weights and kv_scale combine; the gradient of weights flows through the scaling on every backend."""
    inputs = make_inputs(1, 2, 19, 4, 4, with_w=True)
    grad = torch.randn(1, 2, 19, 4)
    want = run_with_grads("reference", inputs, grad, device="cpu", kv_scale="mean", normalize=False)
    for name in FAST:
        assert_all_close(run_with_grads(name, inputs, grad, kv_scale="mean", normalize=False), want, 1e-4)


def test_default_backend_and_forcing():
    q, k, v, _ = make_inputs(1, 1, 5, 2, 2)
    assert backend_mod.default_backend(BACKENDS, torch.device("cpu")) == "torch"
    assert backend_mod.default_backend(BACKENDS, torch.device("cuda")) in ("triton", "torch")
    with force_backend("reference"):
        torch.testing.assert_close(linear_attention(q, k, v), linear_attention(q, k, v, backend="torch"))


def test_forcing_triton_where_it_cannot_run_says_why(monkeypatch):
    q, k, v, _ = make_inputs(1, 1, 5, 2, 2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        linear_attention(q, k, v, backend="triton")
    monkeypatch.setattr(backend_mod, "TRITON_INSTALLED", False)
    with pytest.raises(RuntimeError, match="triton package, which is not installed"):
        linear_attention(q, k, v, backend="triton")


def test_bad_inputs_say_what_is_wrong():
    q, k, v, w = make_inputs(1, 2, 6, 4, 3, with_w=True)
    cases = [
        (dict(q=q[0]), "q must be a 4-d tensor"),
        (dict(k=k[..., :3]), "k must have q's shape"),
        (dict(v=v[:, :, :5]), "v must be"),
        (dict(v=torch.cat([v, v], dim=1), weights=None), "v must be"),
        (dict(weights=w[..., :5]), "weights must be"),
        (dict(q=q.long()), "floating point"),
        (dict(cu_seqlens=torch.tensor([0, 6.0])), "cu_seqlens must be a 1-d int32"),
        (dict(cu_seqlens=torch.tensor([[0, 6]], dtype=torch.int32)), "cu_seqlens must be a 1-d int32"),
        (dict(cu_seqlens=torch.tensor([1, 6], dtype=torch.int32)), "start at 0"),
        (dict(cu_seqlens=torch.tensor([0, 4, 2, 6], dtype=torch.int32)), "never decrease"),
        (dict(cu_seqlens=torch.tensor([0, 5], dtype=torch.int32)), "end at the packed length 6"),
        (dict(kv_scale="sum"), "kv_scale must be"),
        (dict(backend="cuda"), "unknown backend"),
    ]
    for change, message in cases:
        args = dict(q=q, k=k, v=v) | change
        with pytest.raises(ValueError, match=message):
            linear_attention(**args)
    batched = [torch.cat([t, t]) for t in (q, k, v)]
    with pytest.raises(ValueError, match="pack the sequences along tokens"):
        linear_attention(*batched, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match="v must be"):
        additive_recurrence(q[:, :1], k[:, :1], v)  # no shared head for the recurrence
    with pytest.raises(ValueError, match="head dims up to"):
        linear_attention(q.new_ones(1, 1, 2, 300), q.new_ones(1, 1, 2, 300), v[:, :1, :2], backend="triton")


def test_torch_path_exports_without_einsum_or_loops():
    """The torch path traces to plain matmuls and reductions (what the ONNX tests require of the models)."""

    class Attn(torch.nn.Module):
        def forward(self, q, k, v, w):
            return linear_attention(q, k, v, weights=w, kv_scale="mean")

    inputs = make_inputs(1, 2, 9, 4, 4, with_w=True)
    program = torch.export.export(Attn(), tuple(inputs))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("einsum" in op or "while" in op or "scan" in op for op in ops), ops
    torch.testing.assert_close(program.module()(*inputs), Attn()(*inputs))


# ----------------------------------------------------------------------------------------------------------------
# LightNet's additive recurrence.


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 0, 9, 1]])
def test_additive_recurrence_closed_form_matches_the_scan(causal, lengths):
    n = 14 if lengths is None else sum(lengths)
    cu = None if lengths is None else torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4) * 3, torch.randn(1, 2, n, 5)
    grad = torch.randn(1, 2, n, 5)
    results = []
    for name in ("reference", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = additive_recurrence(*leaves, causal=causal, cu_seqlens=cu, backend=name)
        out.backward(grad)
        results.append([out] + [t.grad for t in leaves])
    assert_all_close(results[1], results[0], 1e-4)


def test_additive_recurrence_is_softmax_weighted_linear_attention():
    """Non-causal: q·(softmax over tokens of k)ᵀ v, and stays finite for logits of 1e4 in bf16."""
    q, k, v = torch.randn(2, 2, 11, 4), torch.randn(2, 2, 11, 4), torch.randn(2, 2, 11, 3)
    want = q @ (torch.softmax(k, dim=-2).transpose(-1, -2) @ v)
    torch.testing.assert_close(additive_recurrence(q, k, v), want)
    big = additive_recurrence(q.bfloat16(), (k * 1e4).bfloat16(), v.bfloat16())
    assert big.dtype == torch.bfloat16 and torch.isfinite(big).all()
