"""MobileMamba's layers (He et al., "MobileMamba: Lightweight Multi-Receptive Visual Mamba Network", CVPR 2025,
arXiv 2411.15941). Channel-first (B, C, H, W) throughout.

MobileMamba grows out of EfficientViT (MSRA): its Conv-BN pairs, FFN, residual and patch merging are timm's
``efficientvit_msra`` pieces (``ConvNorm``, ``ConvMlp``, ``ResidualDrop``, ``PatchMerging``), which have the official
layers' parameter shapes and arithmetic. What is new here:

- the db1 (Haar) wavelet transform and its inverse, as fixed stride-2 depthwise (transposed) convolutions;
- ``BidirectionalSS2D``: the official SS2D with two routes (row-major and its reverse), channel-first, with
  Conv-BN input/output projections and d_state 1 (``forward_type="v052d"``, ``k_group=2``);
- ``MBWTConv2d`` (WTE-Mamba), ``MKDeConv`` and ``MRFFI``, the multi-receptive-field mixer;
- ``BatchNormClassifierHead``: global pool, BatchNorm1d and a linear layer (the official ``BN_Linear`` head);
- ``fuse_conv_norms`` / ``fuse_bn_linear``: BatchNorm folding for deployment.

Parameter names follow the official ``model/mobilemamba/mobilemamba.py`` and ``model/lib_mamba/vmambanew.py`` where
that keeps checkpoint conversion to a few renames.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, LayerNorm2d
from timm.models.efficientvit_msra import ConvMlp, ConvNorm, PatchMerging, ResidualDrop

from vizoo.kernels.cross_scan import bidirectional_merge, bidirectional_scan
from vizoo.layers.ssm_init import routed_selective_scan

__all__ = [
    "BatchNormClassifierHead",
    "BidirectionalSS2D",
    "MBWTConv2d",
    "MKDeConv",
    "MRFFI",
    "MobileMambaBlock",
    "haar_dwt",
    "haar_filters",
    "haar_iwt",
    "mrffi_split",
    "subsample",
]

NUM_ROUTES = 2  # row-major and reversed


# ---------------------------------------------------------------------------------------------------------------------
# Haar wavelet


def haar_filters(channels: int) -> torch.Tensor:
    """(4·channels, 1, 2, 2): per channel the four db1 sub-band filters LL, LH, HL, HH (entries ±1/2).

    With lo = (1, 1)/√2 and hi = (1, -1)/√2 along rows (first factor) and columns (second): LL = lo⊗lo, LH = hi⊗lo
    (top row minus bottom row), HL = lo⊗hi (left minus right), HH = hi⊗hi. The four are orthonormal, so the same
    filters synthesise (``haar_iwt``), as in the official ``create_wavelet_filter("db1")``.
    """
    lo = torch.tensor([1.0, 1.0]) / math.sqrt(2.0)
    hi = torch.tensor([1.0, -1.0]) / math.sqrt(2.0)
    bands = torch.stack([lo[:, None] * lo, hi[:, None] * lo, lo[:, None] * hi, hi[:, None] * hi])
    return bands.repeat(channels, 1, 1).unsqueeze(1)


def haar_dwt(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """One-level 2D Haar transform: (B, C, H, W), H and W even -> (B, 4C, H/2, W/2), channel 4c + k = band k of c."""
    return F.conv2d(x, filters, stride=2, groups=filters.shape[0] // 4)


def haar_iwt(bands: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar_dwt``: (B, 4C, h, w) -> (B, C, 2h, 2w).

    The stride-2 transposed conv, written as a grouped 1x1 conv that gives each channel's four sub-pixels (2i + j)
    and a rank-5 interleave: NNAPI lacks ConvTranspose, and CoreML takes no tensor above rank 5.
    """
    b, _, h, w = bands.shape
    c = filters.shape[0] // 4
    subpixel_weight = filters.view(c, 4, 4).transpose(1, 2).reshape(4 * c, 4, 1, 1)  # [4c + 2i + j, band k]
    subpixels = F.conv2d(bands, subpixel_weight, groups=c)
    return subpixels.view(b * c, 2, 2, h, w).permute(0, 3, 1, 4, 2).reshape(b, c, 2 * h, 2 * w)


