"""MobileMamba: Lightweight Multi-Receptive Visual Mamba Network.

He et al., CVPR 2025. https://arxiv.org/abs/2411.15941
Official code: https://github.com/lewandofskee/MobileMamba (``model/mobilemamba/mobilemamba.py``; weights load through
``checkpoint_filter_fn``).

A three-stage EfficientViT-style network: a stem of four stride-2 Conv-BN layers (stride 16), then stages at strides
16, 32 and 64 (stages 2 and 3 start with EfficientViT's subsample: residual DWConv/FFN, patch merging, residual
DWConv/FFN). Each block is DWConv -> FFN -> MRFFI -> DWConv -> FFN, each residual, inside one more residual with
stochastic depth. MRFFI splits the channels into a global part (WTE-Mamba: a two-route SS2D with d_state 1 plus a Haar
wavelet branch), a local part (MK-DeConv) and an identity part (see ``vizoo.layers.mobilemamba``). The classifier is
BatchNorm1d + linear on pooled features. ``MobileMamba.fuse()`` folds every BatchNorm for deployment, as the official
``replace_batchnorm`` does before timing.

The README's FLOPs are fvcore's on the unfused model, with the selective scan counted (9·B·L·D·N + B·D·L) and the
norms counted, but not the wavelet branch's depthwise conv (fvcore has no handler for the op that ``padding="same"``
traces to). vizoo's MACs (convolutions, matmuls and the scan) come within 1% of them. The parameter column also
counts the Haar filters, which the official code stores as frozen parameters and vizoo computes as constants.

ImageNet-1k top-1 of the released (non-distilled) weights, README table: T2 71.5, T4 76.1, S6 78.0, B1 79.9, B2 81.6,
B4 82.5. For T2 the README's own test command prints 73.638 and the training log's best EMA top-1 is 73.634: the table's
71.5 looks stale, but it is the published number and the one recorded here.

The model is NCHW throughout; ``forward_features`` returns the last stage's map (no norm: the BN is in the head). H and
W must be multiples of ``input_multiple``: 64 (the total stride) by default, so every stage output is exactly at its
stride; S6 is trained at 224 = 3.5·64 and accepts multiples of 32, its last stage then rounding up (a 7x7 map
becomes 4x4), as in the official model.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.efficientvit_msra import PatchEmbedding

from vizoo.backbones._base import StagedBackbone, build_stages
from vizoo.backbones._builder import PaperCfg, build_vizoo_model, check_converted, imagenet_cfg, init_trunc_normal
from vizoo.layers.fusion import batchnorm_scale_shift, fuse_bn_linear, fuse_conv_norms
from vizoo.layers.mobilemamba import BatchNormClassifierHead, MobileMambaBlock, subsample
from vizoo.utils.checkpoint import CheckpointError

__all__ = ["MobileMamba"]


class MobileMamba(StagedBackbone):
    """MobileMamba backbone and classifier.

    Args:
        in_chans, num_classes, global_pool: as in timm.
        dims: channels of the three stages.
        depths: blocks per stage.
        global_ratios, local_ratios: per stage, the share of channels given to WTE-Mamba and to MK-DeConv.
        kernel_sizes: per stage, the depthwise kernel of MK-DeConv and of the wavelet branch.
        ssm_ratio: SS2D inner width ratio (2 in every released model).
        scan_backend: selective-scan backend (None picks per device).
        drop_rate, drop_path_rate: classifier dropout and maximum stochastic depth (linear over blocks).
        input_multiple: H and W must be multiples of it (64: every stage exact; 32 lets the last stage round up).
    """

    # The official optimizer decays every parameter of 2+ dims (A_logs and dt_projs_bias included) and none of the
    # 1-D ones, which is timm's default grouping: nothing needs listing.
    no_weight_decay_leaves = ()
    output_fmt = "NCHW"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        dims: tuple[int, ...] = (192, 384, 448),
        depths: tuple[int, ...] = (1, 2, 2),
        global_ratios: tuple[float, ...] = (0.8, 0.7, 0.6),
        local_ratios: tuple[float, ...] = (0.2, 0.2, 0.3),
        kernel_sizes: tuple[int, ...] = (7, 5, 3),
        ssm_ratio: float = 2.0,
        scan_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        input_multiple: int = 64,
    ):
        super().__init__()
        per_stage = (dims, depths, global_ratios, local_ratios, kernel_sizes)
        if len({len(v) for v in per_stage}) != 1:
            raise ValueError(
                f"dims, depths, global_ratios, local_ratios and kernel_sizes need one entry per stage, got {per_stage}"
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.input_multiple = input_multiple
        self.stem = PatchEmbedding(in_chans, dims[0])
        self.stages, self.feature_info = build_stages(
            dims,
            depths,
            drop_path_rate,
            subsample,
            lambda i, dim, drop_path: MobileMambaBlock(
                dim,
                drop_path=drop_path,
                global_ratio=global_ratios[i],
                local_ratio=local_ratios[i],
                kernel_size=kernel_sizes[i],
                ssm_ratio=ssm_ratio,
                scan_backend=scan_backend,
            ),
            first_reduction=16,
        )
        self.norm = nn.Identity()
        self.head = BatchNormClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.head.apply(init_trunc_normal)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """As ``StagedBackbone``'s; a pruned head also loses its BatchNorm, which a feature extractor never runs (its
        parameters would get no gradient, which DDP rejects)."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head:
            self.head.norm = nn.Identity()
        return take_indices

    @torch.no_grad()
    def fuse(self) -> MobileMamba:
        """Fold every BatchNorm, in place, for deployment (eval outputs unchanged); returns the model in eval mode.

        Each Conv-BN pair becomes one conv with bias, and the head's BatchNorm1d goes into its linear layer when the
        model has one (with no classifier it stays: it is then the last op of ``forward_head``).
        """
        self.eval()
        fuse_conv_norms(self)
        if isinstance(self.head.fc, nn.Linear):
            self.head.fc = fuse_bn_linear(self.head.norm, self.head.fc)
            self.head.norm = nn.Identity()
        return self


