"""MambaVision: a hybrid Mamba-Transformer backbone.

Hatamizadeh and Kautz, "MambaVision: A Hybrid Mamba-Transformer Vision Backbone", CVPR 2025.
https://arxiv.org/abs/2407.08083. Official code: https://github.com/NVlabs/MambaVision
(``mambavision/models/mamba_vision.py``; weights load through ``checkpoint_filter_fn``).

Layout, as released: a stride-4 conv stem (two conv3x3/s2 + BatchNorm + ReLU), two stages of residual conv blocks
(conv3x3, BN, GELU-tanh, conv3x3, BN), then two stages of pre-norm token blocks ``x += γ·mixer(LN x)``,
``x += γ·MLP(LN x)`` in which the first ceil(depth/2) blocks mix with the MambaVision mixer and the last floor(depth/2)
with multi-head self-attention. Each stage but the first opens with a conv3x3/s2 downsample (the official code closes
stages 1-3 with it); the model ends in BatchNorm, average pooling and a linear classifier. γ (LayerScale) is used by
B, L and L2 only.

The mixer splits ``in_proj(x)`` into x and z halves, runs each through its own non-causal depthwise conv (kernel 3,
'same' padding) and SiLU, scans x with a one-direction selective scan (d_state 8, ``vizoo.kernels.selective_scan``,
no z gate), and projects ``concat(y, z)`` back: the z half is the symmetric branch without SSM.

Stages 3 and 4 run their blocks on windows (14x14 and 7x7 by default; one window each at 224²): the map is
zero-padded on the right and bottom to a multiple of the window, cut into windows (row-major, tokens row-major inside
a window) and cropped back after the blocks. The padded zeros take part in the scan and the attention, unmasked, as
in the official code. Valid inputs: (B, in_chans, H, W) with H and W positive multiples of 32, so that every stage
output is at its stride; other sizes are refused with a ValueError (resize or pad).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, ClassifierHead, DropPath, LayerScale, Mlp
from timm.models import generate_default_cfgs, register_model

from vizoo.backbones._base import Stage, StagedBackbone, run_blocks, stage_drop_path_rates
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.kernels import selective_scan
from vizoo.layers.ssm_init import init_s4d_real_

__all__ = ["MambaVision"]


class MambaVisionStem(nn.Sequential):
    """(B, in_chans, H, W) -> (B, dim, H/4, W/4): two conv3x3/s2 (no bias), each with BatchNorm (eps 1e-4) and ReLU."""

    def __init__(self, in_chans: int, in_dim: int, dim: int):
        super().__init__(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )


class ConvBlock(nn.Module):
    """Residual ``x + DP(BN(conv(GELU_tanh(BN(conv(x))))))`` with 3x3 convs; (B, C, H, W) in and out."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))


