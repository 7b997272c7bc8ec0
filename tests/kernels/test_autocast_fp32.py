"""Under ``torch.autocast`` the scans and linear attentions compute in fp32 (``vizoo.kernels.backend.
fp32_under_autocast``), observed two ways: every arithmetic op inside a kernel call is recorded with the dtypes it
saw (a ``TorchDispatchMode`` sits below autocast, so it sees the casts autocast makes), and the call's output equals,
exactly, the fp32 computation on the same inputs rounded once to the input dtype. Both hold for the kernels alone and
as an open_clip tower calls them under bf16 autocast, whose parameters and gradients stay fp32. (CUDA's fp16 autocast
takes the same path: the wrapper keys on the input's device type.)"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vizoo.kernels import additive_recurrence, cross_selective_scan, linear_attention, selective_scan
from vizoo.kernels.selective_scan import selective_scan_states

HALF = (torch.float16, torch.bfloat16)
# ops that only move, view or cast data: the half-precision inputs may pass through these on their way to fp32
MOVES = {
    "_to_copy",
    "_unsafe_view",
    "alias",
    "as_strided",
    "cat",
    "clone",
    "detach",
    "expand",
    "flip",
    "permute",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "squeeze",
    "stack",
    "t",
    "transpose",
    "unbind",
    "unsqueeze",
    "view",
}


class HalfPrecisionOps(TorchDispatchMode):
    """Records every arithmetic op (not in ``MOVES``) that takes or gives an fp16/bf16 tensor."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in MOVES:
            self.count += 1
            tensors = torch.utils._pytree.tree_leaves((args, kwargs, out))
            if any(isinstance(t, torch.Tensor) and t.dtype in HALF for t in tensors):
                self.ops.append(name)
        return out


def _upcast(value):
    return value.detach().float() if isinstance(value, torch.Tensor) and value.dtype in HALF else value


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def check_fp32_under_autocast(kernel, args, kwargs):
    """``kernel(*args, **kwargs)`` under CPU bf16 autocast: no arithmetic in half precision, and the output is the
    fp32 computation (no autocast, upcast inputs) rounded once to the first input's dtype."""
    with torch.autocast("cpu", dtype=torch.bfloat16), HalfPrecisionOps() as recorder:
        out = _first(kernel(*args, **kwargs))
    assert recorder.count > 0, "no arithmetic recorded: the recorder saw nothing"
    assert recorder.ops == [], (
        f"{kernel.__name__} computed in half precision under autocast: {sorted(set(recorder.ops))}"
    )
    expected = _first(kernel(*map(_upcast, args), **{k: _upcast(v) for k, v in kwargs.items()}))
    assert expected.dtype == torch.float32 and out.dtype == args[0].dtype
    assert torch.equal(out, expected.to(out.dtype))


def _scan_inputs(b=1, d=8, length=24, n=4):
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(b, d, length, generator=g), torch.randn(b, d, length, generator=g)
    B, C = torch.randn(b, 1, n, length, generator=g), torch.randn(b, 1, n, length, generator=g)
    A = -torch.rand(d, n, generator=g) * 4
    return u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), torch.ones(d), torch.zeros(d)


def test_selective_scan():
    u, delta, A, B, C, D, bias = _scan_inputs()
    check_fp32_under_autocast(selective_scan, (u, delta, A, B, C, D, u.neg(), bias, True), {})


def test_selective_scan_out_fp32_and_last_state():
    u, delta, A, B, C, D, bias = _scan_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = selective_scan(u, delta, A, B, C, D, delta_bias=bias, return_last_state=True, out_fp32=True)
    assert y.dtype == torch.float32 and state.dtype == torch.float32
    expected = selective_scan(u.float(), delta.float(), A, B.float(), C.float(), D, delta_bias=bias)
    assert torch.equal(y, expected)


def test_selective_scan_states():
    u, delta, A, B, _, _, bias = _scan_inputs()
    check_fp32_under_autocast(selective_scan_states, (u, delta, A, B, bias, True), {})


