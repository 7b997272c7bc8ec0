"""The Triton cross-scan and cross-merge against the index-list reference: both layouts in and out, values and
gradients (each is the other's backward), strided and half-precision inputs, and torch.compile / torch.export."""

import pytest
import torch

from vizoo.kernels import cross_merge, cross_scan

pytest.importorskip("vizoo.kernels.cross_scan.triton")

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 40, 17, 9), (2, 9, 16, 16)]  # c over one channel block; odd, tall, square
LAYOUTS = [(True, True), (False, False), (True, False), (False, True)]


def grads_of(fn, x, grad):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(grad)
    return out, x.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_cf, out_cf", LAYOUTS)
def test_scan_matches_reference_with_gradient(device, shape, in_cf, out_cf):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, device=device)
    x = x if in_cf else x.permute(0, 2, 3, 1).contiguous()
    grad = torch.randn((b, 4, c, h * w) if out_cf else (b, h * w, 4, c), device=device)
    want = grads_of(lambda t: cross_scan(t, in_cf, out_cf, backend="reference"), x, grad)
    got = grads_of(lambda t: cross_scan(t, in_cf, out_cf, backend="triton"), x, grad)
    assert got[0].is_contiguous()  # written in the requested layout, not a permuted view
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_cf, out_cf", LAYOUTS)
def test_merge_matches_reference_with_gradient(device, shape, in_cf, out_cf):
    b, c, h, w = shape
    y = torch.randn(b, 4, c, h, w, device=device)
    y = y if in_cf else y.permute(0, 3, 4, 1, 2).contiguous()
    grad = torch.randn((b, c, h * w) if out_cf else (b, h * w, c), device=device)
    want = grads_of(lambda t: cross_merge(t, in_cf, out_cf, backend="reference"), y, grad)
    got = grads_of(lambda t: cross_merge(t, in_cf, out_cf, backend="triton"), y, grad)
    assert got[0].is_contiguous()
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


def test_merge_is_the_adjoint_of_scan(device):
    x, y = torch.randn(2, 3, 6, 5, device=device), torch.randn(2, 4, 3, 6, 5, device=device)
    lhs = (cross_scan(x, backend="triton") * y.flatten(3)).sum()
    torch.testing.assert_close(lhs, (x.flatten(2) * cross_merge(y, backend="triton")).sum())


def test_strided_and_bf16(device):
    base = torch.randn(2, 7, 12, 10, device=device)
    x = base[:, 1:5, ::2, 1::2]  # a gappy view: no stride is contiguous
    torch.testing.assert_close(cross_scan(x, backend="triton"), cross_scan(x.contiguous(), backend="reference"))
    xb = torch.randn(2, 5, 6, 3, device=device).bfloat16()
    out = cross_scan(xb, in_channel_first=False, backend="triton")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, cross_scan(xb, in_channel_first=False, backend="reference"), rtol=0, atol=0)
    yb = torch.randn(2, 4, 3, 5, 6, device=device).bfloat16()
    merged = cross_merge(yb, backend="triton")  # fp32 accumulation, one rounding
    torch.testing.assert_close(merged.float(), cross_merge(yb.float(), backend="reference"), rtol=1e-2, atol=1e-2)


def test_compile_and_export_see_the_ops(device):
    def scan_merge(x):
        return cross_merge(cross_scan(x, backend="triton").unflatten(-1, (4, 5)) * 2, backend="triton")

    x = torch.randn(1, 3, 4, 5, device=device, requires_grad=True)
    compiled = torch.compile(scan_merge, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), scan_merge(x))
    compiled(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 8.0))  # four routes, times two

    class ScanMerge(torch.nn.Module):
        def forward(self, x):
            return scan_merge(x)

    graph = str(torch.export.export(ScanMerge(), (x.detach(),)).graph)
    assert "vizoo.cross_scan" in graph and "vizoo.cross_merge" in graph


def test_custom_ops_pass_opcheck(device):
    """Schema, fake tensors, autograd registration and AOT tracing, from a channel-last map view."""
    from vizoo.kernels.cross_scan import triton as cross

    x = torch.randn(2, 4, 5, 3, device=device).permute(0, 3, 1, 2).requires_grad_(True)
    y = torch.randn(2, 4, 3, 4, 5, device=device, requires_grad=True)
    for channel_last_out in (False, True):
        torch.library.opcheck(cross._cross_scan, (x, channel_last_out))
        torch.library.opcheck(cross._cross_merge, (y, channel_last_out))
