"""MSVMamba's layers (Shi et al., "Multi-Scale VMamba: Hierarchy in Hierarchy Visual State Space Model",
NeurIPS 2024, arXiv 2405.14174): the multi-scale 2D selective scan, SE and ConvFFN. Channel-last (B, H, W, C).

One mixer and one block serve both generations of the official code; the options select the generation:

- v1 (``classification/models/vmamba.py`` on ``master``, ``multiscale_4scan_12``): SiLU gate, parameter group 1 for
  the full-resolution route, LayerNorm on every scanned token before the routes are put back, bilinear upsampling,
  pre-norm ConvFFN of width 2.
- v3 (the same file on branch ``v2``, ``forward_type="vms"`` / ``"vms_noz"``): gate only in the Base model, group 0
  for the full-resolution route, one LayerNorm after the two resolutions are summed, nearest upsampling, and a
  ConvFFN of width 4 whose output, not input, is normalised (the official channel-first block).

Parameter names and shapes follow the official code (its channel-first ``Linear2d``/``LayerNorm2d`` store the same
shapes as ``nn.Linear``/``nn.LayerNorm``), so checkpoints of both generations map by stage prefix only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from vizoo.kernels.cross_scan import multiscale_merge, multiscale_scan
from vizoo.kernels.selective_scan import selective_scan
from vizoo.layers.channels_last import conv_nhwc
from vizoo.layers.ssm_init import reset_routed_ssm_

NUM_GROUPS = 2  # parameter groups: one for the full-resolution route, one for the three low-resolution routes
UPSAMPLE_MODES = ("bilinear", "nearest")


class SqueezeExcite(nn.Module):
    """SE on channel-first maps with bias-free Linear layers (the official ``SEModule``: keys ``fc.0``, ``fc.2``)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class ConvFFN(nn.Module):
    """1x1 -> (x + DW3x3(x)) -> GELU -> 1x1, on channel-first maps."""

    def __init__(self, dim: int, expansion: int = 2):
        super().__init__()
        hidden = dim * expansion
        self.linear1 = nn.Conv2d(dim, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.linear2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear1(x)
        return self.linear2(self.act(x + self.dwc(x)))


class MultiScaleSS2D(nn.Module):
    """MSVMamba's multi-scale SS2D. (B, H, W, C) -> (B, H, W, C).

    in_proj -> x (and a gate z when ``gate``). The full-resolution branch is DWConv3x3 -> SiLU, read row-major; the
    low-resolution branch is DWConv7x7 stride 2 -> SiLU of the same (pre-conv) x, read along three routes
    concatenated into one sequence and scanned once (``vizoo.kernels.multiscale_scan``). Each branch has its own
    projections, A, D and step-size bias (parameter group ``full_res_group`` for the full route, the other group for
    the low-resolution routes). The routes are put back (``multiscale_merge``), the low-resolution map is upsampled
    and added, then SE -> ``· SiLU(z)`` -> out_proj. ``out_norm`` (LayerNorm over channels) acts on every scanned
    token before the merge (v1) or once on the summed map (``norm_after_merge``, v3).

    Args:
        dim: input and output channels.
        d_state, ssm_ratio, dt_rank, conv_bias: SSM state size, inner width ratio, step-size rank, conv biases.
        se_reduction: SE reduction on the inner width (0 for no SE).
        gate: multiply by ``SiLU(z)`` from a second half of in_proj (v1, v3-Base); False for ``vms_noz``.
        upsample: "bilinear" (v1) or "nearest" (v3) for the low-resolution map.
        norm_after_merge: apply ``out_norm`` after the two resolutions are summed (v3) instead of per scanned token.
        full_res_group: index of the full-resolution route's parameter group (1 in v1, 0 in v3).
        dt_min, dt_max, dt_init_floor: Mamba's step-size initialisation range.
        scan_backend: selective-scan and route backend (None picks per device).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        conv_bias: bool = True,
        se_reduction: int = 8,
        gate: bool = True,
        upsample: str = "bilinear",
        norm_after_merge: bool = False,
        full_res_group: int = 1,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample {upsample!r}; use one of {UPSAMPLE_MODES}")
        if full_res_group not in range(NUM_GROUPS):
            raise ValueError(f"full_res_group must be 0 or 1, got {full_res_group}")
        d_inner = int(ssm_ratio * dim)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.gate, self.upsample, self.norm_after_merge = gate, upsample, norm_after_merge
        self.full_res_group = full_res_group
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, (2 if gate else 1) * d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=conv_bias)
        self.conv2d_b1 = nn.Conv2d(d_inner, d_inner, 7, stride=2, padding=3, groups=d_inner, bias=conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(NUM_GROUPS, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(NUM_GROUPS, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(NUM_GROUPS, d_inner))
        self.A_logs = nn.Parameter(torch.empty(NUM_GROUPS * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(NUM_GROUPS * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.se = SqueezeExcite(d_inner, se_reduction) if se_reduction else None
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, step sizes log-uniform in [dt_min, dt_max]."""
        reset_routed_ssm_(self, dt_min, dt_max, dt_init_floor)

    def _scan(self, xs: torch.Tensor, group: int) -> torch.Tensor:
        """One selective scan of (b, d, l) with parameter group ``group``; returns (b, d, l)."""
        d = self.d_inner
        dts, Bs, Cs = torch.split(
            torch.matmul(self.x_proj_weight[group], xs), [self.dt_rank, self.d_state, self.d_state], dim=1
        )
        return selective_scan(
            xs,
            torch.matmul(self.dt_projs_weight[group], dts),
            -torch.exp(self.A_logs[group * d : (group + 1) * d].float()),
            Bs,
            Cs,
            self.Ds[group * d : (group + 1) * d].float(),
            delta_bias=self.dt_projs_bias[group].float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def _norm_channels_first(self, y: torch.Tensor) -> torch.Tensor:
        """``out_norm`` over dim 1 of a (b, d, ...) tensor."""
        return self.out_norm(y.movedim(1, -1)).movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        x = self.in_proj(x)
        z = None
        if self.gate:
            x, z = x.chunk(2, dim=-1)
        x = x.permute(0, 3, 1, 2)
        x_low = self.act(self.conv2d_b1(x))
        x = self.act(self.conv2d(x))
        lh, lw = x_low.shape[2:]
        seq = multiscale_scan(x, x_low, backend=self.scan_backend)  # (b, d, h·w + 3·lh·lw)
        full = h * w
        y = torch.cat(
            [self._scan(seq[..., :full], self.full_res_group), self._scan(seq[..., full:], 1 - self.full_res_group)],
            dim=-1,
        )
        if not self.norm_after_merge:
            y = self._norm_channels_first(y)
        y, y_low = multiscale_merge(y, (h, w), (lh, lw), backend=self.scan_backend)
        if self.upsample == "bilinear":
            y = y + F.interpolate(y_low, size=(h, w), mode="bilinear", align_corners=False)
        else:
            y = y + F.interpolate(y_low, size=(h, w), mode="nearest")
        if self.norm_after_merge:
            y = self._norm_channels_first(y)
        if self.se is not None:
            y = self.se(y)
        y = y.permute(0, 2, 3, 1)
        if z is not None:
            y = y * self.act(z)
        return self.out_proj(y)


class MSVSSBlock(nn.Module):
    """``x + DP(MSSS2D(LN(x)))``, then ``x + DP(ConvFFN(LN(x)))`` (v1) or ``x + DP(LN(ConvFFN(x)))``
    (``ffn_post_norm``, v3). (B, H, W, C) in and out."""

    def __init__(
        self, dim: int, drop_path: float = 0.0, ffn_expansion: int = 2, ffn_post_norm: bool = False, **ssm_kwargs
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = MultiScaleSS2D(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.convFFN = ConvFFN(dim, ffn_expansion)
        self.ffn_post_norm = ffn_post_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.ffn_post_norm:
            y = self.norm2(conv_nhwc(self.convFFN, x))
        else:
            y = conv_nhwc(self.convFFN, self.norm2(x))
        return x + self.drop_path(y)
