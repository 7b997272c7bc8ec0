"""The selective scan as a plain sequential loop: the specification every other backend is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba's S6 recurrence, one time step at a time, accumulated in fp32.

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, g, n, l) with g dividing d; D, delta_bias (d,).
    ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t``, ``y_t = <h_t, C_t> + D u_t``, ``y *= silu(z)``.
    Returns y in u's dtype, and the fp32 state h_L (b, d, n) when ``return_last_state``.
    """
    b, d, length = u.shape
    n = A.shape[1]
    g = B.shape[1]
    u32 = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Each group of B and C serves d // g consecutive channels.
    B = B.float().repeat_interleave(d // g, dim=1)  # (b, d, n, l)
    C = C.float().repeat_interleave(d // g, dim=1)
    A = A.float()

    h = u32.new_zeros(b, d, n)
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)  # (b, d, n)
        h = decay * h + (delta[:, :, t] * u32[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)  # (b, d, l)
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, h.detach()) if return_last_state else y
