"""Check vizoo's GroupMamba against the official model (Amshaker/GroupMamba) on the CPU, at fp32.

The official model is built from its own source (``classification/models/{groupmamba,ss2d,csms6s}.py``) with random
weights, every parameter and BatchNorm statistic then moved off its init, and its state dict is loaded into vizoo's
model through ``checkpoint_filter_fn`` (strictly). Both models classify the same random images in eval mode and the
largest absolute difference of the logits is printed; the check fails above ``--tol``.

The official code needs the CUDA extension ``selective_scan_cuda_core`` (its ``SelectiveScanCore`` calls
``selective_scan_cuda_core.fwd``). This tool puts a module of that name in ``sys.modules`` whose ``fwd`` runs the
official pure-PyTorch ``selective_scan_ref`` (read from ``kernels/selective_scan/test_selective_scan.py``, the function
alone: that file's module body imports the CUDA extensions). Nothing else of the official code is replaced. The
official code also needs ``einops``.

    git clone https://github.com/Amshaker/GroupMamba
    python tools/check_official_groupmamba.py --source GroupMamba --model groupmamba_tiny
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from functools import partial
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # official_check, beside this file

import official_check as oc  # noqa: E402

from vizoo.backbones.groupmamba import checkpoint_filter_fn  # noqa: E402

# The official factories' arguments (classification/models/groupmamba.py); test_groupmamba is vizoo's tiny variant.
OFFICIAL_ARGS = {
    "groupmamba_tiny": dict(stem_hidden_dim=32, embed_dims=[64, 128, 348, 448], depths=[3, 4, 9, 3]),
    "groupmamba_small": dict(stem_hidden_dim=64, embed_dims=[64, 128, 348, 512], depths=[3, 4, 16, 3]),
    "groupmamba_base": dict(stem_hidden_dim=64, embed_dims=[96, 192, 424, 512], depths=[3, 6, 21, 3]),
    "test_groupmamba": dict(stem_hidden_dim=8, embed_dims=[16, 32, 48, 64], depths=[1, 1, 2, 1], mlp_ratios=[2] * 4),
}


def import_official(source: Path) -> types.ModuleType:
    """The official ``groupmamba`` module, with ``selective_scan_cuda_core`` served by the reference scan and timm's
    ``register_model`` disabled while it imports (its model names would replace vizoo's in timm's registry)."""
    from einops import rearrange, repeat

    ref = oc.function_from_source(
        source,
        "kernels/selective_scan/test_selective_scan.py",
        "selective_scan_ref",
        dict(torch=torch, F=F, rearrange=rearrange, repeat=repeat),
    )

    def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows):
        out = ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
        return out, None

    oc.stub_module("selective_scan_cuda_core", fwd=fwd)
    sys.path.insert(0, str(source / "classification" / "models"))
    registry = importlib.import_module("timm.models.registry")
    register = registry.register_model
    registry.register_model = lambda fn: fn
    try:
        return importlib.import_module("groupmamba")
    finally:
        registry.register_model = register


def check(source: Path, name: str, img_size: int, batch: int = 2, seed: int = 0) -> float:
    """Max |official - vizoo| of the eval logits of ``name`` on ``batch`` random images of ``img_size``²."""
    official_module = import_official(source)
    torch.manual_seed(seed)
    args = dict(dict(mlp_ratios=[8, 8, 4, 4], norm_layer=partial(nn.LayerNorm, eps=1e-6)), **OFFICIAL_ARGS[name])
    official = oc.perturb_(official_module.GroupMamba(**args).eval(), seed)
    model = timm.create_model(name).eval()
    model.load_state_dict(checkpoint_filter_fn(official.state_dict(), model), strict=True)
    return oc.max_difference(model, official, [(img_size, img_size)], seed=seed + 1, batch=batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="a checkout of github.com/Amshaker/GroupMamba")
    parser.add_argument("--model", default="groupmamba_tiny", choices=sorted(OFFICIAL_ARGS))
    parser.add_argument("--img-size", type=int, default=224, help="input height and width (a multiple of 32)")
    parser.add_argument("--tol", type=float, default=1e-4, help="largest allowed max abs difference of the logits")
    args = parser.parse_args(argv)
    if not (args.source / "classification" / "models" / "groupmamba.py").is_file():
        parser.error(f"{args.source} is not a GroupMamba checkout (no classification/models/groupmamba.py)")
    return oc.report(
        [args.model],
        lambda name: f"{name} vs official GroupMamba",
        lambda name: check(args.source, name, args.img_size),
        args.tol,
    )


if __name__ == "__main__":
    sys.exit(main())
