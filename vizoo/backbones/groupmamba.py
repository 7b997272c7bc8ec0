"""GroupMamba: Efficient Group-Based Visual State Space Model.

Shaker et al., CVPR 2025. https://arxiv.org/abs/2407.13772
Official code: https://github.com/Amshaker/GroupMamba (``classification/models/groupmamba.py``; the released EMA
weights load through ``checkpoint_filter_fn``).

The token mixer is the modulated group Mamba layer (MGM): LayerNorm, then the channels split into four groups, each
group scanned by its own single-route SS2D (d_state 1, SiLU gate), group k along route k of VMamba's cross scan
(row-major, column-major, and both reversed). The concatenated outputs are multiplied by a learnt scalar
(``skip_scale``) times the normalised input, modulated per channel by channel-affinity weights (CAM: sigmoid of a
two-layer bottleneck of the token mean), normalised again by the same LayerNorm and projected. vizoo runs the four
groups as one grouped mixer (``GroupedSS2D``): one route reordering (``vizoo.kernels.cross_scan.route_order``) and one
selective scan (``vizoo.kernels.selective_scan``) over all four groups, route k owning channel group k.

Layout as released: a conv stem (7x7 s2, two 3x3, each BN + ReLU, then 3x3 s2 and LayerNorm), conv3x3 s2 + LayerNorm
downsampling, blocks ``x + DP(MGM(x))`` then ``x + DP(FFN(LN(x)))`` with PVTv2's FFN (Linear, DW3x3, GELU, Linear),
a LayerNorm after stages 1-3, and a class-token head: the mean of the stage-4 tokens, refined by one MGM block on that
token alone, LayerNorm, classifier. The official classifier and distillation head, averaged at eval, are folded into
one classifier on load.

Channel-last (NHWC) inside; stages downsample first, so every stage output is a feature map at its stride (stages 1-3
after their LayerNorm). Any input whose height and width are multiples of 32 is valid (square or not); other sizes are
refused with an error that says how to pad.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models import generate_default_cfgs, register_model
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from vizoo.backbones._base import Stage, StagedBackbone, stage_drop_path_rates
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg
from vizoo.kernels.cross_scan import route_order
from vizoo.kernels.cross_scan.torch_ops import from_column_major
from vizoo.layers import ConvDownsample
from vizoo.layers.ssm_init import reset_routed_ssm_, routed_selective_scan

__all__ = ["GroupMamba"]

NUM_GROUPS = 4  # channel groups of the MGM layer, one scan route each


def route_unorder(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``route_order``: (b, 4, c, h·w) with ``ys[:, k]`` in route k's order -> (b, 4, c, h·w) with
    every route's values back in row-major pixel order (not summed, unlike ``cross_merge``)."""
    forward, reverse = ys[:, :2], ys[:, 2:].flip(-1)  # routes 0, 1 and routes 2, 3 with the reversal undone
    rows = torch.stack([forward[:, 0], reverse[:, 0]], dim=1)  # routes 0 and 2, row-major already
    cols = from_column_major(torch.stack([forward[:, 1], reverse[:, 1]], dim=1), height, width).flatten(-2)
    return torch.stack([rows, cols], dim=2).flatten(1, 2)  # (b, 2, 2, c, l) -> routes 0, 1, 2, 3


