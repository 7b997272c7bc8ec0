"""The compiled CPU loop of ``cross_selective_scan`` (backend "cpu", numba) against the reference: its exp, log and
softplus against torch's, values and gradients over shapes, d_state, dtypes and layouts (training with d_state > 1
through the selective scan's loop), which calls take it by default, and what it leaves alone (torch's thread count,
FLOP counting)."""

import math

import numba
import numpy as np
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from vizoo.kernels import backend as backend_module
from vizoo.kernels import cpu_loops, cross_selective_scan, force_backend
from vizoo.kernels.cross_selective_scan import cpu
from vizoo.layers.ss2d import SS2D


@numba.njit
def _apply(kind, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = cpu_loops.exp_f32(x[i]) if kind == 0 else cpu_loops.softplus_f32(x[i])
    return out


SPECIAL = [-np.inf, -200.0, -103.0, -87.4, -87.3, -20.0, -1e-8, 0.0, 1e-8, 0.5, 20.0, 88.7, 88.73, 100.0, np.inf]


def test_exp_and_softplus_match_torch():
    """exp within 2 ulp of torch over the whole fp32 range, 0 below the underflow bound and inf above overflow;
    softplus within 2 ulp; NaN stays NaN."""
    x = np.concatenate([np.linspace(-90, 90, 200_001), SPECIAL]).astype(np.float32)
    for kind, want in ((0, torch.exp), (1, torch.nn.functional.softplus)):
        got = torch.from_numpy(_apply(kind, x))
        expected = want(torch.from_numpy(x).double()).float()
        close = torch.isclose(got, expected, rtol=2.5e-7, atol=2e-38) | (got == expected)
        assert close.all(), f"kind {kind}: worst at x = {x[~close.numpy()][:5]}"
    assert np.isnan(_apply(0, np.array([np.nan], np.float32))).all()
    assert np.isnan(_apply(1, np.array([np.nan], np.float32))).all()


def make_inputs(b, d, h, w, n, rank=None, seed=0):
    """SS2D's projected form: x (b, d, h, w), A (4d, n), D and bias (4d,), delta_proj (4, d, r), x_proj (4, r+2n, d)."""
    g = torch.Generator().manual_seed(seed)
    rank = rank or math.ceil(d / 16)
    x = torch.randn(b, d, h, w, generator=g)
    A = -torch.rand(4 * d, n, generator=g) * 4 - 0.1
    D, bias = torch.randn(4 * d, generator=g), torch.randn(4 * d, generator=g) - 2
    delta_proj = torch.randn(4, d, rank, generator=g) * rank**-0.5
    x_proj = torch.randn(4, rank + 2 * n, d, generator=g) * d**-0.5
    return x, A, D, bias, delta_proj, x_proj


def scan(backend, x, A, D, bias, delta_proj, x_proj, softplus=True, **kwargs):
    return cross_selective_scan(
        x, None, A, None, None, D, bias, softplus, delta_proj=delta_proj, x_proj=x_proj, backend=backend, **kwargs
    )


@pytest.mark.parametrize(
    "b, d, h, w, n",
    [(1, 96, 14, 14, 1), (2, 40, 5, 7, 1), (3, 17, 3, 5, 2), (1, 48, 9, 6, 4), (1, 8, 1, 1, 1), (4, 33, 6, 4, 16)],
)
@pytest.mark.parametrize("out_channel_first", [True, False])
@torch.no_grad()
def test_cpu_loop_matches_reference(b, d, h, w, n, out_channel_first):
    inputs = make_inputs(b, d, h, w, n)
    want = scan("reference", *inputs, out_channel_first=out_channel_first)
    got = scan("cpu", *inputs, out_channel_first=out_channel_first)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


@torch.no_grad()
def test_cpu_loop_without_skip_bias_or_softplus():
    """Each optional input left out; without softplus the step sizes are made positive (as the caller must)."""
    x, A, D, bias, delta_proj, x_proj = make_inputs(2, 24, 4, 6, 1)
    positive = (x.abs(), A, D, bias.abs() * 0.1, delta_proj.abs() * 0.1, x_proj.abs())
    cases = [
        ((x, A, None, bias, delta_proj, x_proj), True),
        ((x, A, D, None, delta_proj, x_proj), True),
        (positive, False),
        ((*positive[:3], None, *positive[4:]), False),
    ]
    for args, softplus in cases:
        want = scan("reference", *args, softplus=softplus)
        assert want.isfinite().all()
        torch.testing.assert_close(scan("cpu", *args, softplus=softplus), want, rtol=2e-5, atol=2e-5)


@torch.no_grad()
def test_cpu_loop_layouts_and_batch_one():
    """A channel-last view, a strided slice and batch 1 read the same numbers as contiguous copies."""
    x, *rest = make_inputs(1, 32, 8, 10, 1)
    channel_last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    strided = torch.stack([x, -x], dim=-1).flatten(-2)[..., ::2]
    assert not strided.is_contiguous()
    want = scan("reference", x, *rest)
    for view in (channel_last, strided):
        torch.testing.assert_close(scan("cpu", view, *rest), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("out_fp32", [False, True])
@torch.no_grad()
def test_cpu_loop_bf16(out_fp32):
    """bf16 inputs compute in fp32 and come back as bf16 (or fp32 with out_fp32)."""
    x, A, D, bias, delta_proj, x_proj = make_inputs(2, 32, 6, 6, 1)
    x, x_proj = x.bfloat16(), x_proj.bfloat16()
    got = scan("cpu", x, A, D, bias, delta_proj, x_proj, out_fp32=out_fp32)
    want = scan("reference", x.float(), A, D, bias, delta_proj, x_proj.float())
    assert got.dtype == (torch.float32 if out_fp32 else torch.bfloat16)
    tol = 2e-5 if out_fp32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def test_default_takes_the_loop_only_where_it_serves(monkeypatch):
    """Eager CPU calls in the projected form take the CPU backend, training too; FLOP counting, a forced backend and a
    missing numba take torch."""
    calls = []
    loop = cpu.cross_selective_scan_cpu
    monkeypatch.setattr(cpu, "cross_selective_scan_cpu", lambda *a, **k: calls.append(1) or loop(*a, **k))

    def taken(run):
        calls.clear()
        run()
        return bool(calls)

    def train(inputs):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        scan(None, *leaves).sum().backward()
        assert all(t.grad is not None for t in leaves)

    inputs, wide_state = make_inputs(1, 16, 4, 4, 1), make_inputs(1, 16, 4, 4, 2)
    with torch.no_grad():
        assert taken(lambda: scan(None, *inputs)) and taken(lambda: scan(None, *wide_state))
    with torch.no_grad(), FlopCounterMode(display=False):
        assert not taken(lambda: scan(None, *inputs))
    with torch.no_grad(), force_backend("torch"):
        assert not taken(lambda: scan(None, *inputs))
    assert taken(lambda: train(inputs)) and taken(lambda: train(wide_state))
    monkeypatch.setattr(backend_module, "numba_problem", lambda: "needs the numba package, which is not installed")
    with torch.no_grad():
        assert not taken(lambda: scan(None, *inputs))
        with pytest.raises(RuntimeError, match="backend 'cpu' needs the numba package"):
            scan("cpu", *inputs)


def test_cpu_backend_takes_route_ordered_inputs():
    """Route-ordered delta, B and C (no x_proj) run the kernels composed with the selective scan's loop."""
    x, A, D, bias, delta_proj, _ = make_inputs(2, 16, 4, 5, 2)
    g = torch.Generator().manual_seed(3)
    delta, B, C = torch.randn(2, 4, 1, 20, generator=g), torch.randn(2, 4, 2, 20, generator=g), torch.randn(2, 4, 2, 20)
    with torch.no_grad():
        got, want = (
            cross_selective_scan(x, delta, A, B, C, D, bias, True, backend=name, delta_proj=delta_proj)
            for name in ("cpu", "reference")
        )
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


def run_with_grads(backend, inputs, softplus=True, seed=1):
    """Output and the gradient of every input, for one random output gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = scan(backend, *leaves, softplus=softplus)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y))
    return [y] + [t.grad for t in leaves]


@pytest.mark.parametrize(
    "b, d, h, w, n",
    [(1, 16, 4, 4, 1), (2, 40, 5, 7, 1), (1, 96, 14, 14, 1), (3, 17, 3, 1, 1), (2, 8, 1, 1, 1)]
    + [(1, 16, 4, 4, 16), (2, 24, 5, 7, 4), (1, 8, 1, 1, 2)],
)
def test_cpu_loop_gradients_match_reference(b, d, h, w, n):
    """d_state 1 trains through the fused loop, d_state > 1 through the routes composed with the selective scan's."""
    inputs = make_inputs(b, d, h, w, n)
    names = ["y", "x", "A", "D", "bias", "delta_proj", "x_proj"]
    for name, got, want in zip(names, run_with_grads("cpu", inputs), run_with_grads("reference", inputs)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6 * scale, msg=lambda m, n=name: f"{n}: {m}")


def test_cpu_loop_gradients_without_softplus_and_strided():
    """Step sizes without softplus (made positive), and a non-contiguous channel-last x."""
    x, A, D, bias, delta_proj, x_proj = make_inputs(2, 24, 5, 6, 1)
    x = x.abs().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    inputs = (x, A, D, bias.abs() * 0.1, delta_proj.abs() * 0.1, x_proj.abs())
    for got, want in zip(run_with_grads("cpu", inputs, False), run_with_grads("reference", inputs, False)):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6 * want.abs().max().item())


def test_cpu_loop_gradients_bf16():
    """bf16 x and x_proj: the loop computes in fp32 and their gradients come back in bf16."""
    x, A, D, bias, delta_proj, x_proj = make_inputs(2, 32, 6, 6, 1)
    inputs = (x.bfloat16(), A, D, bias, delta_proj, x_proj.bfloat16())
    got = run_with_grads("cpu", inputs)
    want = run_with_grads("reference", [t.float() for t in inputs])
    assert got[1].dtype == got[6].dtype == torch.bfloat16
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=3e-2 * b.abs().max().item())


