"""The torch selective scan with d_state n > 1 keeps only its inputs for the backward (``RecomputedScan``): what
autograd saves, measured in bytes, against the plain path; values and gradients equal to it; where it is not used;
tools/benchmark_memory.py."""

import csv

import pytest
import timm
import torch

import vizoo  # noqa: F401  (registers the vizoo models)
from vizoo.kernels import cross_selective_scan, force_backend
from vizoo.kernels.selective_scan import chunked
from vizoo.kernels.selective_scan.reference import selective_scan_reference


def make_inputs(b, d, length, n, g, dtype=torch.float32):
    torch.manual_seed(0)
    u = torch.randn(b, d, length, dtype=dtype)
    delta = (torch.randn(b, d, length) * 0.5).to(dtype)
    A = -torch.rand(d, n) * 4 - 0.1
    B = torch.randn(b, g, n, length, dtype=dtype)
    C = torch.randn(b, g, n, length, dtype=dtype)
    D = torch.randn(d)
    z = torch.randn(b, d, length, dtype=dtype)
    bias = torch.randn(d) * 0.5
    return [u, delta, A, B, C, D, z, bias]


def saved_bytes(fn):
    """fn()'s result and the bytes autograd saves for the backward while it runs, each storage counted once."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def grads_of(fn, inputs, **kwargs):
    """y, the last state and the gradients of every input for the loss <y, cos(index)>."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y, h = fn(*leaves, delta_softplus=True, return_last_state=True, **kwargs)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=torch.float32)).view_as(y).to(y.dtype))
    return [y, h] + [t.grad for t in leaves]


def test_saves_only_inputs_sized_tensors_where_the_plain_path_saves_n_times_more():
    u, delta, A, B, C, D, z, bias = inputs = [t.requires_grad_(True) for t in make_inputs(2, 64, 256, 16, 1)]
    bound = 3 * nbytes(u, delta, B, C, z)
    y, saved = saved_bytes(lambda: chunked.selective_scan_chunked(*inputs, delta_softplus=True))
    _, saved_plain = saved_bytes(lambda: chunked.scan_chunked(*inputs, delta_softplus=True))
    assert type(y.grad_fn).__name__ == "RecomputedScanBackward"
    assert saved < bound
    assert saved_plain > 3 * bound  # the bound fails by far without the recompute


