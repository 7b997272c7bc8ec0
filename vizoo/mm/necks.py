"""``TransposedConvFPN``: mmdet's FPN with finer output levels made by transposed convolutions, for backbones whose
finest feature map is coarser than the detector's finest stride (MobileMamba: stride 16; Mask R-CNN wants 4).

It is the neck of MobileMamba's official detectors (their ``EfficientViTFPN``, from EfficientViT), written here on top
of mmdet's ``FPN``: the FPN is built for the backbone's own levels, and each extra level is a 2x2 stride-2 transposed
conv of the previous finest lateral (after the top-down sum, before its 3x3 output conv) followed by its own 3x3 conv.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.necks import FPN

__all__ = ["TransposedConvFPN"]


class TransposedConvFPN(FPN):
    """FPN whose ``num_outs`` outputs are ``num_extra_trans_convs`` finer levels (finest first) and then mmdet's FPN
    outputs for the backbone levels (plus its max-pool or conv levels on top, as FPN's ``add_extra_convs`` says).

    Inputs: one map per backbone level, ``in_channels[i]`` channels at stride s_i. Outputs: ``num_outs`` maps of
    ``out_channels``, at strides s_0 / 2^k, ..., s_0 / 2, s_0, s_1, ...
    """

    def __init__(
        self, in_channels: list[int], out_channels: int, num_outs: int, num_extra_trans_convs: int = 1, **kwargs
    ):
        if not 0 < num_extra_trans_convs < num_outs:
            raise ValueError(f"num_extra_trans_convs must be in 1..num_outs-1, got {num_extra_trans_convs}")
        super().__init__(in_channels, out_channels, num_outs - num_extra_trans_convs, **kwargs)  # FPN's own levels
        norm_cfg = None if kwargs.get("no_norm_on_lateral") else kwargs.get("norm_cfg")
        conv_cfg, act_cfg = kwargs.get("conv_cfg"), kwargs.get("act_cfg")
        self.trans_convs = nn.ModuleList(
            ConvModule(
                out_channels,
                out_channels,
                2,
                stride=2,
                conv_cfg=dict(type="deconv"),
                norm_cfg=norm_cfg,
                act_cfg=act_cfg,
                inplace=False,
            )
            for _ in range(num_extra_trans_convs)
        )
        self.trans_fpn_convs = nn.ModuleList(
            ConvModule(
                out_channels,
                out_channels,
                3,
                padding=1,
                conv_cfg=conv_cfg,
                norm_cfg=kwargs.get("norm_cfg"),
                act_cfg=act_cfg,
                inplace=False,
            )
            for _ in range(num_extra_trans_convs)
        )
        # The finest lateral after the top-down sum is the input of FPN's first output conv: keep it on the way.
        self._finest_lateral: torch.Tensor | None = None
        self.fpn_convs[0].register_forward_pre_hook(self._keep_finest_lateral)

    def _keep_finest_lateral(self, module: nn.Module, args: tuple) -> None:
        self._finest_lateral = args[0]

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        outs = super().forward(inputs)
        lateral, self._finest_lateral = self._finest_lateral, None
        laterals = []  # finest first
        for trans_conv in self.trans_convs:
            lateral = trans_conv(lateral)
            laterals.insert(0, lateral)
        finer = [fpn_conv(x) for fpn_conv, x in zip(self.trans_fpn_convs, laterals)]
        return tuple(finer) + tuple(outs)
