"""Spatial-Mamba's layers (Xiao et al., "Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State
Fusion", ICLR 2025, arXiv 2410.15091). Its stem and downsample are MLLA's, in ``vizoo.layers.mlla_stem``.

Channel-last (B, H, W, C) in and out. Parameter names follow the official code so that checkpoints map by stage
prefix only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from vizoo.kernels.selective_scan import selective_scan_states
from vizoo.layers.ssm_init import reset_routed_ssm_


class StateFusion(nn.Module):
    """Structure-aware state fusion: ``h' = Σ_r α_r · DWConv3x3_dilation=r(h)`` for r in (1, 3, 5), replicate padding.

    In eval mode the three kernels are merged into one 11x11 depthwise kernel run by a plain ``F.conv2d`` on the
    map replicate-padded by 5, which equals the three-conv sum exactly (replicate padding reads the same clamped pixel
    whatever the padding width). The merged kernel is recomputed on every call, so it always follows the weights.
    (The official eval path pads with zeros instead, which differs from its training path at the borders.)
    """

    dilations = (1, 3, 5)

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.alpha = nn.Parameter(torch.ones(3))

    def kernels(self) -> list[torch.Tensor]:
        return [self.kernel_3, self.kernel_3_1, self.kernel_3_2]

    def merged_kernel(self) -> torch.Tensor:
        """(dim, 1, 11, 11): the three dilated kernels, weighted by alpha, placed on one grid."""
        size = 2 * self.dilations[-1] + 1
        merged = self.kernel_3.new_zeros(self.dim, 1, size, size)
        centre = self.dilations[-1]
        for alpha, kernel, r in zip(self.alpha, self.kernels(), self.dilations):
            taps = slice(centre - r, centre + r + 1, r)
            merged[:, :, taps, taps] = merged[:, :, taps, taps] + alpha * kernel
        return merged

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C·k, H, W) -> same; with C·k channels the dim kernels are shared by k consecutive channels each."""
        repeats = h.shape[1] // self.dim
        if self.training:
            out = 0
            for alpha, kernel, r in zip(self.alpha, self.kernels(), self.dilations):
                weight = kernel.repeat_interleave(repeats, 0) if repeats > 1 else kernel
                out = out + alpha * F.conv2d(
                    F.pad(h, (r, r, r, r), mode="replicate"), weight, dilation=r, groups=h.shape[1]
                )
            return out
        weight = self.merged_kernel()
        weight = weight.repeat_interleave(repeats, 0) if repeats > 1 else weight
        pad = self.dilations[-1]
        return F.conv2d(F.pad(h, (pad, pad, pad, pad), mode="replicate"), weight, groups=h.shape[1])


class StructureAwareSSM(nn.Module):
    """Spatial-Mamba's mixer. (B, H, W, C) -> (B, H, W, C).

    in_proj -> (x, z); x -> DWConv3x3 -> SiLU -> one row-major selective scan that returns the states h (no C read-out)
    -> state fusion on the (H, W) map -> ``y = <h', C> + D x`` -> LayerNorm -> ``· SiLU(z)`` -> out_proj.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        expand: float = 2.0,
        dt_rank: int | str = "auto",
        conv_bias: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ):
        super().__init__()
        d_inner = int(expand * dim)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=conv_bias)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(d_inner))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(d_inner))
        self.state_fusion = StateFusion(d_inner)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, step sizes log-uniform in [dt_min, dt_max]."""
        reset_routed_ssm_(self, dt_min, dt_max, dt_init_floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2))).flatten(2)  # (b, d, l)
        x_dbl = torch.matmul(self.x_proj_weight, x)  # (b, r + 2n, l)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dts = torch.matmul(self.dt_projs_weight, dts)
        states = selective_scan_states(
            x,
            dts,
            -torch.exp(self.A_logs.float()),
            Bs,
            delta_bias=self.dt_projs_bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        ).to(x.dtype)  # (b, d, n, l)
        states = (
            self.state_fusion(states.flatten(1, 2).unflatten(-1, (h, w))).flatten(2).unflatten(1, (-1, self.d_state))
        )
        # the sum over the n states as n · mean: NNAPI has ReduceMean but no ReduceSum
        y = (states * (self.d_state * Cs).unsqueeze(1)).mean(2) + x * self.Ds.to(x.dtype)[:, None]  # (b, d, l)
        y = self.out_norm(y.transpose(1, 2).unflatten(1, (h, w)))
        return self.out_proj(y * F.silu(z))


class SpatialMambaBlock(nn.Module):
    """``x + CPE(x)``, ``x + DP(SSM(LN(x)))``, ``x + CPE(x)``, ``x + DP(MLP(LN(x)))``. (B, H, W, C) in and out."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, **ssm_kwargs):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = StructureAwareSSM(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.self_attention(self.ln_1(x)))
        x = x + self.cpe2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(self.ln_2(x)))
