"""The chunked torch selective scan against the sequential reference: values, gradients, dtypes, layouts, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vizoo.kernels import count_kernel_macs, force_backend, selective_scan, selective_scan_macs


def make_inputs(b, d, length, n, g, dtype=torch.float32, with_d=True, with_z=True, with_bias=True, grouped=True):
    u = torch.randn(b, d, length, dtype=dtype)
    delta = (torch.randn(b, d, length) * 0.5).to(dtype)
    A = -torch.rand(d, n) * 4 - 0.1
    shape = (b, g, n, length) if grouped else (b, n, length)
    B = torch.randn(*shape, dtype=dtype)
    C = torch.randn(*shape, dtype=dtype)
    D = torch.randn(d) if with_d else None
    z = torch.randn(b, d, length, dtype=dtype) if with_z else None
    bias = torch.randn(d) * 0.5 if with_bias else None
    return u, delta, A, B, C, D, z, bias


def run(backend, inputs, softplus=True, last_state=False):
    u, delta, A, B, C, D, z, bias = inputs
    return selective_scan(u, delta, A, B, C, D, z, bias, softplus, last_state, backend=backend)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    per_group=st.integers(1, 3),
    length=st.integers(1, 70),
    n=st.sampled_from([1, 2, 16]),
    with_d=st.booleans(),
    with_z=st.booleans(),
    with_bias=st.booleans(),
    softplus=st.booleans(),
    grouped=st.booleans(),
)
def test_values_and_last_state_match_reference(
    b, groups, per_group, length, n, with_d, with_z, with_bias, softplus, grouped
):
    torch.manual_seed(0)  # each example draws the same way, so hypothesis can replay a failure
    inputs = make_inputs(
        b, groups * per_group, length, n, groups if grouped else 1, torch.float32, with_d, with_z, with_bias, grouped
    )
    if not softplus:  # keep the step sizes delta + bias positive, as softplus would
        bias = inputs[7].abs() if inputs[7] is not None else None
        inputs = (inputs[0], inputs[1].abs()) + inputs[2:7] + (bias,)
    y_ref, h_ref = run("reference", inputs, softplus, last_state=True)
    y, h = run("torch", inputs, softplus, last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    assert h.shape == (b, groups * per_group, n) and not h.requires_grad


@pytest.mark.parametrize(
    "b,d,length,n,g",
    [(1, 4, 1, 1, 1), (2, 6, 37, 16, 3), (1, 8, 65, 1, 4), (2, 4, 130, 4, 2), (1, 4, 196, 1, 2), (2, 4, 42, 16, 2)],
)
def test_gradients_match_reference(b, d, length, n, g):
    inputs = make_inputs(b, d, length, n, g)
    grads = {}
    for backend in ("reference", "torch"):
        leaves = [t.clone().requires_grad_(True) if t is not None else None for t in inputs]
        y = run(backend, leaves)
        y.backward(torch.ones_like(y) + torch.arange(length) / length)
        grads[backend] = [t.grad for t in leaves]
    for g_ref, g_torch in zip(grads["reference"], grads["torch"]):
        torch.testing.assert_close(g_torch, g_ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(dtype):
    inputs = make_inputs(2, 8, 50, 4, 2, dtype=dtype)
    y = run("torch", inputs)
    assert y.dtype == dtype
    # Same inputs upcast: the kernel must match the fp32 computation up to the output rounding.
    y32 = run("reference", [t.float() if t is not None else None for t in inputs])
    torch.testing.assert_close(y.float(), y32, rtol=1e-2, atol=1e-2)


def test_non_contiguous_inputs():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 6, 40, 4, 2)
    # Same values through transposed storage.
    nc = lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731
    inputs_nc = (nc(u), nc(delta), A.t().contiguous().t(), nc(B), nc(C), D, nc(z), bias)
    assert not inputs_nc[0].is_contiguous() and not inputs_nc[3].is_contiguous()
    torch.testing.assert_close(
        run("torch", inputs_nc), run("reference", (u, delta, A, B, C, D, z, bias)), rtol=1e-4, atol=1e-4
    )


def test_stable_for_large_steps_and_long_sequences():
    """Strong decays over a long sequence: exp of cumulative sums would overflow here; the scan must not."""
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 3000, 16, 1)
    delta = delta.abs() * 30.0
    A = A * 25.0
    y = run("torch", (u, delta, A, B, C, D, z, None), softplus=False)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(
        y, run("reference", (u, delta, A, B, C, D, z, None), softplus=False), rtol=1e-4, atol=1e-4
    )


def test_no_decay_accumulates_exactly():
    """A = 0 makes the state a running sum of delta*u*B: a closed form to check against."""
    u = torch.randn(1, 3, 100)
    delta = torch.rand(1, 3, 100)
    B = torch.randn(1, 1, 1, 100)
    C = torch.ones(1, 1, 1, 100)
    y = selective_scan(u, delta, torch.zeros(3, 1), B, C, backend="torch")
    torch.testing.assert_close(y, torch.cumsum(delta * u * B[:, 0], dim=-1), rtol=1e-4, atol=1e-4)


def test_default_backend_and_force_backend():
    inputs = make_inputs(1, 4, 20, 2, 1)
    with force_backend("reference"):
        y_forced = run(None, inputs)
    torch.testing.assert_close(run(None, inputs), y_forced, rtol=1e-4, atol=1e-4)
    with force_backend("nope"), pytest.raises(ValueError, match="unknown backend 'nope'"):
        run(None, inputs)


def test_exports_with_torch_export():
    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C):
            return selective_scan(u, delta, A, B, C, delta_softplus=True, backend="torch")

    args = make_inputs(1, 4, 24, 2, 1)[:5]
    program = torch.export.export(Scan(), args)
    torch.testing.assert_close(program.module()(*args), Scan()(*args))


def test_macs_formula_and_counting():
    assert selective_scan_macs(2, 8, 10, 4, with_d=True, with_z=False) == 9 * 2 * 10 * 8 * 4 + 2 * 8 * 10
    inputs = make_inputs(2, 8, 10, 4, 2, with_z=False)
    with count_kernel_macs() as macs:
        run("torch", inputs)
    assert macs["selective_scan"] == selective_scan_macs(2, 8, 10, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=torch.randn(2, 4)), "u must be"),
        (dict(delta=torch.randn(1, 4, 5)), "delta must have"),
        (dict(A=torch.randn(3, 2)), "A must be"),
        (dict(B=torch.randn(1, 3, 2, 10)), "B must be"),
        (dict(C=torch.randn(1, 2, 2, 9)), "C must be"),
        (dict(D=torch.randn(5)), "D must be"),
        (dict(backend="cuda-magic"), "unknown backend"),
    ],
)
def test_bad_inputs_say_what_is_wrong(change, message):
    kwargs = dict(
        u=torch.randn(1, 4, 10),
        delta=torch.rand(1, 4, 10),
        A=-torch.rand(4, 2),
        B=torch.randn(1, 2, 2, 10),
        C=torch.randn(1, 2, 2, 10),
        D=torch.randn(4),
    )
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**kwargs)


@pytest.mark.parametrize(
    "length,size", [(3136, 8), (196, 7), (49, 7), (42, 7), (30, 6), (25, 5), (130, 5), (131, 8), (37, 8)]
)
def test_chunk_size_divides_the_length_where_it_can(length, size):
    from vizoo.kernels.selective_scan.chunked import chunk_size

    assert chunk_size(length) == size


@pytest.mark.parametrize("exporting", [False, True], ids=["eager", "export"])
def test_softplus_matches_torch_for_any_input(monkeypatch, exporting):
    """Both forms of softplus (torch's op, and the export-friendly composite) against float64 ``F.softplus``: values
    to 1e-6 absolute from -1e4 to 1e4 (finite at +-1e30), gradients to 1e-6, including sigmoid(0) = 1/2 at 0 where
    ``abs`` alone would give 0."""
    from vizoo.kernels.selective_scan import chunked
    from vizoo.kernels.selective_scan.chunked import softplus

    monkeypatch.setattr(chunked, "is_exporting", lambda: exporting)

    x = torch.cat([torch.linspace(-60, 60, 24001), torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4])]).requires_grad_(True)
    y = softplus(x)
    y.sum().backward()
    want = torch.nn.functional.softplus(x.detach().double())
    torch.testing.assert_close(y.double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), torch.sigmoid(x.detach().double()), rtol=0, atol=1e-6)
    assert x.grad[x.detach() == 0].item() == 0.5
    assert torch.isfinite(softplus(torch.tensor([-1e30, 1e30]))).all()


@pytest.mark.parametrize("top", [60.0, 80.0, 1e4], ids=["in-place", "at-limit", "overflowing"])
def test_softplus_inference_form_matches_torch(top):
    """Without autograd on a CPU, fp32 inputs up to 80 take exp, +1, log in place; a larger value anywhere sends the
    whole tensor to torch's op, so nothing overflows. Values to 1e-6 absolute against float64, input untouched."""
    from vizoo.kernels.selective_scan.chunked import softplus

    x = torch.cat([torch.linspace(-60, 60, 24001), torch.tensor([-1e4, 0.0, top])]).unflatten(0, (4, -1)).t()
    before = x.clone()
    with torch.no_grad():
        y = softplus(x)
    want = torch.nn.functional.softplus(x.double())
    torch.testing.assert_close(y.double(), want, rtol=0, atol=1e-6)
    assert torch.isfinite(y).all() and torch.equal(x, before)
    assert softplus(torch.empty(0, 4)).shape == (0, 4)


def spy_stepwise(monkeypatch):
    """Count the calls of the stepwise CPU loop (``selective_scan.stepwise``) and let it run whatever the state size."""
    from vizoo.kernels.selective_scan import chunked, stepwise

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return stepwise.scan_stepwise(*args, **kwargs)

    monkeypatch.setattr(stepwise, "STEPWISE_MIN_STATE", 0)
    monkeypatch.setattr(chunked, "scan_stepwise", counted)
    return calls


@pytest.mark.parametrize(
    "b,d,length,n,g,dtype",
    [
        (1, 64, 37, 16, 1, torch.float32),
        (2, 48, 50, 8, 3, torch.float32),
        (1, 32, 1, 64, 2, torch.float32),
        (2, 40, 23, 16, 4, torch.bfloat16),
    ],
)
def test_stepwise_inference_path_matches_reference(monkeypatch, b, d, length, n, g, dtype):
    """Without autograd, n > 1 on the CPU runs the stepwise loop: values and last state equal the reference's (odd
    lengths, one step, groups, batch 1, bf16, non-contiguous u)."""
    calls = spy_stepwise(monkeypatch)
    torch.manual_seed(0)
    u, delta, A, B, C, D, z, bias = make_inputs(b, d, length, n, g, dtype)
    u = u.transpose(1, 2).contiguous().transpose(1, 2)  # same values, channel-last strides
    inputs = (u, delta, A, B, C, D, z, bias)
    with torch.no_grad():
        y, h = run("torch", inputs, last_state=True)
    y_ref, h_ref = run("reference", inputs, last_state=True)
    assert calls == [(b, d, length)]
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    assert y.dtype == dtype and h.dtype == torch.float32


def test_training_forward_runs_stepwise_and_gradients_match_reference(monkeypatch):
    """With autograd, the forward of the recomputed scan runs the stepwise loop (it keeps no graph); the backward
    still differentiates the blocked scan: gradients equal the reference's."""
    calls = spy_stepwise(monkeypatch)
    torch.manual_seed(0)
    inputs = make_inputs(2, 12, 29, 16, 3)
    grads = {}
    for backend in ("torch", "reference"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = run(backend, leaves)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=torch.float32)).view_as(y))
        grads[backend] = [y.detach()] + [t.grad for t in leaves]
    assert calls == [(2, 12, 29)]
    for got, want in zip(grads["torch"], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


def test_stepwise_only_where_it_pays_and_nothing_traces(monkeypatch):
    """The blocked scan runs for n = 1, for states below STEPWISE_MIN_STATE, and under compile or export."""
    from vizoo.kernels.selective_scan.stepwise import STEPWISE_MIN_STATE, stepwise_applies

    u, A16, A1 = torch.empty(1, 256, 10), torch.empty(256, 16), torch.empty(256, 1)
    assert 256 * 16 >= STEPWISE_MIN_STATE > 8 * 16
    assert stepwise_applies(u, A16)
    assert not stepwise_applies(u, A1)
    assert not stepwise_applies(torch.empty(1, 8, 10), torch.empty(8, 16))
    for flag in ("is_compiling", "is_exporting"):
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, flag, lambda: True)
            assert not stepwise_applies(u, A16)
