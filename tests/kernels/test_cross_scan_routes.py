"""Unidirectional, bidirectional and atrous scan routes: torch against the index-list reference, adjointness,
gradients, odd sizes, batch 1, non-contiguous input, both channel layouts, errors."""

import pytest
import torch

from vizoo.kernels.cross_scan import (
    atrous_merge,
    atrous_scan,
    bidirectional_merge,
    bidirectional_scan,
    unidirectional_merge,
    unidirectional_scan,
)
from vizoo.kernels.cross_scan.routes import atrous_routes

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 8, 6), (2, 2, 7, 3), (1, 2, 2, 9)]
LAYOUTS = [(True, True), (False, False), (True, False), (False, True)]


def _route(name):
    """(scan(x, in_cf, out_cf, backend), merge(y, h, w, in_cf, out_cf, backend), K, route length(h, w))."""
    if name == "atrous":
        return atrous_scan, atrous_merge, 4, lambda h, w: ((h + 1) // 2) * ((w + 1) // 2)
    scan, merge, k = {
        "unidirectional": (unidirectional_scan, unidirectional_merge, 1),
        "bidirectional": (bidirectional_scan, bidirectional_merge, 2),
    }[name]
    return scan, (lambda y, h, w, *args, **kwargs: merge(y, *args, **kwargs)), k, lambda h, w: h * w


ROUTES = ["unidirectional", "bidirectional", "atrous"]


def test_atrous_routes_are_the_four_phases():
    routes = atrous_routes(4, 4)
    assert routes.shape == (4, 4)
    assert routes[0].tolist() == [0, 2, 8, 10]  # phase (0,0), row-major
    assert routes[1].tolist() == [4, 12, 6, 14]  # phase (1,0), column-major
    assert routes[2].tolist() == [1, 3, 9, 11]  # phase (0,1), row-major
    assert routes[3].tolist() == [5, 13, 7, 15]  # phase (1,1), column-major
    assert sorted(routes.flatten().tolist()) == list(range(16))
    assert atrous_routes(3, 5).shape == (4, 6)  # padded to 4x6


def test_atrous_matches_efficientvmamba_slicing():
    """EfficientVMamba's ES2D as its paper describes it, written with slices on an even map."""
    x = torch.randn(2, 3, 6, 4)
    xs = atrous_scan(x)
    t = x.transpose(2, 3)
    expected = [x[:, :, ::2, ::2], t[:, :, ::2, 1::2], x[:, :, ::2, 1::2], t[:, :, 1::2, 1::2]]
    for k in range(4):
        torch.testing.assert_close(xs[:, k], expected[k].reshape(2, 3, -1))


@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_cf,out_cf", LAYOUTS)
def test_torch_matches_reference_in_every_layout(name, shape, in_cf, out_cf):
    scan, merge, k, length = _route(name)
    b, c, h, w = shape
    n = length(h, w)
    x = torch.randn(b, c, h, w)
    x_in = x if in_cf else x.permute(0, 2, 3, 1)
    ref = scan(x_in, in_cf, out_cf, backend="reference")
    assert ref.shape == ((b, k, c, n) if out_cf else (b, n, k, c))
    torch.testing.assert_close(scan(x_in, in_cf, out_cf, backend="torch"), ref)

    y = torch.randn(b, k, c, n)
    y_in = y if in_cf else y.permute(0, 3, 1, 2)
    ref = merge(y_in, h, w, in_cf, out_cf, backend="reference")
    assert ref.shape == ((b, c, h * w) if out_cf else (b, h * w, c))
    torch.testing.assert_close(merge(y_in, h, w, in_cf, out_cf, backend="torch"), ref)


@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_merge_is_the_adjoint_and_backward_of_scan(name, shape, backend):
    scan, merge, k, length = _route(name)
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, dtype=torch.float64, requires_grad=True)
    y = torch.randn(b, k, c, length(h, w), dtype=torch.float64, requires_grad=True)
    merged = merge(y, h, w, backend=backend)
    lhs = (scan(x, backend=backend) * y.detach()).sum()
    rhs = (x.detach().flatten(2) * merged).sum()
    torch.testing.assert_close(lhs, rhs)
    lhs.backward()
    torch.testing.assert_close(x.grad.flatten(2), merged.detach())  # d<scan(x), y>/dx = merge(y)
    rhs.backward()
    torch.testing.assert_close(y.grad, scan(x.detach(), backend=backend))  # d<x, merge(y)>/dy = scan(x)


@pytest.mark.parametrize("name", ["unidirectional", "bidirectional"])
def test_sequences_and_channel_last_sequences(name):
    scan, merge, k, _ = _route(name)
    x = torch.randn(1, 5, 11)
    xs = scan(x)
    assert xs.shape == (1, k, 5, 11)
    torch.testing.assert_close(xs[:, 0], x)
    if k == 2:
        torch.testing.assert_close(xs[:, 1], x.flip(-1))
    torch.testing.assert_close(scan(x.transpose(1, 2), in_channel_first=False), xs)
    torch.testing.assert_close(merge(xs, 1, 11, out_channel_first=False), k * x.transpose(1, 2))


@pytest.mark.parametrize("name", ROUTES)
def test_non_contiguous_and_bf16(name):
    scan, merge, _, _ = _route(name)
    x = torch.randn(2, 5, 7, 3).permute(0, 3, 1, 2)  # (2, 3, 5, 7), channel-last storage
    assert not x.is_contiguous()
    torch.testing.assert_close(scan(x), scan(x.contiguous(), backend="reference"))
    y = scan(x.contiguous())
    y_nc = y.transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(merge(y_nc, 5, 7), merge(y, 5, 7, backend="reference"))
    xb = x.bfloat16()
    assert scan(xb).dtype == torch.bfloat16 and merge(scan(xb), 5, 7).dtype == torch.bfloat16


def test_atrous_round_trip_recovers_the_map():
    """Each pixel lies on exactly one route, so merge(scan(x)) == x, odd sizes included."""
    x = torch.randn(1, 2, 5, 3)
    torch.testing.assert_close(atrous_merge(atrous_scan(x), 5, 3), x.flatten(2))


def test_errors_say_what_was_wrong():
    with pytest.raises(ValueError, match="4-D"):
        atrous_scan(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"\(b, 2, c, l\)"):
        bidirectional_merge(torch.randn(1, 3, 2, 4))
    with pytest.raises(ValueError, match="routes of length 6"):
        atrous_merge(torch.randn(1, 4, 2, 5), 3, 5)
    with pytest.raises(ValueError, match="unknown backend"):
        unidirectional_scan(torch.randn(1, 2, 3), backend="cuda")


def test_routes_export_without_scatter_or_control_flow():
    """The torch paths trace to plain slices and reshapes (what the ONNX export of ES2D and Vim relies on)."""

    class Atrous(torch.nn.Module):
        def forward(self, x):
            return atrous_merge(atrous_scan(x) * 2, 5, 7) + bidirectional_merge(bidirectional_scan(x)).sum()

    x = torch.randn(1, 3, 5, 7)
    program = torch.export.export(Atrous(), (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("scatter" in op or "index_put" in op or "cond" in op for op in ops), ops
    torch.testing.assert_close(program.module()(x), Atrous()(x))