# Official module path -> vizoo's, applied in order after the stage/block renumbering.
_RENAMES = [
    (r"\.c\.(weight)$", r".conv.\1"),  # Conv2d_BN's conv (timm's ConvNorm calls it ``conv``)
    (r"\.mixer\.m\.attn\.", ".mixer.m."),  # the official MobileMambaBlockWindow wrapper holds nothing else
    (r"\.proj\.1\.", ".proj."),  # Sequential(ReLU, Conv2d_BN): the ReLU is ``act`` here
    (r"\.local_op\.dwconv3x3\.", ".local_op.dw.conv."),
    (r"\.local_op\.bn1\.", ".local_op.dw.bn."),
    (r"\.local_op\.dwconv1x1\.", ".local_op.dw1x1.conv."),
    (r"\.local_op\.bn2\.", ".local_op.dw1x1.bn."),
    (r"\.base_scale\.weight$", ".base_scale"),
    (r"\.wavelet_convs\.0\.", ".wavelet_conv."),
    (r"\.wavelet_scale\.0\.weight$", ".wavelet_scale"),
    (r"^head\.bn\.", "head.norm."),
    (r"^head\.l\.", "head.fc."),
]
_SUBSAMPLE_PARTS = ("res1", "patchmerge", "res2")  # official blocks{2,3}.{0,1,2}
_WAVELET_FILTER = re.compile(r"^(.*\.global_op)\.(wt_filter|iwt_filter)$")


