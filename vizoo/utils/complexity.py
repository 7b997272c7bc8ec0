"""Parameter and multiply-accumulate (MAC) counts, counted the way the papers' tables count them.

MACs are ``torch.utils.flop_counter`` FLOPs / 2 (matmuls, convolutions, attention) plus the MACs that vizoo kernels
report for themselves (``vizoo.kernels.count_kernel_macs``; the selective scan counts 9·B·L·D·N as in VMamba).
Elementwise ops and norms are not counted, as in fvcore, which the papers use.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from vizoo.kernels import count_kernel_macs


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: torch.nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """MACs of one forward pass on a single image of ``input_size`` (C, H, W)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with FlopCounterMode(display=False) as flops, count_kernel_macs() as kernel_macs:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return flops.get_total_flops() // 2 + sum(kernel_macs.values())
