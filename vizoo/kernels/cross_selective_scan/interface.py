"""``cross_selective_scan``: VMamba's SS2D core (cross_scan -> selective_scan -> cross_merge) in one call."""

from __future__ import annotations

import torch

from vizoo.kernels.backend import fp32_under_autocast, pick_backend
from vizoo.kernels.counting import record_kernel_macs
from vizoo.kernels.cross_scan import route_order
from vizoo.kernels.cross_scan.reference import NUM_ROUTES
from vizoo.kernels.cross_selective_scan.reference import cross_selective_scan_reference
from vizoo.kernels.cross_selective_scan.torch_ops import cross_selective_scan_torch
from vizoo.kernels.selective_scan import selective_scan_macs


def cross_selective_scan_triton(*args, **kwargs):
    """The fused Triton kernel, imported on first use (the module needs triton)."""
    from vizoo.kernels.cross_selective_scan.triton import cross_selective_scan_triton

    return cross_selective_scan_triton(*args, **kwargs)


def cross_selective_scan_cpu(*args, **kwargs):
    """The compiled CPU loop, imported on first use (the module needs numba, and compiles on its first call)."""
    from vizoo.kernels.cross_selective_scan.cpu import cross_selective_scan_cpu

    return cross_selective_scan_cpu(*args, **kwargs)


BACKENDS = {
    "reference": cross_selective_scan_reference,
    "torch": cross_selective_scan_torch,
    "triton": cross_selective_scan_triton,
    "cpu": cross_selective_scan_cpu,
}


