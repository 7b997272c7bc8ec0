"""Linear-attention token mixers: MALA, MLLA, TransNormer's NormAttention and S2AFormer's strip attention.

Each mixer applies its feature map and pre-scaling itself and calls the shared non-causal kernel
``vizoo.kernels.linear_attention.linear_attention`` (layout (b, h, n, d)) for the O(N) part: Σ_j k_jᵀ v_j, then
q_i · KV. What the kernel's normalised form cannot express (MLLA's RoPE-free denominator, MALA's magnitude-aware
weights, TransNormer's norm) is composed around an unnormalised call with elementwise ops that cost O(N·d).

Numerics: the attention core of every mixer runs in fp32 whatever the input dtype (the inputs are cast once, the
result is cast back), and the reductions that give the denominators are elementwise products and sums, which
autocast leaves in fp32. With bf16/fp16 activations of magnitude ~100, MLLA's q·KV reaches ~1e7 and MALA's z ~1e5,
both far past fp16's 65504; the mixers' outputs are bounded by |v| and are safe to cast back.

The 2-D rotary position embedding is real-valued (2x2 rotations of channel pairs) and is computed from the runtime
height and width, so it works for any HxW, non-square inputs included, and exports to ONNX as Range/Sin/Cos. (MLLA's
classification code uses ``torch.view_as_complex`` on a buffer fixed at 224 px; see LeapLabTHU/MLLA#22, #36.)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vizoo.kernels.linear_attention import linear_attention

__all__ = [
    "MagnitudeAwareLinearAttention",
    "MLLALinearAttention",
    "NormAttention",
    "RoPE2d",
    "SoftmaxAttentionRoPE",
    "StripAttention",
    "apply_rope_2d",
]


def apply_rope_2d(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., n, d) by angles whose sin/cos (n, d) repeat each angle twice."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)
    return x * cos + rotated * sin


class RoPE2d(nn.Module):
    """Real-valued 2-D RoPE tables for an HxW grid: the first half of the pairs turn with the row, the second half
    with the column.

    ``spacing="linspace"`` gives frequencies base^-linspace(0, 1, d/4) (MALA, RMT); ``"arange"`` gives
    base^-(k/(d/4)) for k < d/4 (MLLA). ``forward(h, w)`` returns (sin, cos), each (h*w, d), in fp32.
    """

    def __init__(self, dim: int, base: float = 10000.0, spacing: str = "arange"):
        super().__init__()
        if dim % 4:
            raise ValueError(f"2-D RoPE needs a channel count divisible by 4, got {dim}; change dims or num_heads")
        quarter = dim // 4
        if spacing == "linspace":
            exponent = torch.linspace(0, 1, quarter)
        elif spacing == "arange":
            exponent = torch.arange(quarter, dtype=torch.float32) / quarter
        else:
            raise ValueError(f"unknown RoPE spacing {spacing!r}; use 'linspace' (MALA) or 'arange' (MLLA)")
        self.dim = dim
        # Not saved in state dicts: it is a function of dim, and official checkpoints' buffers are dropped on load.
        self.register_buffer("freqs", (base**-exponent).repeat_interleave(2), persistent=False)

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = self.freqs.float()
        rows = torch.arange(h, device=freqs.device, dtype=torch.float32)[:, None] * freqs  # (h, d/2)
        cols = torch.arange(w, device=freqs.device, dtype=torch.float32)[:, None] * freqs  # (w, d/2)
        half = freqs.shape[0]
        angles = torch.cat([rows[:, None, :].expand(h, w, half), cols[None, :, :].expand(h, w, half)], dim=-1)
        angles = angles.reshape(h * w, 2 * half)
        return angles.sin(), angles.cos()


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(b, n, c) -> (b, heads, n, c/heads)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(b, heads, n, d) -> (b, n, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class MLLALinearAttention(nn.Module):
    """MLLA's linear attention with LePE and a real 2-D RoPE (Han et al., NeurIPS 2024). NHWC in and out.

    φ = ELU+1 on q and k; v = x (there is no V projection). With RoPE applied over the whole channel dim before the
    head split, as in the official code::

        y_i = RoPE(φq_i) · Σ_j RoPE(φk_j)ᵀ v_j / N  /  (φq_i · mean_j φk_j + 1e-6)  +  LePE(v)

    The numerator is one unnormalised kernel call (k and v pre-scaled by N^-1/2); the denominator leaves RoPE out, so
    it is computed here as an elementwise product with mean φk. x: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.rope = RoPE2d(dim, spacing="arange")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        q, k = self.qk(x).reshape(b, n, 2 * c).float().chunk(2, dim=-1)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        sin, cos = self.rope(h, w)
        v = x.reshape(b, n, c).float()
        scale = n**-0.5
        q_rope, k_rope = (
            _heads(apply_rope_2d(q, sin, cos), self.num_heads),
            _heads(apply_rope_2d(k, sin, cos), self.num_heads),
        )
        q, k, vh = _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads)
        z = q @ k.mean(dim=2, keepdim=True).transpose(-1, -2) + 1e-6  # (b, heads, n, 1); a MatMul, not ReduceSum
        y = linear_attention(q_rope, k_rope * scale, vh * scale, normalize=False) / z
        y = _merge(y).to(x.dtype).reshape(b, h, w, c)
        return y + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class _GatedRoPEAttention(nn.Module):
    """What MALA's two attentions share: q, k, v and the gate o from one 1x1 conv, a 5x5 depthwise LePE on v, 2-D
    RoPE tables and a 1x1 output projection. NCHW in and out; subclasses give ``forward``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkvo = nn.Conv2d(dim, 4 * dim, 1)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.rope = RoPE2d(self.head_dim, spacing="linspace")

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, C, H, W) -> q, k, v (B, heads, H·W, head_dim), the gate o and LePE(v) (B, C, H, W)."""
        b, _, h, w = x.shape
        q, k, v, o = self.qkvo(x).chunk(4, dim=1)
        lepe = self.lepe(v)
        q, k, v = (t.reshape(b, self.num_heads, self.head_dim, h * w).transpose(-1, -2) for t in (q, k, v))
        return q, k, v, o, lepe

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class MagnitudeAwareLinearAttention(_GatedRoPEAttention):
    """MALA: magnitude-aware linear attention with RoPE, LePE and an output gate (Fan et al., ICCV 2025). NCHW.

    φ = ELU+1 on q and k, s = d^-1/2, z_i = s · φq_i·mean_j φk_j, KV = (s/N) Σ_j RoPE(φk_j)ᵀ v_j, and::

        y_i = RoPE(φq_i)·KV · (1 + 1/(z_i + 1e-6)) − z_i · mean_j v_j

    so the attention weights sum to one but can be negative, which keeps the query's magnitude in the output
    (plain linear attention divides it away). Not expressible as one normalised kernel call: the kernel gives the
    unnormalised q·KV (k and v pre-scaled by (s/N)^1/2, as the official code does), and z, mean v and the
    combination are elementwise O(N·d). Then y += LePE(v) (5x5 depthwise) and out = proj(y ⊙ o), with q, k, v and
    the gate o from one 1x1 conv. x: (B, C, H, W) -> (B, C, H, W).

    fp16: the output scales with the query's magnitude (|y| ~ z·|v|; 1e6 for activations ~100), which fp16 cannot
    hold, so with fp16 inputs the gate and projection run in fp32 and the result saturates at ±65504 (no inf).
    In the model a LayerNorm precedes the mixer and keeps activations far from this.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        q, k, v, o, lepe = self._project(x)
        q, k, v = F.elu(q.float()) + 1.0, F.elu(k.float()) + 1.0, v.float()
        s = self.head_dim**-0.5
        z = (q @ k.mean(dim=2, keepdim=True).transpose(-1, -2)) * s  # (b, heads, n, 1); a MatMul, not ReduceSum
        sin, cos = self.rope(h, w)
        pre = (s / n) ** 0.5
        qkv = linear_attention(apply_rope_2d(q, sin, cos), apply_rope_2d(k, sin, cos) * pre, v * pre, normalize=False)
        y = qkv + qkv / (z + 1e-6) - z * v.mean(dim=2, keepdim=True)  # a Div, not Reciprocal (NNAPI lacks it)
        y = y.transpose(-1, -2).reshape(b, c, h, w)
        if x.dtype != torch.float16:
            y = y.to(x.dtype)
            return self.proj((y + lepe) * o)
        # fp16: the output grows with |q| by design (~|z|·|v|), so it can exceed 65504 where bf16 and fp32 do not
        # overflow; finish in fp32 and saturate at fp16's largest finite value instead of producing inf.
        weight, bias = self.proj.weight.float(), self.proj.bias.float()
        out = F.conv2d((y + lepe.float()) * o.float(), weight, bias)
        limit = torch.finfo(torch.float16).max
        return out.clamp(-limit, limit).to(x.dtype)


class SoftmaxAttentionRoPE(_GatedRoPEAttention):
    """MALA's softmax attention for its late stages: the same qkvo conv, RoPE, LePE and gate as
    ``MagnitudeAwareLinearAttention``, with softmax(q kᵀ/√d) v in place of the linear form. NCHW in and out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v, o, lepe = self._project(x)
        sin, cos = self.rope(h, w)
        q, k = apply_rope_2d(q, sin.to(q.dtype), cos.to(q.dtype)), apply_rope_2d(k, sin.to(k.dtype), cos.to(k.dtype))
        attn = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)
        y = attn.softmax(dim=-1) @ v
        y = y.transpose(-1, -2).reshape(b, c, h, w)
        return self.proj((y + lepe) * o)


