"""MSVMamba's multi-scale route: the torch path against the index-list specification, and merge as the adjoint."""

import pytest
import torch

from vizoo.kernels.cross_scan import multiscale_merge, multiscale_scan
from vizoo.kernels.cross_scan.multiscale import multiscale_routes

SIZES = [((4, 6), (2, 3)), ((5, 7), (3, 4)), ((1, 1), (1, 1)), ((3, 2), (2, 1))]


def test_routes_visit_every_pixel_once_per_route():
    routes = multiscale_routes(5, 7, 3, 4)
    assert routes.shape == (35 + 3 * 12,)
    assert sorted(routes[:35].tolist()) == list(range(35))
    for k in range(3):
        assert sorted(routes[35 + 12 * k : 35 + 12 * (k + 1)].tolist()) == list(range(35, 47))
    low = torch.arange(12).view(3, 4)
    assert routes[35 + 12 : 35 + 24].tolist() == (low.t().reshape(-1) + 35).tolist()  # column-major


@pytest.mark.parametrize("size,low_size", SIZES)
@pytest.mark.parametrize("batch", [1, 2])
def test_scan_and_merge_match_reference(size, low_size, batch):
    x = torch.randn(batch, 3, *size, dtype=torch.float64)
    x_low = torch.randn(batch, 3, *low_size, dtype=torch.float64)
    ref = multiscale_scan(x, x_low, backend="reference")
    assert torch.equal(multiscale_scan(x, x_low, backend="torch"), ref)
    y = torch.randn_like(ref)
    for got, want in zip(
        multiscale_merge(y, size, low_size, backend="torch"), multiscale_merge(y, size, low_size, backend="reference")
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_merge_is_the_adjoint_and_gradients_match(backend):
    size, low_size = (5, 7), (3, 4)
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    x_low = torch.randn(2, 4, *low_size, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 35 + 36, dtype=torch.float64, requires_grad=True)
    scanned = multiscale_scan(x, x_low, backend=backend)
    m, m_low = multiscale_merge(y, size, low_size, backend=backend)
    lhs = (scanned * y).sum()
    torch.testing.assert_close(lhs, (x * m).sum() + (x_low * m_low).sum())
    gx, gx_low = torch.autograd.grad(lhs, (x, x_low), retain_graph=True)
    torch.testing.assert_close(gx, m)
    torch.testing.assert_close(gx_low, m_low)
    assert torch.autograd.gradcheck(lambda y: multiscale_merge(y, size, low_size, backend=backend), (y,))


def test_non_contiguous_inputs():
    x = torch.randn(2, 5, 7, 3).permute(0, 3, 1, 2)  # channel-last memory
    x_low = torch.randn(2, 4, 3, 3).permute(0, 3, 2, 1)
    ref = multiscale_scan(x.contiguous(), x_low.contiguous(), backend="reference")
    assert torch.equal(multiscale_scan(x, x_low, backend="torch"), ref)
    y = torch.randn(2, 35 + 36, 3).transpose(1, 2)
    for got, want in zip(
        multiscale_merge(y, (5, 7), (4, 3), backend="torch"), multiscale_merge(y.contiguous(), (5, 7), (4, 3))
    ):
        torch.testing.assert_close(got, want)


def test_bad_shapes_say_what_was_expected():
    with pytest.raises(ValueError, match="same batch and channels"):
        multiscale_scan(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 2, 2))
    with pytest.raises(ValueError, match="H·W \\+ 3·h·w"):
        multiscale_merge(torch.randn(1, 3, 10), (4, 4), (2, 2))
