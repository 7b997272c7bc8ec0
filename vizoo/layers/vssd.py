"""VSSD's layers (Shi et al., "VSSD: Vision Mamba with Non-Causal State Space Duality", arXiv 2407.18559):
the NC-SSD mixer, through the shared linear-attention kernel, and the softmax attention of the last stage.
Channel-last (B, H, W, C). Parameter names follow the official ``classification/models/mamba2.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from vizoo.kernels.linear_attention import linear_attention
from vizoo.kernels.selective_scan.chunked import softplus
from vizoo.layers.ssm_init import init_dt_bias_


class NCSSD(nn.Module):
    """Non-causal state space duality (Mamba2's mixer with its causal mask dropped). (B, H, W, C) -> same.

    in_proj -> [z | x B C | dt]; xBC -> DWConv3x3 -> SiLU; ``Δ = softplus(dt + dt_bias)``; per head h,
    ``y_t = C_t · Σ_s w_s B_s x_sᵀ + D_h x_t`` with ``w_s = Δ_s exp(A_log_h)`` (= −A_h Δ_s > 0): linear attention
    with q = C, k = B (shared by the heads), v = x and key weights w, unnormalised. Then LayerNorm, ``· z``, out_proj.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        d_state: int = 64,
        expand: float = 2.0,
        conv_bias: bool = True,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        attn_backend: str | None = None,
    ):
        super().__init__()
        self.d_inner = int(expand * dim)
        if self.d_inner % num_heads:
            raise ValueError(f"NCSSD: inner width {self.d_inner} must be divisible by num_heads={num_heads}")
        self.nheads, self.d_state = num_heads, d_state
        self.attn_backend = attn_backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 2 * d_state + num_heads, bias=False)
        conv_dim = self.d_inner + 2 * d_state
        self.conv2d = nn.Conv2d(conv_dim, conv_dim, 3, padding=1, groups=conv_dim, bias=conv_bias)
        self.act = nn.SiLU()
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.D = nn.Parameter(torch.empty(num_heads))
        self.norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self.reset_ssm_parameters(A_init_range, dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, A_init_range=(1.0, 16.0), dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4) -> None:
        """Mamba2's initialisation: A uniform in A_init_range, step sizes log-uniform in [dt_min, dt_max], D = 1."""
        init_dt_bias_(self.dt_bias, dt_min, dt_max, dt_init_floor)
        self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(*A_init_range)))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], -1)
        xbc = self.act(self.conv2d(xbc.permute(0, 3, 1, 2))).flatten(2).transpose(1, 2)  # (b, l, conv_dim)
        v, k, q = torch.split(xbc, [self.d_inner, self.d_state, self.d_state], dim=-1)
        v = v.unflatten(-1, (self.nheads, -1)).transpose(1, 2)  # (b, heads, l, headdim)
        weights = softplus(dt.flatten(1, 2).float() + self.dt_bias.float()) * torch.exp(self.A_log.float())
        y = linear_attention(
            q.unsqueeze(1),  # one B and C shared by all heads
            k.unsqueeze(1),
            v,
            normalize=False,
            weights=weights.transpose(1, 2).to(v.dtype),
            backend=self.attn_backend,
        )
        y = y + v * self.D.to(v.dtype)[:, None, None]
        y = self.norm(y.transpose(1, 2).flatten(2)).unflatten(1, (h, w))
        return self.out_proj(y * z)


class StandardAttention(nn.Module):
    """Multi-head softmax attention over all tokens of the map (VSSD's last stage). (B, H, W, C) -> same."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.to_qkv(x.flatten(1, 2)).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (b, heads, l, head_dim)
        return self.to_out(y.transpose(1, 2).flatten(2)).unflatten(1, (h, w))


class VSSDBlock(nn.Module):
    """``x + CPE(x)``, ``x + DP(mixer(LN(x)))``, ``x + CPE(x)``, ``x + DP(MLP(LN(x)))``. (B, H, W, C) in and out.

    mixer is NC-SSD (``attn_type="ncssd"``) or softmax attention (``"standard"``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_type: str = "ncssd",
        drop_path: float = 0.0,
        mlp_ratio: float = 4.0,
        **ssd_kwargs,
    ):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        if attn_type == "ncssd":
            self.attn = NCSSD(dim, num_heads, **ssd_kwargs)
        elif attn_type == "standard":
            self.attn = StandardAttention(dim, num_heads)
        else:
            raise ValueError(f"VSSDBlock: unknown attn_type {attn_type!r}; use 'ncssd' or 'standard'")
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.cpe2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.mlp(self.norm2(x)))
