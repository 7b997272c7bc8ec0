"""EcoFormer's hashed attention (Liu et al., "EcoFormer: Energy-Saving Attention with Linear Complexity", NeurIPS 2022,
arXiv 2209.09004), written from the paper and the released code's behaviour.

Queries and keys are one shared, l2-normalised projection. Kernel-based supervised hashing (KSH) maps each to a b-bit
code in {-1, +1}^b, so that the attention's products with the codes are additions and sign flips. The hash functions
are fitted once, on the first training batch, to keep each token's top-k most similar tokens close in Hamming
distance and its top-k least similar far; after that they are fixed buffers.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from vizoo.kernels.backend import autocast_off, is_exporting
from vizoo.kernels.linear_attention import linear_attention

__all__ = ["EcoFormerAttention", "KernelizedHashing", "hashed_attention", "l2_normalize"]


def _sign(z: torch.Tensor) -> torch.Tensor:
    """sign(z) as ``z / max(|z|, tiny)``: exactly ±1 or 0 for every normal float, and in ONNX an Abs, Max and Div,
    which NNAPI runs (it lacks Sign)."""
    return z / torch.maximum(z.abs(), z.new_tensor(torch.finfo(z.dtype).tiny))


def _sign_with_clipped_gradient(z: torch.Tensor) -> torch.Tensor:
    """sign(z) forward; the gradient passes where |z| < 1 and is 0 elsewhere (a straight-through estimator). Without
    autograd (inference, export) it is the plain sign."""
    if not (torch.is_grad_enabled() and z.requires_grad):
        return _sign(z)
    clipped = z.clamp(-1.0, 1.0)
    return clipped + (_sign(z) - clipped).detach()


def _squared_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖² over the last dim, kept, as d · mean(x²): NNAPI has ReduceMean but no ReduceSum."""
    return x.shape[-1] * x.pow(2).mean(-1, keepdim=True)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` (up to 1e-24 under the root) from ReduceMean, Sqrt and Div: NNAPI lacks the
    ReduceL2 and Expand that ``F.normalize`` exports, and takes Clip only as ReLU1/ReLU6."""
    return x / torch.sqrt(_squared_norm(x) + 1e-24)


class KernelizedHashing(nn.Module):
    """Kernel-based supervised hashing of unit-norm tokens x (B, H, N, d) -> codes (B, H, N, b) in {-1, +1}.

    ``h(x) = sign(A·(κ(x) - μ))``, ``κ(x)_j = exp(-‖x - anchor_j‖² / 2σ)``, with σ the mean squared distance of the
    image's tokens to the anchors (per image and head, recomputed on every call, as the released code does).
    Buffers per head: ``anchors`` (m, d), ``kernel_mean`` μ (m), ``projection`` A (b, m) and ``fitted``.

    ``fit`` learns them from one batch, as the paper does:
    - the anchors are m tokens drawn at random;
    - the target similarity S is +1 on each token's ``topk`` most similar tokens (cosine), -1 on its ``topk`` least
      similar, 0 elsewhere, times b;
    - bit by bit, A's row r starts from a Gaussian draw and takes ``iterations`` steps of SGD (Nesterov momentum) on
      ``-yᵀSy / (N·b)`` with y = tanh(K·a / 2) the relaxed code; the row keeps whichever of its start and its end
      gives the lower loss with the true sign codes, and S loses that bit's ``y yᵀ`` before the next bit.
    Every random draw comes from a generator seeded with ``seed``, so a fit is a deterministic function of the
    batch and the seed.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        num_bits: int = 16,
        num_anchors: int = 25,
        topk: int = 10,
        iterations: int = 100,
        lr: float = 5e-4,
        momentum: float = 0.9,
        seed: int = 0,
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.num_bits, self.num_anchors = num_heads, head_dim, num_bits, num_anchors
        self.topk, self.iterations, self.lr, self.momentum, self.seed = topk, iterations, lr, momentum, seed
        # Before a fit (or a checkpoint) the buffers are a seeded data-independent hashing: random unit anchors and
        # Gaussian projections, so an unfitted model still computes something well defined (export, shape tests).
        generator = torch.Generator().manual_seed(seed)
        anchors = F.normalize(torch.randn(num_heads, num_anchors, head_dim, generator=generator), dim=-1)
        self.register_buffer("anchors", anchors)
        self.register_buffer("kernel_mean", torch.zeros(num_heads, num_anchors))
        self.register_buffer("projection", torch.randn(num_heads, num_bits, num_anchors, generator=generator))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.is_fitted = False  # mirrors ``fitted`` without a device sync; kept in step by the load hook below
        self.register_load_state_dict_post_hook(_sync_fitted_flag)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian kernel of x (B, H, N, d) against the anchors, centred by μ: (B, H, N, m), fp32."""
        x = x.float()
        anchors = self.anchors.float()
        anchors_sq = anchors.pow(2).sum(-1)[:, None, :]  # a constant in ONNX
        sq_dist = torch.relu(_squared_norm(x) + anchors_sq - 2.0 * x @ anchors.transpose(-1, -2))
        sigma = sq_dist.mean(dim=(-1, -2), keepdim=True)
        return torch.exp(sq_dist / (-2.0 * sigma)) - self.kernel_mean[:, None, :]  # no Neg: CoreML lacks it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.kernel(x) @ self.projection.float().transpose(-1, -2)
        return _sign_with_clipped_gradient(z)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Fit anchors, μ and A to the unit-norm tokens x (B, H, N, d) of one batch (see the class docstring), in
        fp32 whatever autocast says."""
        with autocast_off(x.device.type):
            self._fit(x.detach().float())

    def _fit(self, x: torch.Tensor) -> None:
        b, h, n, d = x.shape
        generator = torch.Generator().manual_seed(self.seed)
        # Anchors: tokens of the first image (the released code's choice); from the whole batch when an image has
        # fewer tokens than anchors, with repetition only when the batch has fewer too.
        pool = x[0] if n >= self.num_anchors else x.transpose(0, 1).reshape(h, b * n, d)
        size = pool.shape[1]
        if size >= self.num_anchors:
            pick = torch.randperm(size, generator=generator)[: self.num_anchors]
        else:
            pick = torch.randint(size, (self.num_anchors,), generator=generator)
        self.anchors.copy_(pool[:, pick.to(x.device)])
        self.kernel_mean.zero_()
        kernel = self.kernel(x)
        self.kernel_mean.copy_(kernel.mean(dim=(0, 2)))
        kernel = kernel - self.kernel_mean[:, None, :]

        target = SimilarityTarget(x, min(self.topk, n), scale=float(self.num_bits))
        start = torch.randn(h, self.num_bits, self.num_anchors, generator=generator).to(x.device)
        for bit in range(self.num_bits):
            candidates = (start[:, bit], self._descend(kernel, target, start[:, bit]))
            codes = [self._codes(kernel, a) for a in candidates]
            losses = [self._loss(y, target) for y in codes]
            best = int(losses[1] < losses[0])
            self.projection[:, bit].copy_(candidates[best])
            target.subtract(codes[best])
        self.fitted.fill_(True)
        self.is_fitted = True

    def _loss(self, y: torch.Tensor, target: SimilarityTarget) -> torch.Tensor:
        """-yᵀSy / (N·b), averaged over images and heads; y (B, H, N)."""
        return -(target.quadratic(y) / (y.shape[-1] * self.num_bits)).mean()

    def _descend(self, kernel: torch.Tensor, target: SimilarityTarget, start: torch.Tensor) -> torch.Tensor:
        """SGD with Nesterov momentum on one bit's projection a (H, m), relaxed codes y = tanh(K·a / 2).

        The loss's gradient is written out, and the update is torch.optim.SGD's Nesterov rule written out too
        (buf = μ·buf + g; a -= lr·(g + μ·buf)): on these tiny tensors the optimizer object costs more than the math.
        """
        b, h, n, _ = kernel.shape
        scale = -1.0 / (n * self.num_bits * b * h)
        a = start.clone().unsqueeze(-1)  # (H, m, 1)
        momentum = None
        for _ in range(self.iterations):
            y = torch.tanh(0.5 * (kernel @ a).squeeze(-1))
            grad_z = scale * target.symmetric_product(y) * 0.5 * (1.0 - y * y)  # d(loss)/d(K·a)
            grad = (grad_z.unsqueeze(-2) @ kernel).sum(0).transpose(-1, -2)
            momentum = grad.clone() if momentum is None else momentum.mul_(self.momentum).add_(grad)
            a -= self.lr * (grad + self.momentum * momentum)
        return a.squeeze(-1)

    def _codes(self, kernel: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Sign codes (B, H, N) of one bit with projection a (H, m)."""
        return torch.where((kernel @ a.unsqueeze(-1)).squeeze(-1) > 0, 1.0, -1.0)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_bits={self.num_bits}, num_anchors={self.num_anchors}"


class SimilarityTarget:
    """KSH's target S = scale·S0 - Σ_r y_r y_rᵀ for tokens x (B, H, N, d), without materialising B·H·N² values.

    S0 is +1 on each token's ``k`` most cosine-similar tokens and -1 on its ``k`` least similar (-1 wins where the
    two overlap, as when the released code writes the -1s second). The fit only needs S through (S + Sᵀ)·y and
    yᵀSy = ½·yᵀ(S + Sᵀ)y, so S0 + S0ᵀ is kept as one block-diagonal sparse CSR matrix over all B·H·N tokens and
    the codes of the bits fitted so far as a low-rank term: O(N·(k + r)) per product instead of O(N²). The top-k
    search runs over blocks of rows, so a 56x56 stage-1 map fits on a CPU in seconds.
    """

    def __init__(self, x: torch.Tensor, k: int, scale: float, block_elements: int = 1 << 24):
        b, h, n, _ = x.shape
        rows = max(1, block_elements // (b * h * n))
        most, least = [], []
        for start in range(0, n, rows):
            similarity = x[:, :, start : start + rows] @ x.transpose(-1, -2)
            most.append(similarity.topk(k, dim=-1).indices)
            least.append(similarity.topk(k, dim=-1, largest=False).indices)
        most, least = torch.cat(most, dim=2), torch.cat(least, dim=2)
        also_least = (most.unsqueeze(-1) == least.unsqueeze(-2)).any(-1)
        weight = scale * torch.cat([(~also_least).to(x.dtype), -torch.ones_like(least, dtype=x.dtype)], dim=-1)
        # Global token ids: row (b, h, n) -> neighbours (b, h, index) in one (B·H·N)² block-diagonal matrix.
        offset = torch.arange(b * h, device=x.device).view(b, h, 1, 1) * n
        cols = (torch.cat([most, least], dim=-1) + offset).flatten()
        rows = (torch.arange(n, device=x.device).view(1, 1, n, 1) + offset).expand_as(weight).flatten()
        size = (b * h * n, b * h * n)
        s0 = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight.flatten(), size, check_invariants=True)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR's matvec reads rows, COO's scatters
            warnings.simplefilter("ignore", UserWarning)
            self.symmetric = (s0 + s0.t()).coalesce().to_sparse_csr()
        self.codes = x.new_zeros(b, h, n, 0)

    def symmetric_product(self, y: torch.Tensor) -> torch.Tensor:
        """(S + Sᵀ)·y for y (B, H, N)."""
        sparse = (self.symmetric @ y.reshape(-1, 1)).view_as(y)
        return sparse - 2.0 * (self.codes @ (y.unsqueeze(-2) @ self.codes).transpose(-1, -2)).squeeze(-1)

    def quadratic(self, y: torch.Tensor) -> torch.Tensor:
        """yᵀ S y per image and head: (B, H)."""
        return 0.5 * (y * self.symmetric_product(y)).sum(-1)

    def subtract(self, y: torch.Tensor) -> None:
        """S -= y yᵀ for codes y (B, H, N)."""
        self.codes = torch.cat([self.codes, y.unsqueeze(-1)], dim=-1)


def _sync_fitted_flag(module: KernelizedHashing, incompatible_keys) -> None:
    module.is_fitted = bool(module.fitted)


def hashed_attention(codes: torch.Tensor, v: torch.Tensor, bias_form: str = "released") -> torch.Tensor:
    """EcoFormer's attention over binary codes (B, H, N, b) and values v (B, H, N, dv), in fp32: (B, H, N, dv).

    With c = b + 1 (so that every similarity h_i·h_j + c is at least 1):
    - ``"paper"``: ``o_i = Σ_j (h_i·h_j + c) v_j / Σ_j (h_i·h_j + c)`` (the paper's equation). It is normalised
      linear attention over the codes with a constant √c feature appended, so it runs on the shared kernel.
    - ``"released"``: ``o_i = (h_i·Σ_j h_jᵀ v_j + c·v_i) / Σ_j (h_i·h_j + c)``; the released code adds c·v_i, not
      c·Σ_j v_j, to the numerator, and its published checkpoints and accuracies come from that form.
    """
    if bias_form not in ("released", "paper"):
        raise ValueError(f"unknown bias_form {bias_form!r}; use 'released' or 'paper'")
    codes, v = codes.float(), v.float()
    bias = codes.shape[-1] + 1.0
    if bias_form == "paper":
        augmented = torch.cat([codes, codes.new_full((*codes.shape[:-1], 1), math.sqrt(bias))], dim=-1)
        return linear_attention(augmented, augmented, v)
    n = codes.shape[2]
    # Σ_j h_i·h_j = n · h_i·mean_j h_j, as a MatMul and a ReduceMean (NNAPI has no ReduceSum)
    denominator = n * (codes @ codes.mean(dim=2, keepdim=True).transpose(-1, -2) + bias)
    return (linear_attention(codes, codes, v, normalize=False) + bias * v) / denominator


class EcoFormerAttention(nn.Module):
    """EcoFormer self-attention on tokens: x (B, N, C) -> (B, N, C), full resolution (no spatial reduction).

    One projection gives queries and keys (l2-normalised per head), another the values; codes from
    ``KernelizedHashing``; ``hashed_attention`` in fp32 with autocast off, as the released code runs it. The hashing
    is fitted on the first forward pass in training mode, or when ``fit_hashing`` asks for it; a model in eval mode
    that was never fitted (nor loaded from a fitted checkpoint) warns once and uses its seeded random hashing.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        qkv_bias: bool = True,
        num_bits: int = 16,
        num_anchors: int = 25,
        topk: int = 10,
        seed: int = 0,
        bias_form: str = "released",
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if bias_form not in ("released", "paper"):
            raise ValueError(f"unknown bias_form {bias_form!r}; use 'released' or 'paper'")
        self.num_heads, self.bias_form = num_heads, bias_form
        self.to_qk = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.hashing = KernelizedHashing(num_heads, dim // num_heads, num_bits, num_anchors, topk, seed=seed)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fit_on_next_forward = False
        self._warned_unfitted = False

    def forward(self, x: torch.Tensor, feat_size: list[int] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qk = l2_normalize(self.to_qk(x).reshape(b, n, self.num_heads, -1).transpose(1, 2))
        v = self.to_v(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        if not is_exporting():
            self._fit_or_warn(qk)
        with autocast_off(x.device.type):
            y = hashed_attention(self.hashing(qk), v, self.bias_form)
        y = y.transpose(1, 2).reshape(b, n, c).to(x.dtype)
        return self.proj_drop(self.proj(y))

    def _fit_or_warn(self, qk: torch.Tensor) -> None:
        if self.fit_on_next_forward or (self.training and not self.hashing.is_fitted):
            self.hashing.fit(qk)
            self.fit_on_next_forward = False
        elif not self.hashing.is_fitted and not self._warned_unfitted and not torch.compiler.is_compiling():
            # A warning would break a compiled graph; eager calls (and timm.create_model users) still see it.
            warnings.warn(
                "EcoFormer hashing is not fitted: it uses its seeded random init. Train, call "
                "model.fit_hashing(images), or load a fitted checkpoint first.",
                stacklevel=3,
            )
            self._warned_unfitted = True