@fp32_under_autocast
def cross_selective_scan(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor | None,
    C: torch.Tensor | None,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    out_channel_first: bool = True,
    out_fp32: bool = False,
    backend: str | None = None,
    delta_proj: torch.Tensor | None = None,
    x_proj: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scan a map along VMamba's four routes, one selective scan per route, and sum the routes back onto the map.

    Equal to ``cross_merge(selective_scan(cross_scan(x), delta, A, B, C, D, ...))`` with route k owning the scan
    channels ``k·d .. (k+1)·d`` and B/C group k. The Triton path reads x along each route and writes the merged sum,
    so the four route copies of x and of the output are never materialised. Accumulation is fp32, and
    under autocast the whole call (the projections too) computes in fp32 (``fp32_under_autocast``).

    Args:
        x: (b, d, h, w) map, any strides (pass ``x.permute(0, 3, 1, 2)`` for channel-last data).
        delta: (b, 4, d, h·w) step sizes of each route, in route order (step t of route k at ``[:, k, :, t]``);
            with ``delta_proj``, (b, 4, r, h·w) low-rank step inputs, projected to d channels by it.
        A: (4·d, n), n <= 64 for Triton.
        B: (b, 4, n, h·w) each route's B, in route order.
        C: (b, 4, n, h·w) each route's C, in route order.
        D: optional (4·d,) skip.
        delta_bias: optional (4·d,) added to the step sizes.
        out_channel_first: return (b, d, h·w) if True, else (b, h·w, d).
        out_fp32: return fp32 whatever x's dtype.
        backend: "reference", "torch" (step-major scan for n = 1, see ``torch_ops``), "triton" (one fused kernel),
            "cpu" (compiled CPU loops, needs numba: one fused loop for SS2D's projected form, ``x_proj`` with
            ``delta_proj``, except for training with n > 1, which composes the kernels with the selective scan's loop;
            see ``cpu``) or None: "triton" on CUDA, "cpu" for eager CPU calls in the projected form, "torch"
            otherwise.
        delta_proj: optional (4, d, r) per-route step-size projection (SS2D's ``dt_projs_weight``): the step sizes
            are ``delta_proj @ delta``. The torch path projects after putting the rank-r inputs in its own order.
        x_proj: optional (4, r + 2n, d) per-route projection of x (SS2D's ``x_proj_weight``) giving each route's
            step inputs, B and C (the rank-r rows first) at every pixel; pass delta, B and C as None then. The torch
            path with n = 1 projects the routes it reads, in its own order, so nothing is put in route order.

    Returns:
        The merged map in x's dtype (fp32 with ``out_fp32``).
    """
    cpu_loop = projected_form(x_proj, delta_proj)
    impl = pick_backend("cross_selective_scan", BACKENDS, backend, x.device, cpu_loop)
    n = A.shape[-1]
    if x_proj is not None:
        _check_projection(x, x_proj, delta, B, C, n, delta_proj)
        if not (impl is cross_selective_scan_cpu or (impl is cross_selective_scan_torch and n == 1)):
            delta, B, C = route_ordered_projections(x, x_proj, n, backend)
            x_proj = None
    _check_inputs(x, delta, A, B, C, D, delta_bias, delta_proj)
    b, d, h, w = x.shape
    record_kernel_macs("selective_scan", selective_scan_macs(b, NUM_ROUTES * d, h * w, n, D is not None))
    projection = {} if x_proj is None else {"x_proj": x_proj}  # the cpu loop and the torch path with n = 1 take it
    return impl(x, delta, A, B, C, D, delta_bias, delta_softplus, out_fp32, out_channel_first, delta_proj, **projection)


def projected_form(x_proj: torch.Tensor | None, delta_proj: torch.Tensor | None) -> bool:
    """Whether a call is in SS2D's projected form, ``x_proj`` with a per-route low-rank (4, d, r) ``delta_proj``: the
    form the fused CPU loop takes."""
    return x_proj is not None and delta_proj is not None and delta_proj.dim() == 3


def route_ordered_projections(
    x: torch.Tensor, x_proj: torch.Tensor, n: int, backend: str | None = None
) -> tuple[torch.Tensor, ...]:
    """x (b, d, h, w) and x_proj (4, r + 2n, d) -> each route's step inputs (b, 4, r, h·w), B and C (b, 4, n, h·w),
    in route order: the map projected once per route in pixel order, then each route's few channels put in order."""
    # (4 c, d) @ (b, d, l): autograd keeps x itself, where (4, c, d) @ (b, 1, d, l) would keep four copies of it
    projected = torch.matmul(x_proj.flatten(0, 1), x.flatten(2)).unflatten(1, x_proj.shape[:2])  # (b, 4, c, l)
    projected = route_order(projected.unflatten(-1, x.shape[-2:]), backend=backend)
    return projected.split([x_proj.shape[1] - 2 * n, n, n], dim=2)


def _check_projection(x, x_proj, delta, B, C, n, delta_proj) -> None:
    if delta is not None or B is not None or C is not None:
        raise ValueError("cross_selective_scan: pass either x_proj or delta, B and C (as None with x_proj), not both")
    d = x.shape[1] if x.dim() == 4 else None
    rank = delta_proj.shape[-1] if delta_proj is not None and delta_proj.dim() == 3 else d
    if tuple(x_proj.shape) != (NUM_ROUTES, rank + 2 * n, d):
        raise ValueError(
            f"cross_selective_scan: x_proj must have shape ({NUM_ROUTES}, {rank} + 2·{n}, {d}) (step-size rank "
            f"{rank}{' from delta_proj' if delta_proj is not None else ', full'}, B and C of d_state {n}), "
            f"got {tuple(x_proj.shape)}"
        )


def _check_inputs(x, delta, A, B, C, D, delta_bias, delta_proj) -> None:
    if x.dim() != 4:
        raise ValueError(f"cross_selective_scan: x must be (batch, channels, height, width), got {tuple(x.shape)}")
    b, d, h, w = x.shape
    n = A.shape[-1]
    rank = delta_proj.shape[-1] if delta_proj is not None and delta_proj.dim() == 3 else d
    expected = {
        "delta_proj": (delta_proj, (NUM_ROUTES, d, rank)),
        "delta": (delta, (b, NUM_ROUTES, rank, h * w)),
        "A": (A, (NUM_ROUTES * d, n)),
        "B": (B, (b, NUM_ROUTES, n, h * w)),
        "C": (C, (b, NUM_ROUTES, n, h * w)),
        "D": (D, (NUM_ROUTES * d,)),
        "delta_bias": (delta_bias, (NUM_ROUTES * d,)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"cross_selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