@pytest.mark.parametrize("slice_elements,slices", [(1 << 22, 1), (2 * 12 * 37 * 5, 4), (1, 16)])
def test_values_and_gradients_match_the_plain_path_and_the_reference(monkeypatch, slice_elements, slices):
    monkeypatch.setattr(chunked, "SLICE_ELEMENTS", slice_elements)
    inputs = make_inputs(2, 12, 37, 16, 3)
    assert len(chunked.state_slices(inputs[0], inputs[2])) == slices
    recomputed = grads_of(chunked.selective_scan_chunked, inputs)
    for other in (chunked.scan_chunked, selective_scan_reference):
        for got, want in zip(recomputed, grads_of(other, inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    assert not recomputed[1].requires_grad


def test_state_slices_cover_the_states_once_within_the_budget(monkeypatch):
    monkeypatch.setattr(chunked, "SLICE_ELEMENTS", 2 * 30 * 100 * 4)  # four states' worth
    u, A = torch.empty(2, 30, 100), torch.empty(30, 10)
    slices = chunked.state_slices(u, A)
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    monkeypatch.setattr(chunked, "SLICE_ELEMENTS", 1)
    assert len(chunked.state_slices(u, A)) == 10


def test_half_inputs_give_half_gradients_equal_to_the_plain_path():
    inputs = make_inputs(2, 8, 50, 4, 2, dtype=torch.bfloat16)
    recomputed, plain = grads_of(chunked.selective_scan_chunked, inputs), grads_of(chunked.scan_chunked, inputs)
    for got, want, t in zip(recomputed[2:], plain[2:], inputs, strict=True):
        assert got.dtype == t.dtype
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert recomputed[0].dtype == torch.bfloat16 and recomputed[1].dtype == torch.float32


def test_only_some_inputs_wanting_gradients():
    u, delta, A, B, C, D, z, bias = make_inputs(1, 6, 20, 4, 2)
    B.requires_grad_(True)
    y = chunked.selective_scan_chunked(u, delta, A, B, C, D, z, bias, True)
    (grad_B,) = torch.autograd.grad(y.sum(), B)
    B_plain = B.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(chunked.scan_chunked(u, delta, A, B_plain, C, D, z, bias, True).sum(), B_plain)
    torch.testing.assert_close(grad_B, want)


def test_double_backward_matches_the_plain_path():
    inputs = make_inputs(1, 4, 19, 4, 2)
    second = {}
    for fn in (chunked.selective_scan_chunked, chunked.scan_chunked):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves, delta_softplus=True)
        (grad_u,) = torch.autograd.grad(y.square().sum(), leaves[0], create_graph=True)
        second[fn] = torch.autograd.grad(grad_u.square().sum(), [leaves[2], leaves[3]])
    for got, want in zip(second[chunked.selective_scan_chunked], second[chunked.scan_chunked], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_plain_path_where_recomputing_does_not_help_or_is_not_safe(monkeypatch):
    inputs = make_inputs(1, 4, 19, 4, 2)
    leaves = [t.requires_grad_(True) for t in inputs]

    def grad_fn_name(*args):
        y = chunked.selective_scan_chunked(*args)
        return type(y.grad_fn).__name__ if y.grad_fn is not None else None

    assert grad_fn_name(*leaves) == "RecomputedScanBackward"
    with torch.no_grad():
        assert grad_fn_name(*leaves) is None
    assert grad_fn_name(*(t.detach() for t in leaves)) is None
    n1 = make_inputs(1, 4, 19, 1, 2)
    assert grad_fn_name(*(t.requires_grad_(True) for t in n1)) not in (None, "RecomputedScanBackward")
    for flag in ("is_compiling", "is_exporting"):
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, flag, lambda: True)
            assert grad_fn_name(*leaves) not in (None, "RecomputedScanBackward")


def test_cross_selective_scan_with_n_above_1_saves_only_its_inputs():
    torch.manual_seed(0)
    b, d, h, w, n = 1, 16, 12, 12, 16
    x = torch.randn(b, d, h, w, requires_grad=True)
    delta = torch.randn(b, 4, d, h * w, requires_grad=True)
    A = (-torch.rand(4 * d, n) - 0.1).requires_grad_(True)
    B, C = (torch.randn(b, 4, n, h * w, requires_grad=True) for _ in range(2))
    D = torch.randn(4 * d, requires_grad=True)

    def run():
        return cross_selective_scan(x, delta, A, B, C, D, delta_softplus=True, backend="torch")

    y, saved = saved_bytes(run)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(chunked, "recompute_in_backward", lambda *tensors: False)
        y_plain, saved_plain = saved_bytes(run)
    # x and the route-ordered low-rank inputs only: not the four route copies of x, nor the scan's steps
    assert saved < 1.5 * nbytes(x, delta, B, C) < saved_plain / 8
    leaves = [x, delta, A, B, C, D]
    torch.testing.assert_close(y, y_plain)
    grads = torch.autograd.grad(y.square().sum(), leaves)
    grads_plain = torch.autograd.grad(y_plain.square().sum(), leaves)
    for got, want in zip(grads, grads_plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# A vanilla (d_state 16, gated) VMamba at the test model's size, and the Vim test model (d_state 8).
MODELS = {
    "test_vmamba_v0": (
        "test_vmamba",
        dict(stem="patch", downsample="merge", d_state=16, ssm_ratio=2.0, gate=True, depths=(1, 1, 1, 1)),
        32,
    ),
    "test_vim": ("test_vim", {}, 64),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_saves_less_with_equal_gradients(name, monkeypatch):
    model_name, kwargs, size = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, **kwargs).train()
    x = torch.randn(2, 3, size, size)
    results = {}
    for path in ("plain", "recompute"):
        with monkeypatch.context() as m:
            if path == "plain":
                m.setattr(chunked, "recompute_in_backward", lambda *tensors: False)
            torch.manual_seed(1)  # the same drop-path draws
            with force_backend("torch"):  # the torch path's two forms, not the CPU loop
                y, saved = saved_bytes(lambda: model(x))
            y.square().mean().backward()
        results[path] = saved, y.detach(), {k: p.grad for k, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    (saved, y, grads), (saved_plain, y_plain, grads_plain) = results["recompute"], results["plain"]
    assert saved < 0.4 * saved_plain
    torch.testing.assert_close(y, y_plain)
    assert grads.keys() == grads_plain.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], grads_plain[key], rtol=1e-4, atol=1e-5, msg=key)


def test_benchmark_tool_writes_every_path(load_tool, tmp_path, capsys):
    tool = load_tool("benchmark_memory")
    out = tmp_path / "memory.csv"
    assert tool.main(["--models", "test_vim", "--img-size", "32", "--steps", "1", "--out", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == tool.COLUMNS
    assert [(r["model"], r["path"], r["status"]) for r in rows] == [("test_vim", p, "ok") for p in tool.PATHS]
    plain, recompute, loops = rows
    assert float(recompute["saved_mb"]) < float(plain["saved_mb"])
    assert float(loops["saved_mb"]) < float(plain["saved_mb"])
    assert all(float(r["peak_rss_mb"]) > 0 and float(r["step_ms"]) > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "test_vim: recompute / plain" in printed and "test_vim: cpu / plain" in printed