def _rename_official(key: str) -> str:
    if m := re.match(r"^patch_embed\.(\d)\.(.*)$", key):
        key = f"stem.conv{int(m[1]) // 2 + 1}.{m[2]}"
    elif m := re.match(r"^blocks(\d)\.(\d+)\.(.*)$", key):
        stage, index, rest = int(m[1]) - 1, int(m[2]), m[3]
        if stage == 0:
            key = f"stages.0.blocks.{index}.{rest}"
        elif index < len(_SUBSAMPLE_PARTS):
            key = f"stages.{stage}.downsample.{_SUBSAMPLE_PARTS[index]}.{rest}"
        else:
            key = f"stages.{stage}.blocks.{index - len(_SUBSAMPLE_PARTS)}.{rest}"
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _fold_distillation_head(state_dict: dict[str, torch.Tensor], eps: float) -> None:
    """Replace ``head`` and ``head_dist`` (each BatchNorm1d + linear) by their eval-time mean, in place.

    Each head is folded to one linear layer, the two are averaged into ``head.l`` and ``head.bn`` becomes an exact
    identity (running variance 1 - eps), so the loaded model returns the official distilled model's eval output.
    """
    state_dict.pop("head_dist.bn.num_batches_tracked", None)
    folded = []
    for prefix in ("head.", "head_dist."):
        bn = [state_dict.pop(f"{prefix}bn.{name}") for name in ("weight", "bias", "running_mean", "running_var")]
        scale, shift = batchnorm_scale_shift(*bn, eps)
        weight, bias = state_dict.pop(f"{prefix}l.weight"), state_dict.pop(f"{prefix}l.bias")
        folded.append((weight * scale, bias + weight @ shift))
    state_dict["head.l.weight"] = (folded[0][0] + folded[1][0]) / 2
    state_dict["head.l.bias"] = (folded[0][1] + folded[1][1]) / 2
    channels = state_dict["head.l.weight"].shape[1]
    state_dict["head.bn.weight"] = torch.ones(channels)
    state_dict["head.bn.bias"] = torch.zeros(channels)
    state_dict["head.bn.running_mean"] = torch.zeros(channels)
    state_dict["head.bn.running_var"] = torch.full((channels,), 1.0 - eps)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MobileMamba) -> dict[str, torch.Tensor]:
    """Map an official MobileMamba checkpoint (``model/mobilemamba/mobilemamba.py`` layout) to vizoo's keys.

    Official ``blocks1`` is stage 0; ``blocks2``/``blocks3`` start with the subsample's three parts (``.0``, ``.1``,
    ``.2``), then the blocks. ``patch_embed.{0,2,4,6}`` are ``stem.conv{1..4}``; ``Conv2d_BN.c`` is ``ConvNorm.conv``.
    The wavelet filters the official code stores as frozen parameters (``wt_filter``, ``iwt_filter``) are checked to
    be the db1 (Haar) filters and dropped: vizoo keeps them as constants. A distillation head (``head_dist``, absent
    from the released weights, which were trained with ``distillation=False``) is averaged into the classifier as the
    official model does with the two outputs at eval (``_fold_distillation_head``).
    Raises ``CheckpointError`` listing missing and unexpected keys if the result does not fit ``model``.
    """
    state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    if any(k.startswith("stages.") for k in state_dict):
        return check_converted(state_dict, model)
    if "head_dist.l.weight" in state_dict:
        _fold_distillation_head(state_dict, model.head.norm.eps)
    buffers = dict(model.named_buffers())
    out = {}
    for key, value in state_dict.items():
        if m := _WAVELET_FILTER.match(key):
            # a filter bank of another shape comes with mismatched weights, which check_converted lists
            filters = buffers.get(_rename_official(m[1]) + ".wavelet_filters")
            if filters is not None and value.shape == filters.shape and not torch.allclose(value.to(filters), filters):
                raise CheckpointError(
                    f"checkpoint {key} is not the db1 (Haar) filter bank that {model.model_name} computes; the file is "
                    "corrupt or not a MobileMamba checkpoint"
                )
            continue
        out[_rename_official(key)] = value
    return check_converted(out, model)