# ---------------------------------------------------------------------------------------------------------------------
# Global branch: WTE-Mamba


class BidirectionalSS2D(nn.Module):
    """MobileMamba's SS2D (official ``SS2D`` with ``forward_type="v052d"``, ``k_group=2``, ``channel_first=True``).

    (B, C, H, W) -> (B, C, H, W): Conv-BN in_proj -> (x, z); x -> DWConv3x3 -> SiLU, read row-major and reversed
    (``bidirectional_scan``); one selective scan over both routes, each with its own step-size and B/C projections,
    A, D and step-size bias; routes summed back (``bidirectional_merge``) -> LayerNorm over channels -> ``· SiLU(z)``
    -> Conv-BN out_proj. Parameters start as the official ``initialize="v2"``: A = -1, D = 1, step-size weights and
    biases uniform in [0, 0.1).
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, scan_backend: str | None = None):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan_backend = scan_backend
        self.in_proj = ConvNorm(dim, 2 * d_inner)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        bound = d_inner**-0.5  # nn.Linear's default init, as the official per-route x_proj layers get
        self.x_proj_weight = nn.Parameter(
            torch.empty(NUM_ROUTES, self.dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound)
        )
        self.dt_projs_weight = nn.Parameter(0.1 * torch.rand(NUM_ROUTES, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(0.1 * torch.rand(NUM_ROUTES, d_inner))
        self.A_logs = nn.Parameter(torch.zeros(NUM_ROUTES * d_inner, d_state))
        self.Ds = nn.Parameter(torch.ones(NUM_ROUTES * d_inner))
        self.out_norm = LayerNorm2d(d_inner, eps=1e-5)
        self.out_proj = ConvNorm(d_inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x, z = self.in_proj(x).chunk(2, dim=1)
        xs = bidirectional_scan(self.act(self.conv2d(x)))  # (b, 2, d, L)
        ys = routed_selective_scan(self, xs)  # (b, 2·d, L)
        y = bidirectional_merge(ys.unflatten(1, (NUM_ROUTES, -1))).unflatten(-1, (h, w))
        return self.out_proj(self.out_norm(y) * self.act(z))


class MBWTConv2d(nn.Module):
    """WTE-Mamba: ``base_scale · SS2D(x) + IWT(wavelet_scale · DWConv_k(DWT(x)))``. (B, C, H, W) in and out.

    The wavelet path filters all four Haar sub-bands of x with one depthwise k×k conv and transforms back; an odd H or
    W is zero-padded at the bottom/right for it and cropped after, as in the official code. The Haar filters are a
    non-persistent buffer: constants, not weights.
    """

    def __init__(self, dim: int, kernel_size: int, ssm_ratio: float = 2.0, scan_backend: str | None = None):
        super().__init__()
        self.global_atten = BidirectionalSS2D(dim, d_state=1, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        self.base_scale = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.wavelet_conv = nn.Conv2d(
            4 * dim, 4 * dim, kernel_size, padding=kernel_size // 2, groups=4 * dim, bias=False
        )
        self.wavelet_scale = nn.Parameter(torch.full((1, 4 * dim, 1, 1), 0.1))
        self.register_buffer("wavelet_filters", haar_filters(dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        bands = haar_dwt(F.pad(x, (0, w % 2, 0, h % 2)), self.wavelet_filters)
        detail = haar_iwt(self.wavelet_scale * self.wavelet_conv(bands), self.wavelet_filters)[..., :h, :w]
        return self.base_scale * self.global_atten(x) + detail


# ---------------------------------------------------------------------------------------------------------------------
# Local branch, mixer and block


class MKDeConv(nn.Sequential):
    """MK-DeConv, the local branch: depthwise k×k Conv-BN -> ReLU -> depthwise 1x1 Conv-BN (a per-channel scale)."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__(
            OrderedDict(
                dw=ConvNorm(dim, dim, kernel_size, pad=kernel_size // 2, groups=dim),
                act=nn.ReLU(),
                dw1x1=ConvNorm(dim, dim, 1, groups=dim),
            )
        )