class GroupedSS2D(nn.Module):
    """The four single-route SS2D mixers of an MGM layer, run as one. (B, H, W, C) -> (B, H, W, C).

    Group k (channels ``k·C/4 .. (k+1)·C/4``) has its own SS2D (the official ``mamba_g{k+1}``): in_proj to x and a
    gate z, depthwise conv3x3 -> SiLU on x, a selective scan along route k (row-major, column-major, row-major
    reversed, column-major reversed), out_norm, ``· SiLU(z)``, out_proj. The groups' parameters are stacked along a
    leading group axis (``checkpoint_filter_fn`` stacks the official per-group tensors), so the four groups take one
    batched matmul per projection, one depthwise conv, one route reordering and one selective scan.

    Args:
        dim: channels in and out (a multiple of 4).
        d_state: SSM state size (1 as released).
        ssm_ratio: inner width of each group, ``ssm_ratio · dim / 4``.
        dt_rank: step-size rank; "auto" is ``ceil(dim / 4 / 16)``, as SS2D on a group's width.
        dt_min, dt_max, dt_init_floor: Mamba's step-size initialisation range.
        scan_backend: selective-scan and route backend (None picks per device).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ):
        super().__init__()
        if dim % NUM_GROUPS:
            raise ValueError(
                f"GroupMamba splits channels into {NUM_GROUPS} groups; dim must be a multiple of 4, got {dim}"
            )
        group_dim = dim // NUM_GROUPS
        d_inner = int(ssm_ratio * group_dim)
        self.group_dim, self.d_inner, self.d_state = group_dim, d_inner, d_state
        self.dt_rank = math.ceil(group_dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        g = NUM_GROUPS
        self.in_proj_weight = nn.Parameter(torch.empty(g, 2 * d_inner, group_dim))  # per group: x rows, then z rows
        self.conv2d = nn.Conv2d(g * d_inner, g * d_inner, 3, padding=1, groups=g * d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(g, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(g, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(g, d_inner))
        self.A_logs = nn.Parameter(torch.empty(g * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(g * d_inner))
        # Each group's out_norm: a plain LayerNorm over the group's channels, then the group's own affine.
        self.out_norm = nn.LayerNorm(d_inner, elementwise_affine=False)
        self.out_norm_weight = nn.Parameter(torch.ones(g, d_inner))
        self.out_norm_bias = nn.Parameter(torch.zeros(g, d_inner))
        self.out_proj_weight = nn.Parameter(torch.empty(g, group_dim, d_inner))
        self.act = nn.SiLU()
        self.reset_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """The official init: projections truncated-normal (std 0.02), Mamba's for the SSM (``reset_routed_ssm_``)."""
        nn.init.trunc_normal_(self.in_proj_weight, std=0.02)
        nn.init.trunc_normal_(self.out_proj_weight, std=0.02)
        reset_routed_ssm_(self, dt_min, dt_max, dt_init_floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        g, d, length = NUM_GROUPS, self.d_inner, h * w
        x = x.reshape(b, length, g, self.group_dim).transpose(1, 2)  # (b, g, l, c/g)
        x, z = torch.matmul(x, self.in_proj_weight.transpose(1, 2)).split(d, dim=-1)  # (b, g, l, d) each
        x = self.act(self.conv2d(x.transpose(2, 3).reshape(b, g * d, h, w)))
        xs = route_order(x.view(b, g, d, h, w), backend=self.scan_backend)  # (b, g, d, l): group k along route k
        ys = routed_selective_scan(self, xs)  # (b, g·d, l)
        y = route_unorder(ys.view(b, g, d, length), h, w).transpose(2, 3)  # (b, g, l, d), row-major
        y = self.out_norm(y) * self.out_norm_weight[:, None] + self.out_norm_bias[:, None]
        y = torch.matmul(y * self.act(z), self.out_proj_weight.transpose(1, 2))  # (b, g, l, c/g)
        return y.transpose(1, 2).reshape(b, h, w, c)


class ModulatedGroupMamba(nn.Module):
    """The MGM layer. (B, H, W, C) -> (B, H, W, C).

    ``x = LN(x)``; ``cam = sigmoid(fc2(ReLU(fc1(mean over tokens of x))))``; ``y = GroupedSS2D(x) · skip_scale · x``;
    ``proj(LN(y · cam))`` with the same LayerNorm both times, as released.
    """

    def __init__(self, dim: int, reduction: int = 16, **ssm_kwargs):
        super().__init__()
        if dim < reduction:
            raise ValueError(f"the channel-affinity bottleneck is dim // {reduction} wide; dim must be >= {reduction}")
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim)
        self.ssm = GroupedSS2D(dim, **ssm_kwargs)
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        cam = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((1, 2))))))  # (B, C)
        y = self.ssm(x) * self.skip_scale * x * cam[:, None, None]
        return self.proj(self.norm(y))


