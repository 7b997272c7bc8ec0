"""Rewrites that let mobile accelerators (Android NNAPI, Apple CoreML) take the whole graph.

``vizoo export --mobile`` applies them to a copy of the model before export:
- exact GELU (ONNX ``Erf``, which NNAPI and CoreML NeuralNetwork lack) becomes GELU's tanh approximation;
- LayerNorm (``LayerNormalization``, which NNAPI and CoreML NeuralNetwork lack) becomes ReduceMean/Sub/Mul/Sqrt/Div;
- RMSNorm (exported by torch with a ``Reciprocal``, which NNAPI lacks) becomes ReduceMean/Mul/Sqrt/Div.
The norm rewrites are exact; the tanh GELU differs from the exact one by at most about 5e-4 per activation, so a
mobile graph matches the original model to about 1e-3 rather than 1e-6. The scan itself needs no rewrite: the torch
kernels already export as Mul/Add/Exp/MatMul on tensors of rank <= 5, with no CumSum, Loop, Scan, Einsum or Pad.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers import LayerNorm, LayerNorm2d

__all__ = ["PrimitiveLayerNorm", "mobile_friendly"]


class PrimitiveLayerNorm(nn.Module):
    """LayerNorm, or RMSNorm (``nn.RMSNorm``: no centring, no bias), over the last dim (``channel_dim=-1``) or over
    dim 1 of NCHW maps, from reductions and arithmetic."""

    def __init__(self, norm: nn.LayerNorm | nn.RMSNorm, channel_dim: int = -1):
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"PrimitiveLayerNorm handles one normalised dim, got {norm.normalized_shape}")
        self.rms = isinstance(norm, nn.RMSNorm)
        self.weight, self.bias = norm.weight, getattr(norm, "bias", None)
        self.eps = torch.finfo(torch.float32).eps if norm.eps is None else norm.eps  # nn.RMSNorm's default
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rms:
            x = x - x.mean(self.channel_dim, keepdim=True)
        x = x / torch.sqrt((x * x).mean(self.channel_dim, keepdim=True) + self.eps)
        if self.weight is None:
            return x
        shape = (-1,) + (1,) * (x.dim() - 2) if self.channel_dim == 1 else (-1,)
        x = x * self.weight.view(shape)
        return x + self.bias.view(shape) if self.bias is not None else x


def mobile_friendly(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with exact GELU as tanh GELU and LayerNorms / RMSNorms as primitive ops."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(parent, name, nn.GELU(approximate="tanh"))
            elif type(child) in (nn.LayerNorm, LayerNorm, nn.RMSNorm):
                setattr(parent, name, PrimitiveLayerNorm(child))
            elif type(child) is LayerNorm2d:
                setattr(parent, name, PrimitiveLayerNorm(child, channel_dim=1))
    return model