def mrffi_split(dim: int, global_ratio: float, local_ratio: float) -> tuple[int, int, int]:
    """MRFFI's channel split (global, local, identity): global = global_ratio·dim rounded to a multiple of 16 (ties
    up), local = local_ratio·dim or what is left if that overflows, identity = the rest."""
    global_channels = (int(global_ratio * dim) + 8) // 16 * 16
    local_channels = int(local_ratio * dim)
    if global_channels + local_channels > dim:
        local_channels = dim - global_channels
    return global_channels, local_channels, dim - global_channels - local_channels


class MRFFI(nn.Module):
    """Multi-Receptive Field Feature Interaction. (B, C, H, W) in and out.

    Channels split (``mrffi_split``) into a global part (WTE-Mamba), a local part (MK-DeConv) and an identity part
    passed through; concatenated back -> ReLU -> 1x1 Conv-BN (BN weight starting at 0). A part with no channels is
    an identity.
    """

    def __init__(
        self,
        dim: int,
        global_ratio: float,
        local_ratio: float,
        kernel_size: int,
        ssm_ratio: float = 2.0,
        scan_backend: str | None = None,
    ):
        super().__init__()
        self.split_sizes = mrffi_split(dim, global_ratio, local_ratio)
        global_channels, local_channels, _ = self.split_sizes
        self.global_op = (
            MBWTConv2d(global_channels, kernel_size, ssm_ratio, scan_backend) if global_channels else nn.Identity()
        )
        self.local_op = MKDeConv(local_channels, kernel_size) if local_channels else nn.Identity()
        self.act = nn.ReLU()
        self.proj = ConvNorm(dim, dim, bn_weight_init=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_global, x_local, x_identity = torch.split(x, self.split_sizes, dim=1)
        x = torch.cat([self.global_op(x_global), self.local_op(x_local), x_identity], dim=1)
        return self.proj(self.act(x))


def residual_dwconv(dim: int, bn_weight_init: float = 1.0) -> ResidualDrop:
    """x + BN(DWConv3x3(x))."""
    return ResidualDrop(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=bn_weight_init))


def residual_ffn(dim: int) -> ResidualDrop:
    """x + FFN(x), FFN = 1x1 Conv-BN (2·dim) -> ReLU -> 1x1 Conv-BN (BN weight starting at 0)."""
    return ResidualDrop(ConvMlp(dim, 2 * dim))


def subsample(in_dim: int, dim: int) -> nn.Sequential:
    """The downsampling between stages, as in EfficientViT: DWConv and FFN residuals at ``in_dim``, patch merging
    (1x1 -> DW3x3 stride 2 -> SE -> 1x1, 4·in_dim wide), DWConv and FFN residuals at ``dim``. Halves H and W."""
    return nn.Sequential(
        OrderedDict(
            res1=nn.Sequential(residual_dwconv(in_dim), residual_ffn(in_dim)),
            patchmerge=PatchMerging(in_dim, dim),
            res2=nn.Sequential(residual_dwconv(dim), residual_ffn(dim)),
        )
    )


class MobileMambaBlock(nn.Module):
    """``x + DropPath(FFN1(DW1(MRFFI(FFN0(DW0(x))))))``, each of the five a residual itself. (B, C, H, W) in and out.

    The depthwise convs' BN weights start at 0, as in the official code.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, **mrffi_kwargs):
        super().__init__()
        self.dw0 = residual_dwconv(dim, bn_weight_init=0.0)
        self.ffn0 = residual_ffn(dim)
        self.mixer = ResidualDrop(MRFFI(dim, **mrffi_kwargs))
        self.dw1 = residual_dwconv(dim, bn_weight_init=0.0)
        self.ffn1 = residual_ffn(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x))))))


# ---------------------------------------------------------------------------------------------------------------------
# Classifier and BatchNorm folding


class BatchNormClassifierHead(ClassifierHead):
    """Global pool -> BatchNorm1d -> dropout -> linear (the official ``BN_Linear`` on pooled features).

    Without pooling (``pool_type=""``) the BN normalises each channel of the map. ``pre_logits`` returns the
    normalised pooled features.
    """

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0):
        super().__init__(in_features, num_classes, pool_type=pool_type, drop_rate=drop_rate)
        self.norm = nn.BatchNorm1d(in_features)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.drop(self.norm(x.flatten(2)).view_as(x) if x.dim() == 4 else self.norm(x))
        return x if pre_logits else self.fc(x)
