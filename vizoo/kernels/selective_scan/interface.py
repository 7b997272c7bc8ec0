"""``selective_scan``: the public entry point, call-compatible with mamba-ssm's ``selective_scan_fn``."""

from __future__ import annotations

import torch

from vizoo.kernels.backend import fp32_under_autocast, pick_backend
from vizoo.kernels.counting import record_kernel_macs
from vizoo.kernels.selective_scan.chunked import selective_scan_chunked
from vizoo.kernels.selective_scan.reference import selective_scan_reference


def selective_scan_triton(*args, **kwargs):
    """The Triton kernels, imported on first use (the module needs triton)."""
    from vizoo.kernels.selective_scan.triton import selective_scan_triton

    return selective_scan_triton(*args, **kwargs)


def selective_scan_cpu(*args, **kwargs):
    """The compiled CPU loop, imported on first use (the module needs numba, and compiles on its first call)."""
    from vizoo.kernels.selective_scan.cpu import selective_scan_cpu

    return selective_scan_cpu(*args, **kwargs)


BACKENDS = {
    "reference": selective_scan_reference,
    "torch": selective_scan_chunked,
    "triton": selective_scan_triton,
    "cpu": selective_scan_cpu,
}


@fp32_under_autocast
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
    out_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Mamba's S6, Gu & Dao 2023), accumulated in fp32 whatever the input dtype and under
    autocast (``fp32_under_autocast``).

    Args:
        u: (b, d, l) inputs.
        delta: (b, d, l) step sizes.
        A: (d, n) state matrix diagonal (negative for a stable scan).
        B: (b, g, n, l) with g dividing d (each group serves d // g channels), or (b, n, l) for one group.
        C: shaped as B.
        D: optional (d,) skip.
        z: optional (b, d, l) gate, applied as ``y * silu(z)``.
        delta_bias: optional (d,) added to delta, then ``softplus`` if ``delta_softplus``.
        return_last_state: also return the final state (b, d, n) in fp32, without gradient.
        backend: ``"reference"`` (sequential loop, the specification), ``"torch"`` (parallel chunked form, exportable),
            ``"triton"`` (GPU kernels; d_state up to 64), ``"cpu"`` (one compiled CPU loop, forward and
            backward; needs numba) or None for the best path on the input's device (the CPU loop for eager CPU calls).
        out_fp32: return y in fp32 whatever u's dtype (fp16 in and out can overflow to inf, then NaN).

    Returns:
        y (b, d, l) in u's dtype (fp32 with ``out_fp32``), and the last state when asked.
    """
    B, C = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    impl = pick_backend("selective_scan", BACKENDS, backend, u.device, cpu_loop=True)
    record_kernel_macs(
        "selective_scan", selective_scan_macs(*u.shape, A.shape[1], with_d=D is not None, with_z=z is not None)
    )
    if impl is BACKENDS["triton"]:
        return impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, out_fp32=out_fp32)
    if out_fp32:  # these paths compute in fp32 and return u's dtype: upcasting u first is free and exact
        u = u.float()
    return impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_macs(b: int, d: int, length: int, n: int, with_d: bool = True, with_z: bool = False) -> int:
    """MACs of one selective scan as VMamba and mamba-ssm count them: 9·B·L·D·N, plus B·D·L each for D and z."""
    return 9 * b * length * d * n + (b * d * length if with_d else 0) + (b * d * length if with_z else 0)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> tuple[torch.Tensor, torch.Tensor]:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, channels, length), got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (channels={d}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported; pass a real (d, n) tensor")
    checked = []
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != b or t.shape[2] != n or t.shape[3] != length or d % t.shape[1]:
            raise ValueError(
                f"selective_scan: {name} must be (batch={b}, groups, d_state={n}, length={length}) with groups "
                f"dividing channels={d}, or (batch, d_state, length); got {tuple(t.shape)}"
            )
        checked.append(t)
    if checked[0].shape[1] != checked[1].shape[1]:
        raise ValueError(f"selective_scan: B and C need the same number of groups, got {B.shape} and {C.shape}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"selective_scan: {name} must be ({d},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    return checked[0], checked[1]
