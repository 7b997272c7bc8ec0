"""Vim's bidirectional Mamba mixer and its pre-norm residual block, on vizoo's selective scan.

Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model", ICML 2024
(``bimamba_type="v2"`` in hustvl/Vim): one input and one output projection are shared by a forward and a backward
Mamba, each with its own causal depthwise conv, x/dt projections, A and D. Both directions run as one selective scan
over the two routes of ``bidirectional_scan`` (2·d_inner channels, B/C in two groups), and ``bidirectional_merge`` sums
them back in token order.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from vizoo.kernels import selective_scan
from vizoo.kernels.cross_scan import bidirectional_merge, bidirectional_scan
from vizoo.layers.ssm_init import init_dt_bias_, init_s4d_real_


class BiMamba(nn.Module):
    """(B, L, C) -> (B, L, C): ``out_proj((y_forward + flip(y_backward)) / 2)``.

    Parameter names follow mamba-ssm's ``Mamba`` with Vim's ``_b`` copies for the backward direction, so official
    weights load by renaming the parents only.

    Args:
        dim: channels in and out.
        d_state: SSM state size N.
        d_conv: kernel of the causal depthwise conv.
        expand: inner width ``d_inner = expand * dim``.
        dt_rank: rank of the step-size projection; "auto" is ``ceil(dim / 16)``.
        divide_out: average the two directions (Vim's ``if_devide_out``; its released models use it).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes.
        scan_backend: selective-scan backend (None picks per device).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2.0,
        dt_rank: int | str = "auto",
        divide_out: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ):
        super().__init__()
        d_inner = int(expand * dim)
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.divide_out = divide_out
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        for suffix in ("", "_b"):
            self.add_module(f"conv1d{suffix}", nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1))
            self.add_module(f"x_proj{suffix}", nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module(f"dt_proj{suffix}", nn.Linear(self.dt_rank, d_inner))
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.A_b_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, step-size biases so that softplus(bias) is in [dt_min, dt_max]."""
        std = self.dt_rank**-0.5
        for suffix in ("", "_b"):
            dt_proj = getattr(self, f"dt_proj{suffix}")
            nn.init.uniform_(dt_proj.weight, -std, std)
            init_dt_bias_(dt_proj.bias, dt_min, dt_max, dt_init_floor)
        init_s4d_real_(self.A_log)
        init_s4d_real_(self.A_b_log)
        self.D.fill_(1.0)
        self.D_b.fill_(1.0)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, length: int | None = None
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); see ``scan`` for ``positions`` and ``length``."""
        return self.out_proj(self.scan(x, positions, length))

    def scan(self, x: torch.Tensor, positions: torch.Tensor | None = None, length: int | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, d_inner): the merged (and averaged) two-direction SSM output, before ``out_proj``.

        With ``positions`` (B, T) long, the T tokens sit at those indices of a sequence of ``length`` steps and every
        other step is an empty (zero) token: the convs and scans run over all ``length`` steps, so kept tokens keep
        their distances in the scan (token pruning with hidden-state alignment), while the projections, the costly
        part, only see the T tokens.
        """
        xz = self.in_proj(x)
        if positions is not None:
            index = positions[..., None].expand(-1, -1, xz.shape[-1])
            xz = xz.new_zeros(xz.shape[0], length, xz.shape[-1]).scatter(1, index, xz)
        b, steps, _ = xz.shape
        d = self.d_inner
        xz = bidirectional_scan(xz, in_channel_first=False)  # (b, 2, 2d, l): forward, backward
        xs, z = xz.unflatten(2, (2, d)).unbind(2)  # each (b, 2, d, l)
        # Both directions' causal convs as one grouped conv over 2d channels.
        conv_w = torch.cat([self.conv1d.weight, self.conv1d_b.weight])
        conv_b = torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        xs = F.silu(
            F.conv1d(xs.reshape(b, 2 * d, steps), conv_w, conv_b, padding=self.d_conv - 1, groups=2 * d)[..., :steps]
        )
        x_proj = torch.stack([self.x_proj.weight, self.x_proj_b.weight])  # (2, r + 2n, d)
        x_dbl = torch.matmul(x_proj, xs.view(b, 2, d, steps))  # (b, 2, r + 2n, l)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]), dts)  # (b, 2, d, l)
        y = selective_scan(
            xs,
            dts.reshape(b, 2 * d, steps),
            -torch.exp(torch.cat([self.A_log, self.A_b_log]).float()),
            Bs,
            Cs,
            torch.cat([self.D, self.D_b]).float(),
            z=z.reshape(b, 2 * d, steps),
            delta_bias=torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]).float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )  # (b, 2d, l)
        y = bidirectional_merge(y.view(b, 2, d, steps), out_channel_first=False)  # (b, l, d)
        if positions is not None:
            y = y.gather(1, positions[..., None].expand(-1, -1, d))
        return y / 2 if self.divide_out else y


class MambaBlock(nn.Module):
    """Pre-norm residual block ``x + DP(mixer(RMSNorm(x)))``, (B, L, C) in and out.

    Vim writes the same sum as "add, then norm" with the residual carried to the next block (a fused kernel); the
    result is identical, and a single residual stream keeps the token sequence a plain tensor between blocks.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, **mixer_kwargs):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mixer = BiMamba(dim, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, length: int | None = None
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); ``positions``/``length`` place the tokens in a longer sequence (``BiMamba.scan``)."""
        return x + self.drop_path(self.mixer(self.norm(x), positions, length))
