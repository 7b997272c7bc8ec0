"""A selective scan that returns every hidden state instead of reading it out with C.

Spatial-Mamba (Xiao et al., "Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion",
ICLR 2025, arXiv 2410.15091) fuses the states of neighbouring pixels on the 2D map before the read-out, so it needs
``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t`` for every t. ``reference`` is a sequential loop (the specification);
``torch`` solves the recurrence with the blocked scan of ``selective_scan.chunked`` (no loop over the length, so it
traces and exports without Loop/Scan/CumSum). The read-out ``y_t = <h_t, C_t> + D u_t`` is the caller's.
"""

from __future__ import annotations

import torch

from vizoo.kernels.backend import fp32_under_autocast, pick_backend
from vizoo.kernels.counting import record_kernel_macs
from vizoo.kernels.selective_scan.chunked import linear_recurrence, softplus


def _prepare(u, delta, delta_bias, delta_softplus):
    """fp32 step sizes (b, d, l) and Δ·u (b, d, l)."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = softplus(delta)  # exports without Softplus/Greater/Where (mobile runtimes lack them)
    return delta, delta * u.float()


def selective_scan_states_reference(u, delta, A, B, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """(b, d, n, l) states by a loop over time, in fp32, cast to u's dtype."""
    delta, du = _prepare(u, delta, delta_bias, delta_softplus)
    A = A.float()
    B = B.float().repeat_interleave(u.shape[1] // B.shape[1], dim=1)  # (b, d, n, l)
    h = du.new_zeros(*u.shape[:2], A.shape[1])
    states = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + du[:, :, t, None] * B[..., t]
        states.append(h)
    return torch.stack(states, dim=-1).to(u.dtype)


def selective_scan_states_torch(u, delta, A, B, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """(b, d, n, l) states by the blocked parallel scan, in fp32, cast to u's dtype."""
    delta, du = _prepare(u, delta, delta_bias, delta_softplus)
    g = B.shape[1]
    decay = torch.exp(delta.unsqueeze(2) * A.float()[None, :, :, None])  # (b, d, n, l)
    # Δ·u times each group's B, broadcast over the group's d/g channels (no repeat: NNAPI lacks Expand)
    inputs = (du.unflatten(1, (g, -1)).unsqueeze(3) * B.float().unsqueeze(2)).flatten(1, 2)  # (b, d, n, l)
    return linear_recurrence(decay, inputs, dim=3).to(u.dtype)


STATES_BACKENDS = {
    "reference": selective_scan_states_reference,
    "torch": selective_scan_states_torch,
    "triton": selective_scan_states_torch,  # no Triton kernel yet: the torch path serves CUDA too
}


def selective_scan_states_macs(b: int, d: int, length: int, n: int) -> int:
    """MACs as Spatial-Mamba counts its state scan (mamba-ssm's formula without C, D or z): 7·B·L·D·N."""
    return 7 * b * length * d * n


@fp32_under_autocast
def selective_scan_states(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """All hidden states of Mamba's S6 recurrence, accumulated in fp32 (under autocast too).

    Args:
        u: (b, d, l) inputs.
        delta: (b, d, l) step sizes.
        A: (d, n) state matrix diagonal (negative for a stable scan).
        B: (b, g, n, l) with g dividing d, or (b, n, l) for one group.
        delta_bias: optional (d,) added to delta, then ``softplus`` if ``delta_softplus``.
        backend: "reference" (sequential loop), "torch" (blocked parallel scan, exportable), "triton" (the torch
            path for now) or None.

    Returns:
        h (b, d, n, l) in u's dtype, ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t`` with ``h_{-1} = 0``.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"selective_scan_states: u and delta must be (batch, channels, length) of one shape, got "
            f"{tuple(u.shape)} and {tuple(delta.shape)}"
        )
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(
            f"selective_scan_states: A must be a real (channels={d}, d_state) tensor, got {tuple(A.shape)}"
        )
    n = A.shape[1]
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if B.dim() != 4 or B.shape[0] != b or B.shape[2] != n or B.shape[3] != length or d % B.shape[1]:
        raise ValueError(
            f"selective_scan_states: B must be (batch={b}, groups, d_state={n}, length={length}) with groups "
            f"dividing channels={d}, or (batch, d_state, length); got {tuple(B.shape)}"
        )
    if delta_bias is not None and delta_bias.shape != (d,):
        raise ValueError(f"selective_scan_states: delta_bias must be ({d},), got {tuple(delta_bias.shape)}")
    impl = pick_backend("selective_scan_states", STATES_BACKENDS, backend, u.device)
    record_kernel_macs("selective_scan_states", selective_scan_states_macs(b, d, length, n))
    return impl(u, delta, A, B, delta_bias, delta_softplus)
