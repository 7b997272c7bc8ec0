"""nn.Modules shared by vizoo's families, built on ``vizoo.kernels``."""

from vizoo.layers.linear_attention import (
    MagnitudeAwareLinearAttention,
    MLLALinearAttention,
    NormAttention,
    SoftmaxAttentionRoPE,
    StripAttention,
)
from vizoo.layers.mlla_stem import MllaDownsample, MllaStem
from vizoo.layers.ss2d import SS2D
from vizoo.layers.vmamba_blocks import ConvDownsample, ConvStem, PatchStem, VSSBlock, downsample_layer, stem_layer

__all__ = [
    "MagnitudeAwareLinearAttention",
    "MLLALinearAttention",
    "NormAttention",
    "SoftmaxAttentionRoPE",
    "StripAttention",
    "MllaDownsample",
    "MllaStem",
    "SS2D",
    "ConvDownsample",
    "ConvStem",
    "PatchStem",
    "VSSBlock",
    "downsample_layer",
    "stem_layer",
]