@torch.no_grad()
def test_torch_thread_count_is_kept():
    """numba's OpenMP pool starts on the loop's first parallel call and resets OpenMP's thread count; the loop puts
    torch's back, and runs with as many threads as torch."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            scan(None, *make_inputs(3, 64, 4, 4, 1))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("pieces", [(1, 96, 2), (8, 96, 2), (3, 40, 2), (1, 8, 4), (2, 768, 4)])
def test_pieces_cover_every_channel_once_and_share_out_evenly(pieces):
    batch, channels, threads = pieces
    got = cpu_loops.pieces(batch, channels, threads).tolist()
    for image in range(batch):
        spans = [(c0, c1, block) for i, c0, c1, block in got if i == image]
        assert [block for *_, block in spans] == list(range(len(spans)))
        assert spans[0][0] == 0 and spans[-1][1] == channels
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    if channels >= threads * cpu_loops.CHANNEL_ALIGN:
        assert len(got) % threads == 0


@torch.no_grad()
def test_models_on_the_loop_equal_the_torch_path():
    """VMamba v2 (d_state 1) and a gated v0 SS2D layer (d_state 16, as in vanilla VMamba) by default and on torch."""
    torch.manual_seed(0)
    layer = SS2D(48, d_state=16, ssm_ratio=2.0, gate=True).eval()
    cases = [(timm.create_model("test_vmamba").eval(), torch.randn(2, 3, 64, 64)), (layer, torch.randn(2, 7, 9, 48))]
    for model, x in cases:
        with force_backend("torch"):
            want = model(x)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


def test_training_with_wide_state_keeps_only_the_inputs():
    """d_state 16 on the CPU backend: autograd keeps x and the routes' low-rank projections, not the four route copies
    of x, the full-rank step sizes or the loop's states (made again in the backward)."""
    x, A, D, bias, delta_proj, x_proj = (t.requires_grad_(True) for t in make_inputs(2, 64, 16, 16, 16))
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = scan("cpu", x, A, D, bias, delta_proj, x_proj)
    b, d, h, w = x.shape
    projections = b * x_proj.shape[0] * x_proj.shape[1] * h * w
    small = sum(t.numel() for t in (A, D, bias, delta_proj, x_proj))
    # x, and a copy the projection's matrix product may keep; one route copy of x would be 4 x.numel()
    assert sum(storages.values()) <= (2 * x.numel() + projections + small) * 4
    y.sum().backward()
    assert all(t.grad is not None for t in (x, A, D, bias, delta_proj, x_proj))