class MambaVisionMixer(nn.Module):
    """The MambaVision token mixer, (B, L, C) -> (B, L, C).

    ``in_proj`` (no bias) gives x and z, C/2 channels each; each goes through its own depthwise conv (kernel
    ``d_conv``, 'same' padding, no bias) and SiLU. x is scanned by a selective scan (A = -exp(A_log), S4D-real
    init; D skip; step size of rank ceil(C/16)); the scan output and z are concatenated and projected by ``out_proj``
    (no bias). Parameter names follow the official module.

    The step size is ``softplus(W·dt + 2·b)`` for ``dt_proj`` = (W, b): the official mixer applies ``dt_proj`` with its
    bias and passes the same bias again as the scan's ``delta_bias``; the released weights were trained so.
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, scan_backend: str | None = None):
        super().__init__()
        if dim % 2 or d_conv % 2 == 0:
            raise ValueError(f"MambaVisionMixer needs an even dim and an odd d_conv, got dim={dim}, d_conv={d_conv}")
        half = dim // 2
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half)
        self.A_log = nn.Parameter(torch.empty(half, d_state))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        init_s4d_real_(self.A_log)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, C/2, L) each
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_scan(
            x,
            self.dt_proj(dt).transpose(1, 2),  # (B, C/2, L)
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2),  # (B, d_state, L)
            C.transpose(1, 2),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


class MambaVisionBlock(nn.Module):
    """Pre-norm ``x + DP(γ1·mixer(LN x))``, ``x + DP(γ2·MLP(LN x))`` on window tokens, (B', L, C) in and out.

    ``mixer`` is "mamba" (``MambaVisionMixer``) or "attention" (timm's multi-head self-attention, qkv bias);
    ``layer_scale`` is γ's initial value, or None for no γ.
    """

    def __init__(
        self,
        dim: int,
        mixer: str,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        scan_backend: str | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if mixer == "mamba":
            self.mixer = MambaVisionMixer(dim, scan_backend=scan_backend)
        else:
            self.mixer = Attention(dim, num_heads, qkv_bias=True)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W), H and W multiples of ``window`` -> (B·(H/window)·(W/window), window², C); windows and the tokens
    inside each window in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """The inverse of ``window_partition``: (B·(h/window)·(w/window), window², C) -> (B, C, h, w)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h, w)


class WindowedStage(Stage):
    """A stage whose token blocks run on ``window_size``² windows of its (B, C, H, W) map; NCHW in and out.

    The map is zero-padded on the right and bottom to a multiple of the window and cropped back after the blocks.
    """

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module], window_size: int):
        super().__init__(downsample, blocks)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.window_size, -w % self.window_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = run_blocks(self.blocks, window_partition(x, self.window_size), self.grad_checkpointing)
        x = window_reverse(x, self.window_size, h + pad_h, w + pad_w)
        return x[:, :, :h, :w] if pad_h or pad_w else x