def _feature_map(name: str):
    maps = {"elu": lambda t: F.elu(t) + 1.0, "relu": F.relu, "silu": F.silu}
    if name not in maps:
        raise ValueError(f"unknown feature map {name!r}; use one of {sorted(maps)}")
    return maps[name]


class NormAttention(nn.Module):
    """TransNormer's NormAttention (Qin et al., EMNLP 2022): O = Norm(φ(Q)(φ(K)ᵀV)), no denominator, no 1/√d.

    The kernel is called unnormalised. k is pre-scaled by 1/N so that KV is a mean, not a sum; the norm after it
    (LayerNorm, or SimpleRMSNorm x/rms(x)) is invariant to that scale up to its eps, and both run in fp32 (the
    unnormalised output reaches |q||k||v|·d, far past fp16's range for activations ~100). Tokens in and out:
    x (B, N, C) -> (B, N, C).
    """

    def __init__(
        self, dim: int, num_heads: int = 8, feature_map: str = "elu", norm: str = "layernorm", qkv_bias: bool = True
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {norm!r}; use 'layernorm' or 'rmsnorm'")
        self.dim = dim
        self.num_heads = num_heads
        self.phi = _feature_map(feature_map)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = nn.LayerNorm(dim) if norm == "layernorm" else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).float().chunk(3, dim=-1)
        q, k, v = _heads(self.phi(q), self.num_heads), _heads(self.phi(k), self.num_heads), _heads(v, self.num_heads)
        y = _merge(linear_attention(q, k / n, v, normalize=False))
        if self.norm is not None:
            y = F.layer_norm(y, (c,), self.norm.weight.float(), self.norm.bias.float(), self.norm.eps)
        else:
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.proj(y.to(x.dtype))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class StripAttention(nn.Module):
    """S2AFormer's strip self-attention (Xu et al., IEEE TIP 2025; arXiv 2505.22195), read from the paper.

    No official code is public, so this is vizoo's reading of it: K and V come from a spatially reduced map (a
    ``sr_ratio`` x ``sr_ratio`` stride-``sr_ratio`` depthwise conv, then LayerNorm), Q and K are compressed to
    ``qk_ratio``·C channels ("strips") by their projections, V keeps C; then non-causal linear attention with
    φ = ELU+1 over the N/sr² reduced tokens, normalised, k pre-scaled by 1/(N/sr²), in fp32 (written out here: the
    shared kernel needs k and q of one length). Cost O(N·C·(C·qk_ratio)/heads). NCHW in and out:
    (B, C, H, W) -> (B, C, H, W); H and W must be divisible by ``sr_ratio``.
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 2, qk_ratio: float = 0.5):
        super().__init__()
        qk_dim = int(dim * qk_ratio)
        if dim % num_heads or qk_dim % num_heads or qk_dim == 0:
            raise ValueError(f"dim {dim} and dim*qk_ratio {qk_dim} must be positive multiples of num_heads {num_heads}")
        self.dim, self.num_heads, self.sr_ratio, self.qk_dim = dim, num_heads, sr_ratio, qk_dim
        self.q = nn.Conv2d(dim, qk_dim, 1)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim) if sr_ratio > 1 else nn.Identity()
        self.sr_norm = nn.LayerNorm(dim)
        self.k = nn.Linear(dim, qk_dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = _heads(self.q(x).flatten(2).transpose(1, 2).float(), self.num_heads)
        r = self.sr_norm(self.sr(x).flatten(2).transpose(1, 2))  # (b, m, c), m = n / sr²
        k, v = _heads(self.k(r).float(), self.num_heads), _heads(self.v(r).float(), self.num_heads)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        # The shared kernel wants k with q's length; here K has N/sr² tokens, so the two KV-first products are
        # written out (fp32): KV = mean_j k_jᵀ v_j, out_i = q_i·KV / (q_i·mean_j k_j + 1e-6).
        kv = k.transpose(-1, -2) @ v / k.shape[2]  # (b, heads, d, dv)
        y = (q @ kv) / (q @ k.mean(2, keepdim=True).transpose(-1, -2) + 1e-6)  # MatMul and ReduceMean, as NNAPI runs
        y = _merge(y).transpose(1, 2).reshape(b, c, h, w).to(x.dtype)
        return self.proj(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, qk_dim={self.qk_dim}"
