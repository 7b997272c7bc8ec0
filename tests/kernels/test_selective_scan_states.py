"""selective_scan_states: the blocked parallel path against the sequential specification, and against the read-out
of the ordinary selective scan."""

import pytest
import torch

from vizoo.kernels import count_kernel_macs
from vizoo.kernels.selective_scan import selective_scan, selective_scan_states


def _inputs(b, d, n, length, g, dtype=torch.float32):  # the kernels compute in fp32
    torch.manual_seed(0)
    u = torch.randn(b, d, length, dtype=dtype)
    delta = torch.randn(b, d, length, dtype=dtype) * 0.5
    A = -torch.rand(d, n, dtype=dtype) - 0.1
    B = torch.randn(b, g, n, length, dtype=dtype)
    bias = torch.randn(d, dtype=dtype) * 0.1
    return u, delta, A, B, bias


@pytest.mark.parametrize("b,d,n,length,g", [(1, 4, 1, 5, 1), (2, 6, 3, 37, 2), (1, 2, 2, 70, 1), (2, 3, 1, 8, 3)])
def test_torch_matches_reference_values_and_gradients(b, d, n, length, g):
    inputs = [t.requires_grad_() for t in _inputs(b, d, n, length, g)]
    ref = selective_scan_states(*inputs[:4], delta_bias=inputs[4], delta_softplus=True, backend="reference")
    got = selective_scan_states(*inputs[:4], delta_bias=inputs[4], delta_softplus=True, backend="torch")
    assert got.shape == (b, d, n, length)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    g_got = torch.autograd.grad(got, inputs, grad)
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_read_out_gives_the_selective_scan():
    u, delta, A, B, bias = _inputs(2, 4, 2, 19, 1)
    C = torch.randn_like(B)
    h = selective_scan_states(u, delta, A, B, delta_bias=bias, delta_softplus=True)
    y = (h * C).sum(2)  # groups of one: C broadcasts over channels
    want = selective_scan(u, delta, A, B, C, delta_bias=bias, delta_softplus=True, backend="reference")
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-5)


def test_non_contiguous_and_3d_B_and_macs():
    u, delta, A, B, _ = _inputs(1, 4, 1, 12, 1)
    u_nc = u.transpose(1, 2).contiguous().transpose(1, 2)
    with count_kernel_macs() as macs:
        got = selective_scan_states(u_nc, delta, A, B[:, 0])
    torch.testing.assert_close(got, selective_scan_states(u, delta, A, B, backend="reference"))
    assert macs["selective_scan_states"] == 7 * 1 * 4 * 12 * 1


def test_bad_shapes_raise():
    u, delta, A, B, _ = _inputs(1, 4, 2, 6, 1)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_states(u, delta, A, B[..., :3])
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_states(u, delta, A[:2], B)
