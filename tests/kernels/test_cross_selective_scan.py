"""The fused cross-selective-scan: the torch and Triton paths against the reference composition (cross_scan,
selective_scan, cross_merge), values and every gradient, layouts and dtypes; SS2D on the Triton backend against the
torch backend; and what the fusion saves, measured as the bytes of the tensors each path's ops write."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vizoo.kernels import cross_merge, cross_scan, cross_selective_scan, force_backend, route_order, selective_scan
from vizoo.layers import SS2D

tri = pytest.importorskip("vizoo.kernels.selective_scan.triton")


def make_inputs(b, d, h, w, n, dtype=torch.float32, channel_last=False, device="cpu"):
    """x (b, d, h, w) (a channel-last view if asked); delta (b, 4, d, l); A (4d, n); B, C (b, 4, n, l); D, bias."""
    length = h * w
    x = torch.randn(b, h, w, d).permute(0, 3, 1, 2) if channel_last else torch.randn(b, d, h, w)
    delta = torch.randn(b, 4, d, length) * 0.5
    A = -torch.rand(4 * d, n) * 4 - 0.1
    B, C = torch.randn(b, 4, n, length), torch.randn(b, 4, n, length)
    D, bias = torch.randn(4 * d), torch.randn(4 * d) * 0.5
    x, delta, B, C = (t.to(dtype) for t in (x, delta, B, C))
    return [t.to(device) for t in (x, delta, A, B, C, D, bias)]


def run_with_grads(backend, inputs, out_channel_first=True, out_fp32=False, seed=1):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = cross_selective_scan(
        *leaves, delta_softplus=True, out_channel_first=out_channel_first, out_fp32=out_fp32, backend=backend
    )
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y))
    return [y] + [t.grad for t in leaves]


def assert_all_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m, i=i: f"output {i}: {m}")


@pytest.fixture
def short_chunks(monkeypatch):
    monkeypatch.setattr(tri, "chunk_length", lambda n: 16)


# n = 1 runs step-major in chunks of the largest common divisor of h and w up to 8 (1 for 5 x 7, 2 for 6 x 4, 3 for
# 9 x 6, 7 for 14 x 7, 8 for 8 x 16); n > 1 runs in route order.
TORCH_SHAPES = [(1, 3, 5, 7, 1), (1, 3, 6, 4, 1), (2, 4, 9, 6, 1), (1, 5, 14, 7, 1), (1, 2, 8, 16, 1)]
TORCH_SHAPES += [(2, 4, 6, 6, 16), (1, 2, 1, 9, 2)]


@pytest.mark.parametrize("shape", TORCH_SHAPES)
@pytest.mark.parametrize("channel_last, out_cf", [(False, True), (True, False)])
def test_torch_path_matches_reference(shape, channel_last, out_cf):
    inputs = make_inputs(*shape, channel_last=channel_last)
    assert_all_close(run_with_grads("torch", inputs, out_cf), run_with_grads("reference", inputs, out_cf), 1e-4)


@pytest.mark.parametrize("shape", [(1, 6, 14, 7, 1), (2, 4, 6, 6, 16)])
def test_low_rank_delta_matches_full_delta(short_chunks, device, shape):
    """``delta_proj @ delta`` inside the op (SS2D's step-size projection) equals passing the projected delta, values
    and gradients, on every backend; the torch path projects after its own reordering."""
    x, _, A, B, C, D, bias = make_inputs(*shape, device=device)
    b, d, h, w, _ = shape
    low_rank, proj = torch.randn(b, 4, 3, h * w, device=device), torch.randn(4, d, 3, device=device) * 0.5
    for backend in ("torch", "reference", "triton"):
        got, want = [], []
        for out, use_proj in ((got, True), (want, False)):
            leaves = [t.clone().requires_grad_(True) for t in (x, low_rank, proj)]
            delta = leaves[1] if use_proj else torch.matmul(leaves[2], leaves[1])
            kwargs = dict(delta_proj=leaves[2]) if use_proj else {}
            y = cross_selective_scan(leaves[0], delta, A, B, C, D, bias, True, backend=backend, **kwargs)
            y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y))
            out += [y] + [t.grad for t in leaves]
        assert_all_close(got, want, 1e-4)


def test_one_pixel_map_gives_every_input_a_gradient():
    """On a 1 x 1 map A cannot change the output; its gradient is zero rather than missing (DDP needs every
    parameter in the graph)."""
    inputs = make_inputs(1, 3, 1, 1, 1)
    grads = run_with_grads("torch", inputs)[1:]
    assert all(g is not None for g in grads)
    assert grads[2].abs().max() == 0
    assert_all_close(run_with_grads("torch", inputs), run_with_grads("reference", inputs), 1e-4)


def test_torch_path_bf16():
    """bf16 in and out of the step-major path (n = 1, 14 x 7 in chunks of 7), batch 1, fp32 arithmetic inside."""
    inputs = make_inputs(1, 3, 14, 7, 1, dtype=torch.bfloat16)
    got = run_with_grads("torch", inputs)
    assert got[0].dtype == torch.bfloat16
    assert_all_close(got, run_with_grads("reference", [t.float() for t in inputs]), 6e-2)


@pytest.mark.parametrize(
    "b, d, h, w, n, channel_last, out_cf",
    [
        (1, 4, 5, 7, 1, False, True),  # n = 1, l = 35: not a multiple of the 16-step chunk
        (1, 4, 5, 7, 1, True, False),  # the same from channel-last x into a channel-last output
        (1, 3, 4, 5, 16, True, False),  # n = 16, odd channel count
        (2, 8, 6, 3, 2, False, False),  # tall map, batch 2, 8 channels in one block
    ],
)
def test_triton_matches_reference(short_chunks, device, b, d, h, w, n, channel_last, out_cf):
    inputs = make_inputs(b, d, h, w, n, channel_last=channel_last, device=device)
    got = run_with_grads("triton", inputs, out_cf)
    assert got[0].is_contiguous()  # the merged output is written in the requested layout
    assert got[1].stride() == inputs[0].stride()  # dx in x's layout
    assert_all_close(got, run_with_grads("reference", inputs, out_cf), 1e-4)


def test_triton_default_chunks_and_strided_views(device):
    b, d, h, w, n = 1, 2, 12, 11, 1  # 132 steps: a 128-step chunk and a short one
    x, delta, A, B, C, D, bias = make_inputs(b, d, h, w, n, device=device)
    transposed = lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731  same values, other strides
    inputs = [transposed(x), transposed(delta), A, transposed(B), C, D, bias]
    assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    assert_all_close(run_with_grads("triton", inputs), run_with_grads("reference", [x, delta, A, B, C, D, bias]), 1e-4)


@pytest.mark.parametrize("out_fp32", [False, True])
def test_bf16_accumulates_in_fp32(short_chunks, device, out_fp32):
    inputs = make_inputs(1, 2, 3, 5, 16, dtype=torch.bfloat16, device=device)
    got = run_with_grads("triton", inputs, out_fp32=out_fp32)
    assert got[0].dtype == (torch.float32 if out_fp32 else torch.bfloat16)
    want = run_with_grads("reference", [t.float() for t in inputs])
    assert_all_close(got, want, 6e-2)


def test_ss2d_on_triton_matches_torch(short_chunks, device):
    """The layer end to end, v2 (n = 1, no gate) and v0 (n = 16, gate, ssm_ratio 2) settings."""
    for kwargs in (dict(d_state=1), dict(d_state=16, ssm_ratio=2.0, gate=True)):
        torch.manual_seed(0)
        layer = SS2D(4, **kwargs).to(device)
        x = torch.randn(1, 3, 4, 4, device=device)
        outs = {}
        for name in ("torch", "triton"):
            layer.zero_grad()
            layer.scan_backend = name
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            y.square().mean().backward()
            outs[name] = [y, xi.grad] + [p.grad for p in layer.parameters()]
        assert_all_close(outs["triton"], outs["torch"], 1e-4)


class WrittenBytes(TorchDispatchMode):
    """Bytes of the new tensors that each op writes (views of their inputs excluded)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.total += t.numel() * t.element_size()
        return out


def test_fusion_never_writes_the_route_copies(short_chunks, device):
    """Forward and backward, the fused op writes 8·b·d·l fewer elements than cross_scan + scan + cross_merge on the
    same Triton backend: the route copies xs and ys (and their gradients) that it never materialises."""
    b, d, h, w, n = 2, 4, 6, 5, 1
    inputs = make_inputs(b, d, h, w, n, dtype=torch.bfloat16, device=device)

    def unfused(x, delta, A, B, C, D, bias):
        xs = cross_scan(x, backend="triton")  # (b, 4, d, l)
        ys = selective_scan(xs.flatten(1, 2), delta.flatten(1, 2), A, B, C, D, None, bias, True, backend="triton")
        return cross_merge(ys.unflatten(1, (4, d)).unflatten(-1, (h, w)), backend="triton")

    def fused(*args):
        return cross_selective_scan(*args, delta_softplus=True, backend="triton")

    written = {}
    for name, fn in (("unfused", unfused), ("fused", fused)):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        with WrittenBytes() as forward:
            y = fn(*leaves)
        with WrittenBytes() as backward:
            y.backward(torch.ones_like(y))
        written[name] = forward.total, backward.total, y
    torch.testing.assert_close(written["fused"][2], written["unfused"][2], rtol=2e-2, atol=2e-2)
    route_copies = 2 * 4 * b * d * h * w * 2  # xs and ys (or their gradients), bf16
    assert written["unfused"][0] - written["fused"][0] >= route_copies  # plus the scan's unused last state
    assert written["unfused"][1] - written["fused"][1] == route_copies


def test_default_backend_and_export(device):
    inputs = make_inputs(1, 2, 3, 4, 2)
    with force_backend("reference"):
        want = cross_selective_scan(*inputs)
    torch.testing.assert_close(cross_selective_scan(*inputs), want, rtol=1e-4, atol=1e-4)  # CPU default: torch
    inputs = [t.to(device) for t in inputs]

    class Fused(torch.nn.Module):
        def forward(self, *args):
            return cross_selective_scan(*args, delta_softplus=True, backend="triton")

    assert "vizoo.cross_selective_scan_fwd" in str(torch.export.export(Fused(), tuple(inputs)).graph)


def test_route_order_and_bad_shapes():
    maps = torch.randn(2, 4, 3, 5, 7)
    torch.testing.assert_close(route_order(maps, backend="torch"), route_order(maps, backend="reference"))
    x, delta, A, B, C, D, bias = make_inputs(1, 2, 3, 4, 2)
    with pytest.raises(ValueError, match=r"delta must have shape \(1, 4, 2, 12\)"):
        cross_selective_scan(x, delta[:, :, :, :5], A, B, C)
    with pytest.raises(ValueError, match=r"delta must have shape \(1, 4, 3, 12\)"):  # rank 3 from delta_proj
        cross_selective_scan(x, delta, A, B, C, delta_proj=torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"delta_proj must have shape \(4, 2, 3\)"):
        cross_selective_scan(x, delta[:, :, :1].expand(-1, -1, 3, -1), A, B, C, delta_proj=torch.randn(4, 5, 3))
    with pytest.raises(ValueError, match="route_order: expected"):
        route_order(maps[:, :3])


def test_custom_op_passes_opcheck(short_chunks, device):
    """Schema, fake tensors, autograd registration and AOT tracing; x channel-last, B and C strided views."""
    from vizoo.kernels.cross_selective_scan import triton as fused

    x, delta, A, _, _, D, bias = make_inputs(1, 2, 3, 2, 1, channel_last=True, device=device)
    _, B, C = torch.randn(1, 4, 3, 6, device=device).split([1, 1, 1], dim=2)
    args = [t.detach().requires_grad_(True) for t in (x, delta, A, B, C, D, bias)]
    torch.library.opcheck(fused._fwd, (*args, True, False, True, True, 16))


@pytest.mark.parametrize(
    "shape", [(1, 3, 5, 7, 1), (2, 4, 9, 6, 1), (1, 5, 14, 7, 1), (1, 3, 1, 1, 1), (2, 4, 6, 6, 4)]
)
@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_projection_inside_matches_route_ordered_inputs(short_chunks, device, shape, backend):
    """``x_proj`` (SS2D's per-route projection) inside the op on each backend equals the reference scan of the
    route-ordered step inputs, B and C made outside by the reference route order: values and every gradient, x
    channel-last (a strided view), batch 1 and 2, a 1 x 1 map; n = 1 on the torch path projects the routes it reads
    and scans the reversed ones backwards."""
    b, d, h, w, n = shape
    x, _, A, _, _, D, bias = make_inputs(*shape, channel_last=True, device=device if backend == "triton" else "cpu")
    x_proj, delta_proj = torch.randn(4, 3 + 2 * n, d) * 0.5, torch.randn(4, d, 3) * 0.5
    x_proj, delta_proj = x_proj.to(x.device), delta_proj.to(x.device)
    got, want = [], []
    for out, inside in ((got, True), (want, False)):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, x_proj, delta_proj, A, D, bias)]
        if inside:
            projected = dict(delta=None, B=None, C=None, x_proj=leaves[1])
        else:
            routes = route_order(
                torch.matmul(leaves[1], leaves[0].flatten(2).unsqueeze(1)).unflatten(-1, (h, w)), "reference"
            )
            projected = dict(zip(("delta", "B", "C"), routes.split([3, n, n], dim=2)))
        y = cross_selective_scan(
            leaves[0],
            A=leaves[3],
            D=leaves[4],
            delta_bias=leaves[5],
            delta_softplus=True,
            delta_proj=leaves[2],
            out_channel_first=False,
            backend=backend if inside else "reference",
            **projected,
        )
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y))
        out += [y] + [t.grad for t in leaves]
    assert_all_close(got, want, 1e-4)


