"""SS2D: VMamba's 2D selective-scan mixer (Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024).

The map is read along K routes, each route runs a selective scan with its own input-dependent step sizes and B/C
projections, and the K outputs are put back onto the map and summed. Two route sets:

- ``"cross"`` (VMamba): rows, columns and both reversed, each of length H·W. ``cross_selective_scan`` does the three
  steps in one call (one fused kernel on the GPU, so the four route copies of the map are never stored), the small
  per-route projections (``x_proj``) included.
- ``"atrous"`` (EfficientVMamba's ES2D, Pei et al., arXiv 2403.09977): the four phases of the stride-2 lattice, each of
  length H·W/4 (``atrous_scan``), scanned as one grouped selective scan and scattered back (``atrous_merge``), so the
  scan costs a quarter of the cross scan's.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vizoo.kernels import cross_selective_scan
from vizoo.kernels.cross_scan import atrous_merge, atrous_scan
from vizoo.layers.ssm_init import reset_routed_ssm_, routed_selective_scan

NUM_ROUTES = {"cross": 4, "atrous": 4}  # route set -> K


class SS2D(nn.Module):
    """(B, H, W, C) -> (B, H, W, C).

    Args:
        dim: channels in and out.
        d_state: SSM state size N (16 in VMamba v0, 1 in v2).
        ssm_ratio: inner width ``d_inner = ssm_ratio * dim``.
        dt_rank: rank of the step-size projection; "auto" is ``ceil(dim / 16)``.
        gate: multiply the output by ``act(z)`` from a second half of ``in_proj`` (v0); v2 ("_noz") has no gate.
        conv_kernel: kernel size of the depthwise conv applied before the scan.
        conv_bias: whether that depthwise conv has a bias.
        act_layer: activation after the conv (and on the gate).
        routes: "cross" (VMamba's four full-resolution routes) or "atrous" (EfficientVMamba's four stride-2 phases).
        dt_min: lower end of the range of the initial step sizes, as in Mamba.
        dt_max: upper end of that range.
        dt_init_floor: smallest initial step size (sampled ones are clamped to it).
        scan_backend: backend for the scan kernels (None picks per device; see ``vizoo.kernels.backend``).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        gate: bool = False,
        conv_kernel: int = 3,
        conv_bias: bool = False,
        act_layer: type[nn.Module] = nn.SiLU,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        routes: str = "cross",
        scan_backend: str | None = None,
    ):
        super().__init__()
        if routes not in NUM_ROUTES:
            raise ValueError(f"unknown SS2D routes {routes!r}; use one of {sorted(NUM_ROUTES)}")
        k = NUM_ROUTES[routes]
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.gate = gate
        self.routes = routes
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(dim, d_inner * (2 if gate else 1), bias=False)
        self.act = act_layer()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, conv_kernel, padding=(conv_kernel - 1) // 2, groups=d_inner, bias=conv_bias
        )
        # Per-route projections, stored stacked as in the official checkpoints.
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, step sizes log-uniform in [dt_min, dt_max]."""
        reset_routed_ssm_(self, dt_min, dt_max, dt_init_floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
            z = self.act(z)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))  # (b, d, h, w)
        y = self._cross_scan(x) if self.routes == "cross" else self._atrous_scan(x)  # (b, l, d)
        y = self.out_norm(y.reshape(b, h, w, self.d_inner))
        if self.gate:
            y = y * z
        return self.out_proj(y)

    def _cross_scan(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, h, w) -> (b, h·w, d): the four cross routes, fused."""
        return cross_selective_scan(
            x,
            None,
            -torch.exp(self.A_logs.float()),
            None,
            None,
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.flatten().float(),
            delta_softplus=True,
            out_channel_first=False,
            delta_proj=self.dt_projs_weight,
            x_proj=self.x_proj_weight,
            backend=self.scan_backend,
        )

    def _atrous_scan(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, h, w) -> (b, h·w, d): the four stride-2 phases, one grouped selective scan of length h·w/4."""
        h, w = x.shape[-2:]
        xs = atrous_scan(x, backend=self.scan_backend)  # (b, 4, d, l/4)
        ys = routed_selective_scan(self, xs)  # (b, 4·d, l/4)
        return atrous_merge(
            ys.unflatten(1, (4, self.d_inner)), h, w, out_channel_first=False, backend=self.scan_backend
        )
