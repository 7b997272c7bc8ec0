"""Check vizoo's Vision-RWKV against the official model: same weights, same logits (fp32, CPU).

For each variant the official backbone (OpenGVLab/Vision-RWKV
``classification/mmcls_custom/models/backbones/vrwkv.py``, class ``VRWKV``, built with the arguments of the official
config ``classification/configs/vrwkv/vrwkv_{tiny,small,base}_*.py``) is put in an mmcls-style classifier (backbone,
global average pooling, ``head.fc`` Linear), every parameter is perturbed (so that norms, LayerScale, the position
embedding and decay/first/μ are off their init), and its ``state_dict`` is saved as the released ``.pth`` files are
(under ``state_dict``, beside ``meta``). vizoo's model loads it through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` (``checkpoint_filter_fn``,
strict). Both run on the same random images at 224² and at 192x288 (a non-square grid: the position embedding is
resampled and T = 216); the largest absolute logit difference must be at most ``--tol``.

The official module imports mmcv 1.x / mmcls 0.x and JIT-builds a CUDA kernel when imported. This script loads it
with these stand-ins in ``sys.modules``, and nothing else changed:
  - ``mmcv.runner.base_module`` (gone in mmcv 2): ``BaseModule`` and ``ModuleList`` of mmengine, their successors;
    ``mmcv.cnn.bricks.transformer.PatchEmbed`` is the installed mmcv's own (same 'corner' adaptive padding);
  - ``mmcls.models.builder.BACKBONES``: an mmengine ``Registry``; ``mmcls.models.backbones.base_backbone.BaseBackbone``:
    an mmengine ``BaseModule``; ``mmcls.models.utils.resize_pos_embed``: mmcls 0.25's function, written out below
    (``F.interpolate(..., align_corners=False)``, no antialiasing);
  - ``mmcls_custom.models.utils.DropPath``: the official ``classification/mmcls_custom/models/utils/drop.py``;
  - ``torch.utils.cpp_extension.load`` returns an empty namespace while the module is imported (nothing is compiled),
    and the module's ``RUN_CUDA(w, u, k, v)`` (which moves the tensors to CUDA and calls ``bi_wkv_forward`` of the
    ``cuda_new/bi_wkv_kernel.cu`` kernel) is replaced by ``bi_wkv_direct`` below: the direct O(T²) sum of the
    kernel's definition, y_t = [Σ_{i≠t} e^{-(|t-i|-1)w + k_i} v_i + e^{u + k_t} v_t] / [same without v], computed
    against the largest exponent with the kernel's EPS (1e-6) added to the scaled denominator.
vizoo's side runs its own ``vizoo.kernels.bi_wkv``.

    python tools/check_official_vrwkv.py --official PATH/Vision-RWKV
    python tools/check_official_vrwkv.py --official PATH --variants tiny --tol 1e-4

``PATH`` is a checkout or a bare git directory (``git --git-dir DIR show HEAD:path``); sources are written to a
temporary folder, nothing is copied into vizoo. Exit code 0 when every variant is within ``--tol``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.cpp_extension

import vizoo  # noqa: F401  (registers the models)

# The official configs' backbone arguments (classification/configs/vrwkv/).
OFFICIAL_ARGS = {
    "tiny": dict(embed_dims=192),
    "small": dict(embed_dims=384, post_norm=True, init_values=1),
    "base": dict(embed_dims=768, post_norm=True, init_values=1e-5),
}
SIZES = ((224, 224), (192, 288))
BACKBONE = "classification/mmcls_custom/models/backbones/vrwkv.py"
DROP = "classification/mmcls_custom/models/utils/drop.py"


def read_source(root: Path, relpath: str) -> str:
    """``relpath`` from a checkout folder, or from HEAD of a bare git directory."""
    if (root / relpath).is_file():
        return (root / relpath).read_text()
    try:
        return subprocess.run(
            ["git", "--git-dir", str(root), "show", f"HEAD:{relpath}"], check=True, capture_output=True, text=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        raise SystemExit(f"cannot read {relpath} from {root}: pass a checkout or git directory holding it ({e})") from e


def bi_wkv_direct(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The Bi-WKV by its definition, (C,), (C,), (B, T, C), (B, T, C) -> (B, T, C), one image at a time (the
    (T, T, C) weights of a whole batch of base models would not fit comfortably)."""
    steps = torch.arange(k.shape[1])
    distance = (steps[:, None] - steps[None, :]).abs().float()  # (T output, T input)
    own = torch.eye(k.shape[1], dtype=torch.bool)[..., None]
    out = []
    for kb, vb in zip(k.float(), v.float()):
        exponent = torch.where(own, (u + kb)[:, None, :], -(distance[..., None] - 1) * w + kb[None])  # (T, T, C)
        weight = torch.exp(exponent - exponent.amax(dim=1, keepdim=True))
        out.append((weight * vb[None]).sum(1) / (weight.sum(1) + 1e-6))
    return torch.stack(out).to(k.dtype)