def test_projection_inside_bf16():
    """bf16 map and projection through the step-major path, against the fp32 reference; fp32 arithmetic inside."""
    x, _, A, _, _, D, bias = make_inputs(1, 4, 14, 7, 1)
    x_proj, delta_proj = torch.randn(4, 4, 4) * 0.5, torch.randn(4, 4, 2) * 0.5
    kwargs = dict(delta=None, B=None, C=None, D=D, delta_bias=bias, delta_softplus=True, delta_proj=delta_proj)
    got = cross_selective_scan(x.bfloat16(), A=A, x_proj=x_proj.bfloat16(), backend="torch", **kwargs)
    want = cross_selective_scan(
        x.bfloat16().float(), A=A, x_proj=x_proj.bfloat16().float(), backend="reference", **kwargs
    )
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


def test_projection_bad_input():
    x, delta, A, B, C, _, _ = make_inputs(1, 2, 3, 4, 1)
    with pytest.raises(ValueError, match="pass either x_proj or delta, B and C"):
        cross_selective_scan(x, delta, A, B, C, x_proj=torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match=r"x_proj must have shape \(4, 2 \+ 2·1, 2\) \(step-size rank 2, full"):
        cross_selective_scan(x, None, A, None, None, x_proj=torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match=r"x_proj must have shape \(4, 3 \+ 2·1, 2\) \(step-size rank 3 from delta_p"):
        cross_selective_scan(x, None, A, None, None, x_proj=torch.randn(4, 4, 2), delta_proj=torch.randn(4, 2, 3))