class MambaVision(StagedBackbone):
    """MambaVision backbone and classifier, (B, in_chans, H, W) -> (B, num_classes); NCHW throughout.

    Args:
        dim: channels of stage 1 (stage i has dim·2^i).
        in_dim: channels after the stem's first conv.
        depths: blocks of the four stages: two conv stages, then two windowed Mamba/attention stages.
        num_heads: attention heads of stages 3 and 4.
        window_size: window side of stages 3 and 4.
        mlp_ratio: MLP width of the token blocks, as a multiple of their channels.
        layer_scale: initial LayerScale γ of the token blocks (None: no γ).
        scan_backend: selective-scan backend for every mixer (None picks per device).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: pooling before the classifier ("avg", "max", "" for none).
        drop_rate: classifier dropout.
        drop_path_rate: the maximum stochastic depth (linear over all blocks).

    ``no_weight_decay`` is empty: the official training (timm's optimizer factory) decays every parameter of two or
    more dimensions, A_log included, and timm leaves biases, norms, D and γ out of decay by their shape anyway.
    """

    input_multiple = 32
    output_fmt = "NCHW"

    def __init__(
        self,
        dim: int = 80,
        in_dim: int = 32,
        depths: tuple[int, ...] = (1, 3, 8, 4),
        num_heads: tuple[int, ...] = (8, 16),
        window_size: tuple[int, ...] = (14, 7),
        mlp_ratio: float = 4.0,
        layer_scale: float | None = None,
        scan_backend: str | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 2 or len(window_size) != 2:
            raise ValueError(
                "MambaVision has two conv stages and two Mamba/attention stages: depths needs 4 entries, num_heads "
                f"and window_size 2 (stages 3 and 4); got depths={depths}, num_heads={num_heads}, "
                f"window_size={window_size}"
            )
        dims = [dim * 2**i for i in range(4)]
        for d, heads in zip(dims[2:], num_heads):
            if d % heads:
                raise ValueError(f"MambaVision: stage width {d} is not divisible by num_heads {heads}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = MambaVisionStem(in_chans, in_dim, dim)
        rates = stage_drop_path_rates(depths, drop_path_rate)
        self.stages = nn.Sequential()
        self.feature_info = []
        for i, (d, depth) in enumerate(zip(dims, depths)):
            downsample = nn.Conv2d(dims[i - 1], d, 3, 2, 1, bias=False) if i else None
            if i < 2:
                stage = Stage(downsample, [ConvBlock(d, rates[i][j]) for j in range(depth)])
            else:
                n_mamba = depth - depth // 2  # the first ceil(depth/2) blocks: Mamba; the rest: attention
                blocks = [
                    MambaVisionBlock(
                        d,
                        "mamba" if j < n_mamba else "attention",
                        num_heads[i - 2],
                        mlp_ratio,
                        rates[i][j],
                        layer_scale,
                        scan_backend,
                    )
                    for j in range(depth)
                ]
                stage = WindowedStage(downsample, blocks, window_size[i - 2])
            self.stages.append(stage)
            self.feature_info.append(dict(num_chs=d, reduction=4 * 2**i, module=f"stages.{i}"))
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        # As the official init: truncated-normal Linear weights and zero biases for every Linear, dt_proj included
        # (the official model-level init overwrites the mixer's Mamba step-size init the same way).
        self.apply(init_trunc_normal)


def _official_key(key: str) -> str:
    """One official key -> vizoo's (``patch_embed.conv_down`` -> ``stem``, ``levels.i.blocks`` -> ``stages.i.blocks``,
    ``levels.i.downsample.reduction.0`` -> ``stages.{i+1}.downsample``, ``gamma_{1,2}`` -> ``ls{1,2}.gamma``,
    ``head`` -> ``head.fc``)."""
    if key.startswith("patch_embed.conv_down."):
        return "stem." + key.removeprefix("patch_embed.conv_down.")
    if m := re.match(r"^levels\.(\d+)\.downsample\.reduction\.0\.(.*)$", key):
        return f"stages.{int(m[1]) + 1}.downsample.{m[2]}"
    if m := re.match(r"^levels\.(\d+)\.blocks\.(\d+)\.gamma_([12])$", key):
        return f"stages.{m[1]}.blocks.{m[2]}.ls{m[3]}.gamma"
    if m := re.match(r"^levels\.(\d+)\.blocks\.(.*)$", key):
        return f"stages.{m[1]}.blocks.{m[2]}"
    if key.startswith("head.") and not key.startswith("head.fc."):
        return "head.fc." + key.removeprefix("head.")
    return key  # norm.*


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MambaVision) -> dict[str, torch.Tensor]:
    """Map an official MambaVision checkpoint (``mambavision/models/mamba_vision.py`` layout, e.g. the HF
    ``mambavision_*_1k.pth.tar`` files, read by ``vizoo.utils.checkpoint.read_state_dict``) to vizoo's keys.

    The official model downsamples at the end of stages 1-3 (``levels.i.downsample``), vizoo at the start of stages
    2-4. Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if not any(k.startswith("stages.") for k in state_dict):
        state_dict = {_official_key(k): v for k, v in state_dict.items()}
    return check_converted(state_dict, model)


def _create_mambavision(variant: str, pretrained: bool = False, **kwargs) -> MambaVision:
    return build_vizoo_model(MambaVision, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(hf_name: str = "", filename: str = "", **kwargs) -> PaperCfg:
    hub = dict(hf_hub_id=f"nvidia/MambaVision-{hf_name}-1K", hf_hub_filename=filename) if hf_name else {}
    # Non-commercial: the code is under the NVIDIA Source Code License-NC, the weights under CC-BY-NC-SA-4.0 (README;
    # the HF model cards say "nvclv1").
    return imagenet_cfg(
        "stem.0",
        "arXiv:2407.08083",
        "https://github.com/NVlabs/MambaVision",
        license="cc-by-nc-sa-4.0",
        **hub,
        **kwargs,
    )


# Official ImageNet-1k weights: the ``.pth.tar`` files of the HF repos nvidia/MambaVision-{T,T2,S,B,L,L2}-1K that the
# README's table links; pretrained=True downloads them into the HF cache. crop_pct: the official eval cfgs (bicubic,
# centre crop).
# paper_*: the ImageNet-1K table of the MambaVision README (params and FLOPs at 224², FLOPs are ptflops MACs).
default_cfgs = generate_default_cfgs(
    {
        "mambavision_tiny.in1k": _cfg(
            "T", "mambavision_tiny_1k.pth.tar", crop_pct=1.0, paper_params_m=31.8, paper_gmacs=4.4, paper_top1=82.3
        ),
        "mambavision_tiny2.in1k": _cfg(
            "T2", "mambavision_tiny2_1k.pth.tar", crop_pct=0.98, paper_params_m=35.1, paper_gmacs=5.1, paper_top1=82.7
        ),
        "mambavision_small.in1k": _cfg(
            "S", "mambavision_small_1k.pth.tar", crop_pct=0.93, paper_params_m=50.1, paper_gmacs=7.5, paper_top1=83.3
        ),
        "mambavision_base.in1k": _cfg(
            "B", "mambavision_base_1k.pth.tar", crop_pct=1.0, paper_params_m=97.7, paper_gmacs=15.0, paper_top1=84.2
        ),
        "mambavision_large.in1k": _cfg(
            "L", "mambavision_large_1k.pth.tar", crop_pct=1.0, paper_params_m=227.9, paper_gmacs=34.9, paper_top1=85.0
        ),
        "mambavision_large2.in1k": _cfg(
            "L2", "mambavision_large2_1k.pth.tar", crop_pct=1.0, paper_params_m=241.5, paper_gmacs=37.5, paper_top1=85.3
        ),
        "test_mambavision.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# The official model factories' settings; drop_path_rate is each variant's training value.


@register_model
def mambavision_tiny(pretrained: bool = False, **kwargs) -> MambaVision:
    model_args = dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(8, 16), drop_path_rate=0.2)
    return _create_mambavision("mambavision_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def mambavision_tiny2(pretrained: bool = False, **kwargs) -> MambaVision:
    model_args = dict(dim=80, in_dim=32, depths=(1, 3, 11, 4), num_heads=(8, 16), drop_path_rate=0.2)
    return _create_mambavision("mambavision_tiny2", pretrained, **dict(model_args, **kwargs))


@register_model
def mambavision_small(pretrained: bool = False, **kwargs) -> MambaVision:
    model_args = dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(8, 16), drop_path_rate=0.2)
    return _create_mambavision("mambavision_small", pretrained, **dict(model_args, **kwargs))


@register_model
def mambavision_base(pretrained: bool = False, **kwargs) -> MambaVision:
    model_args = dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(8, 16), layer_scale=1e-5, drop_path_rate=0.3)
    return _create_mambavision("mambavision_base", pretrained, **dict(model_args, **kwargs))


@register_model
def mambavision_large(pretrained: bool = False, **kwargs) -> MambaVision:
    model_args = dict(
        dim=196, in_dim=64, depths=(3, 3, 10, 5), num_heads=(16, 32), layer_scale=1e-5, drop_path_rate=0.3
    )
    return _create_mambavision("mambavision_large", pretrained, **dict(model_args, **kwargs))


@register_model
def mambavision_large2(pretrained: bool = False, **kwargs) -> MambaVision:
    model_args = dict(
        dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(16, 32), layer_scale=1e-5, drop_path_rate=0.3
    )
    return _create_mambavision("mambavision_large2", pretrained, **dict(model_args, **kwargs))


@register_model
def test_mambavision(pretrained: bool = False, **kwargs) -> MambaVision:
    """A tiny MambaVision for tests: stage 3 is cut into 3x3 windows, so a 64² input pads its 4x4 map to four
    windows; stages 3 and 4 each have one Mamba and one attention block."""
    model_args = dict(
        dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(2, 4), window_size=(3, 2), mlp_ratio=2.0, drop_path_rate=0.0
    )
    return _create_mambavision("test_mambavision", pretrained, **dict(model_args, **kwargs))