def resize_pos_embed(pos_embed, src_shape, dst_shape, mode="bicubic", num_extra_tokens=1):
    """mmcls 0.25's ``mmcls.models.utils.resize_pos_embed``: (1, extra + src h·w, C) -> (1, extra + dst h·w, C)."""
    if tuple(src_shape) == tuple(dst_shape):
        return pos_embed
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    grid = grid.reshape(1, src_shape[0], src_shape[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_shape), align_corners=False, mode=mode)
    return torch.cat((extra, grid.flatten(2).transpose(1, 2)), dim=1)


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_official(root: Path, workdir: Path) -> types.ModuleType:
    """The official ``vrwkv`` module with the stand-ins of the module docstring."""
    try:
        from mmcv.cnn.bricks.transformer import PatchEmbed  # noqa: F401  (imported by the official module)
        from mmengine.model import BaseModule, ModuleList
        from mmengine.registry import Registry
    except ImportError as e:
        raise SystemExit(f"the official code needs mmcv and mmengine: pip install -e '.[mm]' ({e})") from e

    class BaseBackbone(BaseModule):
        pass

    _module("mmcv.runner")
    _module("mmcv.runner.base_module", BaseModule=BaseModule, ModuleList=ModuleList)
    for name in ("mmcls", "mmcls.models", "mmcls.models.backbones"):
        _module(name)
    _module("mmcls.models.builder", BACKBONES=Registry("backbone"))
    _module("mmcls.models.utils", resize_pos_embed=resize_pos_embed)
    _module("mmcls.models.backbones.base_backbone", BaseBackbone=BaseBackbone)
    package = workdir / "mmcls_custom"
    (package / "models" / "utils").mkdir(parents=True)
    for init in ("__init__.py", "models/__init__.py"):
        (package / init).write_text("")
    (package / "models" / "utils" / "__init__.py").write_text("from .drop import DropPath\n")
    (package / "models" / "utils" / "drop.py").write_text(read_source(root, DROP))
    (workdir / "vrwkv_official.py").write_text(read_source(root, BACKBONE))
    sys.path.insert(0, str(workdir))
    loader = torch.utils.cpp_extension
    real_load, loader.load = loader.load, lambda *args, **kwargs: types.SimpleNamespace()
    try:
        module = importlib.import_module("vrwkv_official")
    finally:
        loader.load = real_load
    module.RUN_CUDA = bi_wkv_direct
    return module


class OfficialClassifier(nn.Module):
    """mmcls' ``ImageClassifier`` of the official configs: backbone, ``GlobalAveragePooling``, ``LinearClsHead``."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.backbone(x)[-1].mean(dim=(2, 3)))


def check_variant(official_module: types.ModuleType, variant: str, workdir: Path) -> float:
    torch.manual_seed(0)
    args = OFFICIAL_ARGS[variant]
    backbone = official_module.VRWKV(img_size=224, patch_size=16, **args)
    official = OfficialClassifier(backbone, args["embed_dims"]).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = workdir / f"vrwkv_{variant}_in1k_224.pth"
    torch.save({"meta": {"epoch": 300}, "state_dict": official.state_dict()}, path)
    ours = timm.create_model(f"vrwkv_{variant}", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    path.unlink()
    worst = 0.0
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            diff = (ours(x) - official(x)).abs().max().item()
        print(f"  {h}x{w}: max |logit difference| {diff:.3g}")
        worst = max(worst, diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="OpenGVLab/Vision-RWKV checkout or git directory")
    parser.add_argument("--variants", nargs="+", choices=list(OFFICIAL_ARGS), default=list(OFFICIAL_ARGS))
    parser.add_argument("--tol", type=float, default=1e-4, help="largest allowed absolute logit difference")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        official_module = import_official(args.official, Path(tmp))
        for variant in args.variants:
            print(f"vrwkv_{variant} vs official VRWKV({OFFICIAL_ARGS[variant]}):")
            worst = check_variant(official_module, variant, Path(tmp))
            status = "ok" if worst <= args.tol else "FAILED"
            print(f"  {status}: {worst:.3g} (tolerance {args.tol:g})")
            if worst > args.tol:
                failed.append(variant)
    if failed:
        print(f"outside the tolerance: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
