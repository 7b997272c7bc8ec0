"""The compiled CPU loop of ``selective_scan`` (backend "cpu", numba) against the reference: values, last states and
gradients over shapes, d_state, groups (channel blocks that straddle them), gates, dtypes and layouts; what training
keeps; and which calls take it."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vizoo.kernels import force_backend, selective_scan
from vizoo.kernels.selective_scan import cpu


def make_inputs(b, d, length, n, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, delta, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) * 4 - 0.1
    B, C = torch.randn(b, groups, n, length, generator=g), torch.randn(b, groups, n, length, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) - 1
    return u, delta * 0.5, A, B, C, D, z, bias


@pytest.mark.parametrize(
    "b, d, length, n, groups",
    [(1, 16, 33, 16, 1), (2, 40, 7, 1, 4), (3, 17, 5, 4, 1), (1, 8, 1, 2, 2), (2, 96, 50, 16, 3), (4, 48, 9, 1, 1)],
)
@pytest.mark.parametrize("gated", [True, False])
@torch.no_grad()
def test_cpu_loop_matches_reference(b, d, length, n, groups, gated):
    u, delta, A, B, C, D, z, bias = make_inputs(b, d, length, n, groups)
    z = z if gated else None
    kwargs = dict(delta_softplus=True, return_last_state=True)
    want, want_last = selective_scan(u, delta, A, B, C, D, z, bias, backend="reference", **kwargs)
    got, got_last = selective_scan(u, delta, A, B, C, D, z, bias, backend="cpu", **kwargs)
    assert got.shape == want.shape and got.is_contiguous() and got_last.shape == (b, d, n)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got_last, want_last, rtol=2e-5, atol=2e-5)


@torch.no_grad()
def test_cpu_loop_optional_inputs_layouts_and_dtypes():
    """No D, bias or softplus (positive steps); one-group B and C as (b, n, L); a transposed u; bf16 in and out."""
    u, delta, A, B, C, D, z, bias = make_inputs(2, 24, 11, 4, 1)
    cases = [
        ((u, delta.abs(), A, B, C), {}),
        ((u, delta, A, B[:, 0], C[:, 0], None, z, bias), {"delta_softplus": True}),
        ((u.transpose(1, 2).contiguous().transpose(1, 2), delta, A, B, C, D, None, bias), {"delta_softplus": True}),
    ]
    for args, kwargs in cases:
        want = selective_scan(*args, backend="reference", **kwargs)
        torch.testing.assert_close(selective_scan(*args, backend="cpu", **kwargs), want, rtol=2e-5, atol=2e-5)
    low = (u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, z.bfloat16(), bias)
    got = selective_scan(*low, delta_softplus=True, backend="cpu")
    want = selective_scan(*low, delta_softplus=True, backend="reference")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_default_takes_the_loop_for_eager_calls(monkeypatch):
    """Eager CPU calls take the loop, training too; FLOP counting and a forced backend take torch."""
    calls = []
    loop = cpu.selective_scan_cpu
    monkeypatch.setattr(cpu, "selective_scan_cpu", lambda *a, **k: calls.append(1) or loop(*a, **k))
    inputs = make_inputs(1, 16, 9, 4, 1)

    def taken(run):
        calls.clear()
        run()
        return bool(calls)

    with torch.no_grad():
        assert taken(lambda: selective_scan(*inputs, delta_softplus=True))
        with FlopCounterMode(display=False):
            assert not taken(lambda: selective_scan(*inputs, delta_softplus=True))
        with force_backend("torch"):
            assert not taken(lambda: selective_scan(*inputs, delta_softplus=True))
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    assert taken(lambda: selective_scan(*leaves, delta_softplus=True).sum().backward())
    assert all(t.grad is not None for t in leaves)


def run_with_grads(backend, inputs, gated=True, softplus=True):
    """y, the last state and the gradient of every input, for one random output gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    u, delta, A, B, C, D, z, bias = leaves
    z = z if gated else None
    y, last = selective_scan(u, delta, A, B, C, D, z, bias, softplus, True, backend=backend)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype))
    grads = [t.grad for t in leaves]
    return [y, last] + [g for g in grads if g is not None]


@pytest.mark.parametrize(
    "b, d, length, n, groups",
    [(1, 16, 33, 16, 1), (2, 40, 7, 1, 4), (3, 17, 5, 4, 1), (1, 8, 1, 2, 2), (2, 96, 50, 16, 3)],
)
@pytest.mark.parametrize("gated", [True, False])
def test_cpu_loop_gradients_match_reference(b, d, length, n, groups, gated):
    """Every input's gradient; lengths that are not a multiple of the loop's chunk, groups straddling pieces."""
    inputs = make_inputs(b, d, length, n, groups)
    for got, want in zip(run_with_grads("cpu", inputs, gated), run_with_grads("reference", inputs, gated)):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6 * want.abs().max().item())


def test_cpu_loop_gradients_without_softplus_strided_and_bf16():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 24, 19, 4, 2)
    strided = (u.transpose(1, 2).contiguous().transpose(1, 2), delta.abs(), A, B, C, D, z, bias.abs())
    for got, want in zip(
        run_with_grads("cpu", strided, softplus=False), run_with_grads("reference", strided, softplus=False)
    ):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6 * want.abs().max().item())
    low = (u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, z.bfloat16(), bias)
    got = run_with_grads("cpu", low)
    want = run_with_grads("reference", [t.float() for t in low])
    assert got[2].dtype == torch.bfloat16
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=3e-2 * b.abs().max().item())


def test_training_keeps_states_only_every_chunk():
    """With d_state 16 autograd keeps the inputs and one state per CHUNK steps: about the inputs' size, where every
    step's state would be 16 times u."""
    inputs = [t.requires_grad_(True) for t in make_inputs(2, 64, 256, 16, 1)]
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(*inputs, delta_softplus=True, backend="cpu")
    u = inputs[0]
    inputs_bytes = sum(t.numel() * 4 for t in inputs)
    checkpoint_bytes = u.numel() * 16 // cpu.CHUNK * 4
    assert sum(storages.values()) <= inputs_bytes + checkpoint_bytes + u.numel() * 4
