"""Cross-scan routes: the torch path against the index-list reference, both layouts, adjointness, errors."""

import pytest
import torch

from vizoo.kernels import cross_merge, cross_scan
from vizoo.kernels.cross_scan import cross_scan_routes

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 8, 8), (2, 2, 7, 3)]


def test_routes_visit_every_pixel_once():
    routes = cross_scan_routes(3, 4)
    assert routes.shape == (4, 12)
    for route in routes:
        assert sorted(route.tolist()) == list(range(12))
    assert routes[1, :3].tolist() == [0, 4, 8]  # column-major goes down the first column
    assert routes[2, 0] == 11 and routes[3, 0] == 11


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_cf,out_cf", [(True, True), (False, False), (True, False), (False, True)])
def test_torch_matches_reference_in_every_layout(shape, in_cf, out_cf):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w)
    x_in = x if in_cf else x.permute(0, 2, 3, 1)
    ref = cross_scan(x_in, in_cf, out_cf, backend="reference")
    assert ref.shape == ((b, 4, c, h * w) if out_cf else (b, h * w, 4, c))
    torch.testing.assert_close(cross_scan(x_in, in_cf, out_cf, backend="torch"), ref)

    y = torch.randn(b, 4, c, h, w)
    y_in = y if in_cf else y.permute(0, 3, 4, 1, 2)
    ref = cross_merge(y_in, in_cf, out_cf, backend="reference")
    assert ref.shape == ((b, c, h * w) if out_cf else (b, h * w, c))
    torch.testing.assert_close(cross_merge(y_in, in_cf, out_cf, backend="torch"), ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_merge_is_the_adjoint_and_backward_of_scan(shape):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, requires_grad=True)
    y = torch.randn(b, 4, c, h, w)
    xs = cross_scan(x)
    lhs = (xs * y.flatten(3)).sum()
    rhs = (x.flatten(2) * cross_merge(y)).sum()
    torch.testing.assert_close(lhs, rhs)
    lhs.backward()
    torch.testing.assert_close(x.grad.flatten(2), cross_merge(y))


def test_non_contiguous_and_bf16():
    x = torch.randn(2, 5, 6, 3).permute(0, 3, 1, 2)  # (2, 3, 5, 6), channel-last storage
    assert not x.is_contiguous()
    torch.testing.assert_close(cross_scan(x), cross_scan(x.contiguous(), backend="reference"))
    xb = x.bfloat16()
    assert cross_scan(xb).dtype == torch.bfloat16
    torch.testing.assert_close(
        cross_merge(cross_scan(xb).unflatten(-1, (5, 6))).float(),
        cross_merge(cross_scan(xb.float()).unflatten(-1, (5, 6))),
        rtol=2e-2,
        atol=2e-2,
    )


def test_bad_shapes():
    with pytest.raises(ValueError, match="4-D map"):
        cross_scan(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="cross_merge: expected"):
        cross_merge(torch.randn(2, 3, 3, 4, 4))


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 6, 6), (2, 2, 3, 1, 4), (1, 2, 7, 1)])
def test_column_major_export_form_matches_the_eager_one(shape, monkeypatch):
    """While exporting, column_major cuts the map into columns (Split/Concat) instead of a strided copy: the same
    values and gradients, on odd and non-contiguous maps, and from_column_major inverts both forms."""
    from vizoo.kernels.cross_scan import torch_ops

    h, w = shape[-2:]
    x = torch.randn(*shape[:-2], w, h).transpose(-1, -2).requires_grad_()  # non-contiguous (..., h, w)
    weight = torch.randn(*shape[:-2], h * w)
    results = {}
    for exporting in (False, True):
        monkeypatch.setattr(torch_ops, "is_exporting", lambda exporting=exporting: exporting)
        x.grad = None
        cols = torch_ops.column_major(x)
        assert torch.equal(torch_ops.from_column_major(cols, h, w), x)
        (cols * weight).sum().backward()
        results[exporting] = cols.detach(), x.grad.clone()
    expected = torch.stack([x[..., :, j] for j in range(w)], dim=-2).flatten(-2)  # column j, then column j + 1
    for cols, grad in results.values():
        assert torch.equal(cols, expected)
        assert torch.equal(grad, weight.unflatten(-1, (w, h)).transpose(-1, -2))