@pytest.mark.parametrize("n", [1, 4])
def test_cross_selective_scan_with_projections(n):
    """SS2D's call: the step inputs, B and C projected from x (``x_proj``) and the step sizes from rank r to d
    (``delta_proj``), matrix products that autocast would run in bf16."""
    g = torch.Generator().manual_seed(0)
    d, r = 8, 2
    x = torch.randn(1, d, 4, 6, generator=g).bfloat16()
    A = -torch.rand(4 * d, n, generator=g) * 4
    kwargs = dict(
        delta_bias=torch.zeros(4 * d),
        delta_softplus=True,
        out_channel_first=False,
        delta_proj=torch.randn(4, d, r, generator=g),
        x_proj=torch.randn(4, r + 2 * n, d, generator=g),
    )
    check_fp32_under_autocast(cross_selective_scan, (x, None, A, None, None, torch.ones(4 * d)), kwargs)


@pytest.mark.parametrize("kernel", [linear_attention, additive_recurrence])
def test_linear_attention(kernel):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.rand(1, 2, 16, 8, generator=g) + 0.05 for _ in range(2))
    v = torch.randn(1, 2, 16, 8, generator=g)
    check_fp32_under_autocast(kernel, (q.bfloat16(), k.bfloat16(), v.bfloat16()), {})


def test_outside_autocast_the_kernel_runs_as_is():
    """No autocast: bf16 in, bf16 out, the same values as the undecorated kernel's."""
    u, delta, A, B, C, D, bias = _scan_inputs()
    with HalfPrecisionOps() as recorder:
        y = selective_scan(u, delta, A, B, C, D, delta_bias=bias)
    assert y.dtype == torch.bfloat16 and torch.equal(y, selective_scan.__wrapped__(u, delta, A, B, C, D, None, bias))
    q = torch.rand(1, 2, 16, 8).bfloat16()
    assert linear_attention(q, q, q).dtype == torch.bfloat16
    assert recorder.count > 0


@pytest.mark.parametrize(
    "tower, module, kernel",
    [
        ("test_vmamba", "vizoo.layers.ss2d", "cross_selective_scan"),
        ("test_mlla", "vizoo.layers.linear_attention", "linear_attention"),
    ],
)
def test_open_clip_tower_under_bf16_autocast(tower, module, kernel, monkeypatch):
    """An open_clip CLIP with a vizoo tower, forward and backward under bf16 autocast: every call of the tower's
    kernel (its activations in bf16 from the projections before it, or fp32 after MLLA's RoPE) computes in fp32 and
    equals the fp32 computation on its inputs; the tower's parameters and their gradients stay fp32."""
    pytest.importorskip("open_clip")
    import importlib

    import vizoo.multimodal as vm

    layer_module = importlib.import_module(module)
    original = getattr(layer_module, kernel)
    calls = []

    def spy(*args, **kwargs):
        with HalfPrecisionOps() as recorder:
            out = original(*args, **kwargs)
        detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        calls.append((detached, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}))
        calls[-1] += (_first(out).detach(), recorder.ops, torch.is_autocast_enabled("cpu"))
        return out

    monkeypatch.setattr(layer_module, kernel, spy)
    model, *_ = vm.create_clip(tower, text="tiny", embed_dim=32, image_size=64)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = model.encode_image(images, normalize=True)
    embedding.float().sum().backward()
    assert calls, f"{tower} never called {kernel}"
    for args, kwargs, out, half_ops, under_autocast in calls:
        assert under_autocast, f"{kernel} ran outside autocast: the check tests nothing"
        assert half_ops == [], f"half-precision arithmetic inside {kernel}: {sorted(set(half_ops))}"
        expected = original(*map(_upcast, args), **{k: _upcast(v) for k, v in kwargs.items()})
        assert out.dtype == args[0].dtype and torch.equal(out, expected.to(out.dtype))
    visual = list(model.visual.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in visual if p.requires_grad)