def _create_mobilemamba(variant: str, pretrained: bool = False, **kwargs) -> MobileMamba:
    return build_vizoo_model(
        MobileMamba,
        variant,
        pretrained,
        checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


def _cfg(size: int, drive: str = "", multiple: int = 64, **kwargs) -> PaperCfg:
    """The official test transform: resize to size / 0.875 (bicubic), centre crop ``size``. ``multiple``: the
    model's ``input_multiple``, the smallest input it takes."""
    pool = -(-size // 64)
    return imagenet_cfg(
        "stem.conv1.conv",
        "arXiv:2411.15941",
        "https://github.com/lewandofskee/MobileMamba",
        license="mit",
        input_size=(3, size, size),
        min_input_size=(3, multiple, multiple),
        pool_size=(pool, pool),
        manual_url=f"https://drive.google.com/file/d/{drive}/view" if drive else None,
        **kwargs,
    )


# Official weights: Google Drive files linked from the README's table, which no URL can fetch: pretrained=True names
# the file and how to load it. ``.in1k`` are the plain models (the paper's figures); ``.dist_in1k`` the README's
# models marked †, trained with knowledge distillation (their distillation head is folded into the classifier on
# loading, as the official model averages the two at eval).
# paper_*: the table of the official README, each at the variant's resolution.
_T2, _T4 = dict(paper_params_m=8.8, paper_gmacs=0.255), dict(paper_params_m=14.2, paper_gmacs=0.413)
_S6, _B1 = dict(paper_params_m=15.0, paper_gmacs=0.652), dict(paper_params_m=17.1, paper_gmacs=1.080)
_B2, _B4 = dict(paper_params_m=17.1, paper_gmacs=2.427), dict(paper_params_m=17.1, paper_gmacs=4.313)
default_cfgs = generate_default_cfgs(
    {
        "mobilemamba_t2.in1k": _cfg(192, "1LXh5wjVEUu5Kj1foclC9zmlKsy7JpMQ-", **_T2, paper_top1=71.5),
        "mobilemamba_t2.dist_in1k": _cfg(192, "14UUeEeN62a1jo5qit-m0yChQnNU8JWQG", **_T2, paper_top1=76.9),
        "mobilemamba_t4.in1k": _cfg(192, "17-5Q93_cEhBYMDzWTq4sDcc4_c_ezwpd", **_T4, paper_top1=76.1),
        "mobilemamba_t4.dist_in1k": _cfg(192, "12e1RKJEYDWVjOZuQLycjOUkA5PqCUnwu", **_T4, paper_top1=78.9),
        "mobilemamba_s6.in1k": _cfg(224, "13en_zNB2wuHmnHKZMUQDe4KizlaTCHbP", 32, **_S6, paper_top1=78.0),
        "mobilemamba_s6.dist_in1k": _cfg(224, "1ujVeWpoICjioRF0aB7PD1fadM4PGFRfl", 32, **_S6, paper_top1=80.7),
        "mobilemamba_b1.in1k": _cfg(256, "1ODO1XM2luMfczbDLJxHrEl-ie7yUscAC", **_B1, paper_top1=79.9),
        "mobilemamba_b1.dist_in1k": _cfg(256, "15rBhYky_f7jNSknXujuwQESaIkiTBAR1", **_B1, paper_top1=82.2),
        "mobilemamba_b2.in1k": _cfg(384, "1tJJZqeP09D_IAKKFuQtJQOYm4eNGjr1r", **_B2, paper_top1=81.6),
        "mobilemamba_b2.dist_in1k": _cfg(384, "1KuleL6Fi84zkjIhkRFbR4lqGa2iu6bOp", **_B2, paper_top1=83.3),
        "mobilemamba_b4.in1k": _cfg(512, "1MiGLHSldK2JpbQEe-7VlmFsaCdugDnYR", **_B4, paper_top1=82.5),
        "mobilemamba_b4.dist_in1k": _cfg(512, "1KevdesGm8Pb4fEbgZ5JY4FMy9IQgYbiZ", **_B4, paper_top1=83.6),
        "test_mobilemamba.untrained": _cfg(64, crop_pct=1.0),
    }
)

# The official configs (``configs/mobilemamba/*.py`` and the model file's CFG_MobileMamba_*): all use global ratios
# (0.8, 0.7, 0.6), local ratios (0.2, 0.2, 0.3), kernels (7, 5, 3) and ssm_ratio 2, the defaults here.
_B = dict(dims=(200, 376, 448), depths=(2, 3, 2), drop_path_rate=0.03)  # B1, B2 and B4 differ in resolution only


@register_model
def mobilemamba_t2(pretrained: bool = False, **kwargs) -> MobileMamba:
    model_args = dict(dims=(144, 272, 368), depths=(1, 2, 2))
    return _create_mobilemamba("mobilemamba_t2", pretrained, **dict(model_args, **kwargs))


@register_model
def mobilemamba_t4(pretrained: bool = False, **kwargs) -> MobileMamba:
    model_args = dict(dims=(176, 368, 448), depths=(1, 2, 2))
    return _create_mobilemamba("mobilemamba_t4", pretrained, **dict(model_args, **kwargs))


@register_model
def mobilemamba_s6(pretrained: bool = False, **kwargs) -> MobileMamba:
    model_args = dict(dims=(192, 384, 448), depths=(1, 2, 2), input_multiple=32)
    return _create_mobilemamba("mobilemamba_s6", pretrained, **dict(model_args, **kwargs))


@register_model
def mobilemamba_b1(pretrained: bool = False, **kwargs) -> MobileMamba:
    return _create_mobilemamba("mobilemamba_b1", pretrained, **dict(_B, **kwargs))


@register_model
def mobilemamba_b2(pretrained: bool = False, **kwargs) -> MobileMamba:
    return _create_mobilemamba("mobilemamba_b2", pretrained, **dict(_B, **kwargs))


@register_model
def mobilemamba_b4(pretrained: bool = False, **kwargs) -> MobileMamba:
    return _create_mobilemamba("mobilemamba_b4", pretrained, **dict(_B, **kwargs))


@register_model
def test_mobilemamba(pretrained: bool = False, **kwargs) -> MobileMamba:
    """A tiny MobileMamba for tests, with all three MRFFI parts in every stage."""
    model_args = dict(dims=(48, 64, 80), depths=(1, 1, 1))
    return _create_mobilemamba("test_mobilemamba", pretrained, **dict(model_args, **kwargs))
