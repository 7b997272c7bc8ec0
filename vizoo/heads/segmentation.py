"""Semantic segmentation heads and the model that joins a backbone to one.

- ``UperNetHead``: pyramid pooling on the coarsest map, then an FPN whose levels are fused at the finest stride.
  Xiao et al., "Unified Perceptual Parsing for Scene Understanding", https://arxiv.org/abs/1807.10221
- ``MLPHead``: SegFormer's all-MLP decoder (per-level 1x1 projection, upsample, concatenate, fuse).
  Xie et al., "SegFormer", https://arxiv.org/abs/2105.15203
- ``SemanticFPNHead``: FPN, then per-level conv + upsample stages summed at the finest stride.
  Kirillov et al., "Panoptic Feature Pyramid Networks", https://arxiv.org/abs/1901.02446

Every head maps a list of NCHW maps (finest first) to (B, num_classes, H / r_0, W / r_0) logits; ``Segmentor``
upsamples them to the input's height and width.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork

from .features import FeatureBackbone

__all__ = ["MLPHead", "SEG_HEADS", "SemanticFPNHead", "Segmentor", "UperNetHead", "create_segmentor"]


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _cba(in_ch: int, out_ch: int, kernel_size: int = 3) -> Conv2dNormActivation:
    """Conv -> BatchNorm -> ReLU, bias-free conv."""
    return Conv2dNormActivation(in_ch, out_ch, kernel_size, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU)


class _Classifier(nn.Sequential):
    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: (B, C, h, w) -> (B, C + len(scales) * channels, h, w)."""

    def __init__(self, in_channels: int, channels: int, scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _cba(in_channels, channels, 1)) for s in self.scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [_resize(branch(x), x.shape[-2:]) for branch in self.branches], dim=1)


class UperNetHead(nn.Module):
    """UperNet: PPM on the last map, FPN top-down over all maps, fuse at the finest stride -> class logits."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int = 128,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.bottleneck = _cba(in_channels[-1] + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(_cba(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(_cba(channels, channels) for _ in in_channels[:-1])
        self.fuse = _cba(len(in_channels) * channels, channels)
        self.classifier = _Classifier(channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[(B, in_channels[i], h_i, w_i)] finest first -> (B, num_classes, h_0, w_0)."""
        laterals = [conv(f) for conv, f in zip(self.lateral, features[:-1])]
        laterals.append(self.bottleneck(self.ppm(features[-1])))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(fused)


class MLPHead(nn.Module):
    """SegFormer's all-MLP decoder: 1x1 projection per level, upsample to the finest, concatenate, 1x1 fuse."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 128, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = _cba(len(in_channels) * channels, channels, 1)
        self.classifier = _Classifier(channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[(B, in_channels[i], h_i, w_i)] finest first -> (B, num_classes, h_0, w_0)."""
        size = features[0].shape[-2:]
        projected = [
            proj(f) if i == 0 else _resize(proj(f), size) for i, (proj, f) in enumerate(zip(self.proj, features))
        ]
        return self.classifier(self.fuse(torch.cat(projected, dim=1)))


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: FPN, then per level log2(r_i / r_0) conv+2x-upsample stages, summed."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        reductions: list[int] | None = None,
        fpn_channels: int = 128,
        channels: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        reductions = reductions or [2**i for i in range(len(in_channels))]
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        self.scale_heads = nn.ModuleList()
        self.upsample = []
        for r in reductions:
            steps = max(1, round(math.log2(r / reductions[0])))
            self.upsample.append(r > reductions[0])
            self.scale_heads.append(
                nn.Sequential(*[_cba(fpn_channels if k == 0 else channels, channels) for k in range(steps)])
            )
        self.classifier = _Classifier(channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[(B, in_channels[i], h_i, w_i)] finest first -> (B, num_classes, h_0, w_0)."""
        pyramid = list(self.fpn({str(i): f for i, f in enumerate(features)}).values())
        size = pyramid[0].shape[-2:]
        out = None
        for head, x, upsample in zip(self.scale_heads, pyramid, self.upsample):
            for layer in head:
                x = layer(x)
                if upsample:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if x.shape[-2:] != size:
                x = _resize(x, size)
            out = x if out is None else out + x
        return self.classifier(out)


SEG_HEADS = {"upernet": UperNetHead, "mlp": MLPHead, "fpn": SemanticFPNHead}
"""The segmentation heads by the name :func:`create_segmentor` takes as ``head``."""


class Segmentor(nn.Module):
    """Backbone features -> head -> logits upsampled to the input: (B, C_in, H, W) -> (B, num_classes, H, W)."""

    def __init__(self, backbone: FeatureBackbone, head: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.in_chans = backbone.in_chans
        self.pretrained_cfg = dict(backbone.pretrained_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes, H, W) logits."""
        return _resize(self.head(self.backbone(x)), x.shape[-2:])

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        leaves = self.backbone.no_weight_decay_leaves()
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in leaves}


def create_segmentor(
    backbone: str,
    head: str = "upernet",
    num_classes: int = 2,
    out_indices: tuple[int, ...] | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
    channels: int = 128,
    backbone_kwargs: dict | None = None,
    **head_kwargs,
) -> Segmentor:
    """A segmentor: ``backbone`` (a vizoo or timm model name with ``features_only``) + ``head`` ("upernet", "mlp"
    or "fpn") with ``channels`` decoder channels; ``out_indices`` None: the backbone's last four feature levels. Output
    (B, num_classes, H, W) logits for a (B, C_in, H, W) input.
    """
    if head not in SEG_HEADS:
        raise ValueError(f"unknown segmentation head {head!r}; choose one of {', '.join(SEG_HEADS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (background counts as a class), got {num_classes!r}")
    architecture = dict(
        builder="segmentor", backbone=backbone, head=head, num_classes=num_classes, out_indices=out_indices,
        in_chans=in_chans, channels=channels, backbone_kwargs=backbone_kwargs, **head_kwargs,
    )  # fmt: skip
    body = FeatureBackbone(backbone, out_indices, pretrained=pretrained, in_chans=in_chans, **(backbone_kwargs or {}))
    head_cls = SEG_HEADS[head]
    if head == "fpn":
        head_kwargs.setdefault("reductions", body.reductions)
        decoder = head_cls(body.channels, num_classes, fpn_channels=channels, **head_kwargs)
    else:
        decoder = head_cls(body.channels, num_classes, channels=channels, **head_kwargs)
    segmentor = Segmentor(body, decoder, num_classes)
    # what fine-tuning checkpoints keep, to rebuild the model (vizoo.train.finetune.load_finetuned)
    if isinstance(backbone, str):
        segmentor.architecture = architecture
    return segmentor
