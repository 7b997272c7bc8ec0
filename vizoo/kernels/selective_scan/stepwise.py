"""The selective scan one step at a time over a state kept whole: the CPU inference path for d_state n > 1.

The blocked scan (``chunked``) has no loop over the sequence, but it writes every step's decays and inputs out in full,
(b, d, n) numbers per step, O(b·d·n·L) in all, and reads them back several times: with n = 16 that traffic is most of
a vision SSM's time on a CPU. Here the state h (b, g, d/g, n) stays one small tensor that each step updates in place
of the last (``exp(Δ_t A)·h + Δ_t u_t B_t``, then ``y_t = h·C_t``), so memory traffic is O(b·d·(n + L)), at the price
of a few small ops per step. That price is fixed per step, so the loop wins once a step's state is large enough
(``STEPWISE_MIN_STATE`` numbers); with n = 1 it never is, and the blocked scan stays.

Only where nothing traces and nothing differentiates: the loop would unroll into L steps in an exported or compiled
graph, and autograd would keep every step's state. ``RecomputedScan`` (training) runs its forward here too, since that
forward keeps no graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vizoo.kernels.backend import is_traced

# Per-step state size (b·d·n numbers) from which the loop beats the blocked scan on a CPU: below it the loop's fixed
# per-step cost dominates, above it the blocked scan's O(b·d·n·L) memory traffic does.
STEPWISE_MIN_STATE = 2048


def stepwise_applies(u: torch.Tensor, A: torch.Tensor) -> bool:
    """Whether ``scan_stepwise`` should run: n > 1, a CPU, a large enough state, and no tracer watching."""
    n = A.shape[1]
    return n > 1 and u.device.type == "cpu" and u.shape[0] * u.shape[1] * n >= STEPWISE_MIN_STATE and not is_traced()


@torch.no_grad()
def scan_stepwise(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The read-out ``<h_t, C_t>`` (b, d, L) fp32 and the last state (b, d, n) fp32; no skip, no gate, no gradient.

    Shapes as ``selective_scan_reference``: u, delta (b, d, L); A (d, n); B, C (b, g, n, L); delta_bias (d,).
    """
    b, d, length = u.shape
    n, g = A.shape[1], B.shape[1]
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # never exported (see ``stepwise_applies``): torch's op is the fastest
    # Time-major copies, so that every step reads contiguous memory: (L, b, g, d/g, 1) and (L, b, g, 1, n).
    step = delta.view(b, g, d // g, length).permute(3, 0, 1, 2).unsqueeze(-1).contiguous()
    drive = (delta * u.float()).view(b, g, d // g, length).permute(3, 0, 1, 2).unsqueeze(-1).contiguous()
    B_t = B.float().permute(3, 0, 1, 2).unsqueeze(3).contiguous()
    C_t = C.float().permute(3, 0, 1, 2).unsqueeze(3).contiguous()  # (L, b, g, 1, n)
    A = A.float().view(g, d // g, n)
    h = u.new_zeros(b, g, d // g, n, dtype=torch.float32)
    y = torch.empty(length, b, g, d // g)
    for t in range(length):
        h = torch.addcmul(torch.exp(step[t] * A) * h, drive[t], B_t[t])
        # elementwise, not a matrix product: FLOP counters then see none of the scan, whose MACs the kernel records
        torch.sum(h * C_t[t], dim=-1, out=y[t])
    return y.view(length, b, d).permute(1, 2, 0), h.reshape(b, d, n)
