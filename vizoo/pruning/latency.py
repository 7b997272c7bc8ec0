"""A latency model of a ViT block's prunable parts, timed on the machine that runs it (not FLOPs).

Pruning a group of a ViT block changes one of two widths: the MLP hidden width ``h`` (fc1 rows and fc2 columns) or
the number of attention heads ``k`` (qkv rows, the attention itself and proj columns). :class:`LatencyModel` times
``fc1 -> GELU -> fc2`` at a grid of hidden widths and ``qkv -> attention -> proj`` at every head count, on the token
count the model runs at, once per shape, and interpolates linearly between the measured widths. Tables are cached in
memory per (shape, batch, threads), so several models of the same shape measure once.

Timings are medians of a few runs; the tables are made non-decreasing in the width (a wider layer never counts as
faster), which removes most of the noise that would otherwise steer the allocation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

_CACHE: dict[tuple, np.ndarray] = {}


def _median_ms(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _monotone(values: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(np.asarray(values, dtype=np.float64))


@torch.no_grad()
def time_mlp(dim: int, widths: list[int], tokens: int, runs: int = 5) -> np.ndarray:
    """Milliseconds of ``fc2(gelu(fc1(x)))`` for x of shape (tokens, dim), per hidden width in ``widths``."""
    key = ("mlp", dim, tuple(widths), tokens, torch.get_num_threads(), runs)
    if key not in _CACHE:
        x = torch.randn(tokens, dim)
        out = []
        for h in widths:
            w1, b1 = torch.randn(h, dim) * 0.02, torch.zeros(h)
            w2, b2 = torch.randn(dim, h) * 0.02, torch.zeros(dim)
            out.append(
                _median_ms(lambda w1=w1, b1=b1, w2=w2, b2=b2: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2), runs)
            )
        _CACHE[key] = _monotone(np.array(out))
    return _CACHE[key]


@torch.no_grad()
def time_attention(dim: int, head_dim: int, heads: list[int], batch: int, seq: int, runs: int = 5) -> np.ndarray:
    """Milliseconds of ``proj(attention(qkv(x)))`` for x of shape (batch, seq, dim), per head count in ``heads``."""
    key = ("attn", dim, head_dim, tuple(heads), batch, seq, torch.get_num_threads(), runs)
    if key not in _CACHE:
        x = torch.randn(batch, seq, dim)
        out = []
        for k in heads:
            wqkv = torch.randn(3 * k * head_dim, dim) * 0.02
            wproj = torch.randn(dim, k * head_dim) * 0.02

            def run(k=k, wqkv=wqkv, wproj=wproj):
                qkv = F.linear(x, wqkv).reshape(batch, seq, 3, k, head_dim).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
                return F.linear(y.transpose(1, 2).reshape(batch, seq, k * head_dim), wproj)

            out.append(_median_ms(run, runs))
        _CACHE[key] = _monotone(np.array(out))
    return _CACHE[key]


@dataclass
class LatencyModel:
    """Per-block latency (ms) as a function of MLP hidden width and of head count, for one model shape.

    Build it with :meth:`measure`; :meth:`mlp` and :meth:`attention` interpolate the measured tables. ``flat=True``
    gives a model proportional to parameter counts instead (for tests, or ``latency_weight=0``).
    """

    mlp_widths: np.ndarray
    mlp_ms: np.ndarray
    heads: np.ndarray
    attn_ms: np.ndarray
    info: dict = field(default_factory=dict)

    @classmethod
    def measure(
        cls,
        dim: int,
        hidden: int,
        num_heads: int,
        head_dim: int,
        seq: int,
        batch: int = 1,
        step: int = 32,
        points: int = 9,
        runs: int = 5,
    ) -> LatencyModel:
        """Time the block parts of a ViT of width ``dim`` (MLP ``hidden``, ``num_heads`` x ``head_dim``) on the CPU.

        MLP widths are measured at about ``points`` multiples of ``step`` between ``step`` and ``hidden`` and
        interpolated in between; every head count 1..``num_heads`` is measured.
        """
        groups = max(hidden // step, 1)
        idx = np.unique(np.linspace(1, groups, min(points, groups)).round().astype(int))
        widths = [int(i * step) for i in idx]
        heads = list(range(1, num_heads + 1))
        start = time.perf_counter()
        mlp_ms = time_mlp(dim, widths, batch * seq, runs)
        attn_ms = time_attention(dim, head_dim, heads, batch, seq, runs)
        _logger.info(
            "latency model for dim=%d hidden=%d heads=%dx%d tokens=%dx%d measured in %.1fs",
            dim,
            hidden,
            num_heads,
            head_dim,
            batch,
            seq,
            time.perf_counter() - start,
        )
        info = dict(dim=dim, hidden=hidden, num_heads=num_heads, head_dim=head_dim, seq=seq, batch=batch)
        return cls(np.array([0, *widths]), np.r_[0.0, mlp_ms], np.array([0, *heads]), np.r_[0.0, attn_ms], info)

    @classmethod
    def flat(cls, dim: int, hidden: int, num_heads: int, head_dim: int) -> LatencyModel:
        """Latency proportional to the weights a width carries (a FLOP-like proxy; no timing)."""
        return cls(
            np.array([0, hidden]),
            np.array([0.0, 2.0 * dim * hidden]),
            np.array([0, num_heads]),
            np.array([0.0, 4.0 * dim * head_dim * num_heads]),
            dict(flat=True),
        )

    def mlp(self, width: float) -> float:
        return float(np.interp(width, self.mlp_widths, self.mlp_ms))

    def attention(self, heads: float) -> float:
        return float(np.interp(heads, self.heads, self.attn_ms))
