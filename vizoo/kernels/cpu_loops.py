"""What vizoo's compiled CPU loops (numba) share: exp, log, softplus and SiLU that vectorise, the cutting of work
into pieces, and running those pieces on torch's threads.

exp and log are polynomials (Cephes' single-precision ones, about 1 ulp): LLVM has no vector form of libm's calls, so a
loop that calls them runs one lane at a time. The loops vectorise over channels, split work into (image, channel block)
pieces, and run the pieces with numba's ``prange``. Under numba's OpenMP layer, whose calls resolve to the libgomp that
torch loaded first, the pieces run on torch's own OpenMP threads and do not compete with its spinning workers; numba's
first parallel call resets OpenMP's thread count, which ``run_on_torch_threads`` puts back.

Imported only when a loop first runs (it imports numba).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.extending import intrinsic

# OpenMP first: its threads are torch's own (see above). TBB or numba's work queue would compete with them.
if not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

f32 = np.float32
# Exactness flags only: fused multiply-add and no signed zeros. NaN and inf keep their meaning (no "fast" nnan/ninf).
FAST = {"contract", "nsz"}
FAST_SUMS = FAST | {"reassoc"}  # the backward's sums over channels vectorise only if they may be reordered
EXP_LOW, EXP_HIGH = f32(-87.33654), f32(88.72283)  # exp underflows below, overflows above, in fp32
# Channels per work piece are a multiple of this: two 8-lane vectors.
CHANNEL_ALIGN = 16


@intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (2^k from k + 127 shifted into the exponent)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return numba.types.float32(numba.types.int32), codegen


@numba.njit(inline="always", fastmath=FAST)
def exp_f32(x):
    """exp(x) in float32: x = k ln2 + r with |r| <= ln2 / 2, a degree-7 polynomial for e^r, times 2^k."""
    clamped = EXP_LOW if x < EXP_LOW else x  # comparisons, not min/max, so that NaN passes through
    clamped = EXP_HIGH if clamped > EXP_HIGH else clamped
    k = np.floor(clamped * f32(1.44269504) + f32(0.5))
    r = clamped - k * f32(0.693359375) + k * f32(2.12194440e-4)  # ln2 split in two: r stays exact
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    p = p * r * r + r + f32(1.0)
    # 2^k built in two halves, so that k = 128 (x near the overflow bound) still has an exponent.
    half = np.floor(k * f32(0.5))
    e = p * _int_bits_as_float(np.int32(half + f32(127.0)) << 23)
    e = e * _int_bits_as_float(np.int32(k - half + f32(127.0)) << 23)
    e = f32(0.0) if x < EXP_LOW else e
    return np.inf if x > EXP_HIGH else e


@numba.njit(inline="always", fastmath=FAST)
def log1p_unit_f32(t):
    """log(1 + t) for t in [0, 1] in float32: 1 + t = 2^e (1 + f) with f in [sqrt(1/2) - 1, sqrt(2) - 1] taken from t
    itself, not from the rounded 1 + t, so that small t keeps its digits; then Cephes' logf polynomial."""
    above = t > f32(0.41421356)
    f = (t - f32(1.0)) * f32(0.5) if above else t
    e = f32(1.0) if above else f32(0.0)
    z = f * f
    y = f32(7.0376836292e-2)
    y = y * f - f32(1.1514610310e-1)
    y = y * f + f32(1.1676998740e-1)
    y = y * f - f32(1.2420140846e-1)
    y = y * f + f32(1.4249322787e-1)
    y = y * f - f32(1.6668057665e-1)
    y = y * f + f32(2.0000714765e-1)
    y = y * f - f32(2.4999993993e-1)
    y = y * f + f32(3.3333331174e-1)
    y = y * f * z - e * f32(2.12194440e-4) - f32(0.5) * z
    return f + y + e * f32(0.693359375)


@numba.njit(inline="always", fastmath=FAST)
def softplus_f32(x):
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), finite for every finite x."""
    return (x if x > f32(0.0) else f32(0.0)) + log1p_unit_f32(exp_f32(-abs(x)))


@numba.njit(inline="always", fastmath=FAST)
def silu_f32(x):
    """x · sigmoid(x)."""
    return x / (f32(1.0) + exp_f32(-x))


def pieces(batch: int, channels: int, threads: int) -> np.ndarray:
    """(image, c0, c1, block) rows, int64: each image's channels cut into aligned blocks so that the pieces share out
    evenly over ``threads`` (lcm(batch, threads) pieces where the channels allow); ``block`` numbers an image's
    blocks."""
    blocks = max(1, min(threads // math.gcd(batch, threads), channels // CHANNEL_ALIGN))
    size = math.ceil(channels / blocks / CHANNEL_ALIGN) * CHANNEL_ALIGN
    starts = range(0, channels, size)
    rows = [(i, c0, min(c0 + size, channels), block) for i in range(batch) for block, c0 in enumerate(starts)]
    return np.array(rows, np.int64)


def run_on_torch_threads(kernel, *args) -> None:
    """Run a ``prange`` kernel on torch's thread count, and keep that count (numba's OpenMP pool, started on its
    first call, resets it)."""
    threads = torch.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    kernel(*args)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