class GroupMambaBlock(nn.Module):
    """``x + DP(MGM(x))`` (the MGM normalises inside), then ``x + DP(FFN(LN(x)))`` with PVTv2's FFN. NHWC."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0, **ssm_kwargs):
        super().__init__()
        self.attn = ModulatedGroupMamba(dim, **ssm_kwargs)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        b, h, w, c = x.shape
        y = self.mlp(self.norm2(x).reshape(b, h * w, c), [h, w]).reshape(b, h, w, c)
        return x + self.drop_path(y)


class GroupMambaStem(nn.Module):
    """Conv7x7 s2, conv3x3, conv3x3 (each bias-free, BN, ReLU), conv3x3 s2, LayerNorm. (B, C_in, H, W) ->
    (B, H/4, W/4, dim)."""

    def __init__(self, in_chans: int, hidden_dim: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(),
        )
        self.proj = nn.Conv2d(hidden_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)).permute(0, 2, 3, 1))


class NormedStage(Stage):
    """A ``Stage`` followed by a norm (GroupMamba's LayerNorm after stages 1-3; Identity after stage 4)."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module], norm: nn.Module):
        super().__init__(downsample, blocks)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class ClassBlock(nn.Module):
    """The official ``ClassBlock`` on the class token alone: ``t + LN(MGM(t))``, then ``t + MLP(LN(t))``.
    (B, 1, 1, C) in and out."""

    def __init__(self, dim: int, mlp_ratio: float, **ssm_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ModulatedGroupMamba(dim, **ssm_kwargs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.norm1(self.attn(t))
        return t + self.mlp(self.norm2(t))


POOL_TYPES = ("token", "")


class ClassTokenHead(nn.Module):
    """GroupMamba's classifier on a (B, H, W, C) map.

    ``pool_type="token"`` (as released): the class token, the mean of the tokens, goes through ``ClassBlock`` and a
    LayerNorm, then dropout and the classifier; ``pre_logits`` returns the normed token (B, C). ``pool_type=""``
    leaves the map unpooled: the classifier then maps every position (B, H, W, num_classes), as timm's NHWC heads.
    """

    def __init__(
        self, dim: int, num_classes: int, mlp_ratio: float, pool_type: str = "token", drop_rate: float = 0.0, **ssm
    ):
        super().__init__()
        self.in_features = dim
        self.cls_block = ClassBlock(dim, mlp_ratio, **ssm)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        pool_type = getattr(self, "pool_type", "token") if pool_type is None else pool_type
        if pool_type not in POOL_TYPES:
            raise ValueError(
                f"GroupMamba pools with its class token: global_pool must be 'token' or '', got {pool_type!r}"
            )
        self.pool_type = pool_type
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type:
            x = self.norm(self.cls_block(x.mean((1, 2), keepdim=True))).flatten(1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def _init_official(module: nn.Module) -> None:
    """The official init: Linear truncated-normal (std 0.02), zero bias; Conv2d normal with std sqrt(2 / fan_out)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class GroupMamba(StagedBackbone):
    """GroupMamba backbone and classifier.

    Args:
        in_chans, num_classes: as in timm.
        global_pool: "token" (the official class-token head) or "" (no pooling; per-position logits).
        dims: channels of the four stages (multiples of 4, at least 16).
        depths: blocks per stage.
        mlp_ratios: FFN width ratio per stage (the class block uses the last).
        stem_hidden_dim: width of the stem's three stride-1/2 convs.
        d_state, ssm_ratio: SS2D settings of every group (1 and 1 as released).
        scan_backend: selective-scan and route backend (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and maximum stochastic depth (linear over blocks).
    """

    no_weight_decay_leaves = ("A_logs", "Ds", "dt_projs_bias", "out_norm_weight", "out_norm_bias", "skip_scale")

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        dims: tuple[int, ...] = (64, 128, 348, 448),
        depths: tuple[int, ...] = (3, 4, 9, 3),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        stem_hidden_dim: int = 32,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        scan_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not len(dims) == len(depths) == len(mlp_ratios):
            raise ValueError(
                f"dims, depths and mlp_ratios need one entry per stage, got {len(dims)}, {len(depths)} and "
                f"{len(mlp_ratios)}"
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NHWC"
        self.stem = GroupMambaStem(in_chans, stem_hidden_dim, dims[0])
        ssm = dict(d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        last = len(dims) - 1
        self.stages = nn.Sequential(
            *[
                NormedStage(
                    ConvDownsample(dims[i - 1], dim) if i else None,
                    [GroupMambaBlock(dim, mlp_ratios[i], rate, **ssm) for rate in rates],
                    nn.LayerNorm(dim, eps=1e-6) if i < last else nn.Identity(),
                )
                for i, (dim, rates) in enumerate(zip(dims, stage_drop_path_rates(depths, drop_path_rate)))
            ]
        )
        self.feature_info = [dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}") for i, dim in enumerate(dims)]
        self.norm = nn.Identity()  # the official model normalises the class token, not the stage-4 map
        self.head = ClassTokenHead(dims[-1], num_classes, mlp_ratios[-1], global_pool, drop_rate, **ssm)
        self.apply(_init_official)  # Linear and Conv2d only: the SSM tensors keep Mamba's init


# Official per-group SS2D tensor -> (vizoo GroupedSS2D tensor, how the four groups' tensors are joined).
_GROUP_TENSORS = {
    "in_proj.weight": ("in_proj_weight", "stack"),
    "conv2d.weight": ("conv2d.weight", "cat"),
    "conv2d.bias": ("conv2d.bias", "cat"),
    "x_proj_weight": ("x_proj_weight", "cat"),
    "dt_projs_weight": ("dt_projs_weight", "cat"),
    "dt_projs_bias": ("dt_projs_bias", "cat"),
    "A_logs": ("A_logs", "cat"),
    "Ds": ("Ds", "cat"),
    "out_norm.weight": ("out_norm_weight", "stack"),
    "out_norm.bias": ("out_norm_bias", "stack"),
    "out_proj.weight": ("out_proj_weight", "stack"),
}


def _official_key(key: str) -> str:
    """An official key (groups not yet joined) -> vizoo's."""
    if m := re.match(r"^patch_embed1\.(.*)$", key):
        return f"stem.{m[1]}"
    if m := re.match(r"^patch_embed(\d)\.proj\.(.*)$", key):
        return f"stages.{int(m[1]) - 1}.downsample.conv.{m[2]}"
    if m := re.match(r"^patch_embed(\d)\.norm\.(.*)$", key):
        return f"stages.{int(m[1]) - 1}.downsample.norm.{m[2]}"
    if m := re.match(r"^block(\d)\.(.*)$", key):
        return f"stages.{int(m[1]) - 1}.blocks.{m[2].replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.')}"
    if m := re.match(r"^norm4\.(.*)$", key):
        return f"head.norm.{m[1]}"
    if m := re.match(r"^norm(\d)\.(.*)$", key):
        return f"stages.{int(m[1]) - 1}.norm.{m[2]}"
    if m := re.match(r"^post_network\.0\.(.*)$", key):
        return f"head.cls_block.{m[1]}"
    return key


def _join_groups(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Join each MGM's ``mamba_g1``..``mamba_g4`` tensors into its ``ssm`` (vizoo's stacked ``GroupedSS2D``)."""
    out, groups = {}, {}
    for key, value in state_dict.items():
        m = re.match(r"^(.*)\.mamba_g([1-4])\.(.*)$", key)
        if m and m[3] in _GROUP_TENSORS:
            groups.setdefault((m[1], m[3]), {})[int(m[2])] = value
        else:
            out[key] = value
    for (prefix, leaf), parts in groups.items():
        if sorted(parts) != [1, 2, 3, 4]:  # an incomplete set stays as is: unexpected keys, the joined one missing
            out.update({f"{prefix}.mamba_g{k}.{leaf}": v for k, v in parts.items()})
            continue
        name, join = _GROUP_TENSORS[leaf]
        tensors = [parts[k] for k in range(1, 5)]
        out[f"{prefix}.ssm.{name}"] = torch.stack(tensors) if join == "stack" else torch.cat(tensors)
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: GroupMamba) -> dict[str, torch.Tensor]:
    """Map an official GroupMamba checkpoint (``classification/models/groupmamba.py`` layout; the released files are
    the flat EMA state dict, training checkpoints hold it under ``model_ema`` or ``model``) to vizoo's keys.

    ``patch_embed1`` is the stem, ``patch_embed{i}`` (i > 1) the downsample of stage i, ``block{i}`` / ``norm{i}`` the
    blocks and the LayerNorm of stage i, ``post_network.0`` and ``norm4`` the class-token head. Each MGM's four
    per-group SS2D (``mamba_g1``..``mamba_g4``) are stacked into one ``GroupedSS2D``. ``head`` and ``dist_head`` are
    averaged into one classifier (the official model averages their outputs at eval). Raises ``CheckpointError``
    listing missing and unexpected keys if the result does not fit ``model``.
    """
    for key in ("model_ema", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    state_dict = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state_dict.items()}
    if not any(k.startswith("stages.") for k in state_dict):
        heads = {k: state_dict.pop(k) for k in list(state_dict) if k.split(".")[0] in ("head", "dist_head")}
        state_dict = _join_groups({_official_key(k): v for k, v in state_dict.items()})
        for name in ("weight", "bias"):
            if f"head.{name}" in heads:
                fc = heads.pop(f"head.{name}")
                dist = heads.pop(f"dist_head.{name}", None)
                state_dict[f"head.fc.{name}"] = fc if dist is None else (fc + dist) / 2
        state_dict.update(heads)  # anything else under head / dist_head is reported as unexpected
    return check_converted(state_dict, model)


def _create_groupmamba(variant: str, pretrained: bool = False, **kwargs) -> GroupMamba:
    return build_vizoo_model(GroupMamba, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(hf_name: str = "", **kwargs) -> PaperCfg:
    hub = (
        dict(
            hf_hub_id=f"Abdelrahman-shaker/GroupMamba-{hf_name}",
            hf_hub_filename=f"groupmamba_{hf_name.lower()}_ema.pth",
        )
        if hf_name
        else {}
    )
    return imagenet_cfg(
        "stem.conv.0", "arXiv:2407.13772", "https://github.com/Amshaker/GroupMamba", license="mit", **hub, **kwargs
    )


# Official weights: the HF repos Abdelrahman-shaker/GroupMamba-{Tiny,Small,Base} (MIT), flat EMA state dicts of the
# distilled models. vizoo never downloads them in its tests; load a downloaded file with ``pretrained=True,
# pretrained_cfg_overlay=dict(file=path)``. The official evaluation resizes to 256 and centre-crops 224, bicubic.
# paper_*: Table 1 of the paper (arXiv 2407.13772; params and top-1 also in the README). The released models are
# trained with DeiT hard distillation (RegNetY-160 teacher), and the top-1 is that of the distilled model, the only
# figure the paper gives.
default_cfgs = generate_default_cfgs(
    {
        "groupmamba_tiny.in1k": _cfg("Tiny", paper_params_m=23, paper_gmacs=4.5, paper_top1=83.3),
        "groupmamba_small.in1k": _cfg("Small", paper_params_m=34, paper_gmacs=7.0, paper_top1=83.9),
        "groupmamba_base.in1k": _cfg("Base", paper_params_m=57, paper_gmacs=14.0, paper_top1=84.5),
        "test_groupmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)

# Widths, depths, MLP ratios and stem widths of the official factories; drop_path 0.05 for every variant, as the
# official train.py hard-codes.
_MLP = (8, 8, 4, 4)


@register_model
def groupmamba_tiny(pretrained: bool = False, **kwargs) -> GroupMamba:
    model_args = dict(
        dims=(64, 128, 348, 448), depths=(3, 4, 9, 3), mlp_ratios=_MLP, stem_hidden_dim=32, drop_path_rate=0.05
    )
    return _create_groupmamba("groupmamba_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def groupmamba_small(pretrained: bool = False, **kwargs) -> GroupMamba:
    model_args = dict(
        dims=(64, 128, 348, 512), depths=(3, 4, 16, 3), mlp_ratios=_MLP, stem_hidden_dim=64, drop_path_rate=0.05
    )
    return _create_groupmamba("groupmamba_small", pretrained, **dict(model_args, **kwargs))


@register_model
def groupmamba_base(pretrained: bool = False, **kwargs) -> GroupMamba:
    model_args = dict(
        dims=(96, 192, 424, 512), depths=(3, 6, 21, 3), mlp_ratios=_MLP, stem_hidden_dim=64, drop_path_rate=0.05
    )
    return _create_groupmamba("groupmamba_base", pretrained, **dict(model_args, **kwargs))


@register_model
def test_groupmamba(pretrained: bool = False, **kwargs) -> GroupMamba:
    """A tiny GroupMamba for tests."""
    model_args = dict(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), mlp_ratios=(2, 2, 2, 2), stem_hidden_dim=8)
    return _create_groupmamba("test_groupmamba", pretrained, **dict(model_args, **kwargs))
