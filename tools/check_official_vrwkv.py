"""Check vizoo's Vision-RWKV against the official model: same weights, same logits (fp32, CPU).

For T/S/B the official backbone (OpenGVLab/Vision-RWKV
``classification/mmcls_custom/models/backbones/vrwkv.py``, class ``VRWKV``, built with the arguments of the official
config ``classification/configs/vrwkv/vrwkv_{tiny,small,base}_*.py``) is put in an mmcls-style classifier (backbone,
global average pooling, ``head.fc`` Linear); for L the official classifier itself is built
(``classification_internimage/models/vrwkv.py``, class ``VRWKV_Classification``, with the arguments of
``classification_internimage/configs/vrwkv_l_22kto1k_384.yaml``: a 12x12 position embedding, ``k_norm``, the
``Linear -> Tanh -> Linear`` head). Every parameter is perturbed (so that norms, LayerScale, the position embedding
and decay/first/μ are off their init), and the ``state_dict`` is saved as the released ``.pth`` files are (under
``state_dict``, beside ``meta``, or for L beside internimage's ``epoch``). vizoo's model loads it through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` (``checkpoint_filter_fn``,
strict). Both run on the same random images at 224² and at 192x288 (a non-square grid: the position embedding is
resampled and T = 216), two images a size (L: one); the largest absolute logit difference must be at most ``--tol``.

The official module imports mmcv 1.x / mmcls 0.x and JIT-builds a CUDA kernel when imported. This script loads it
with these stand-ins in ``sys.modules``, and nothing else changed:
  - ``mmcv.runner.base_module`` (gone in mmcv 2): ``BaseModule`` and ``ModuleList`` of mmengine, their successors;
    ``mmcv.cnn.bricks.transformer.PatchEmbed`` is the installed mmcv's own (same 'corner' adaptive padding);
  - ``mmcls.models.builder.BACKBONES``: an mmengine ``Registry``; ``mmcls.models.backbones.base_backbone.BaseBackbone``:
    an mmengine ``BaseModule``; ``mmcls.models.utils.resize_pos_embed``: mmcls 0.25's function, written out below
    (``F.interpolate(..., align_corners=False)``, no antialiasing);
  - ``mmcls_custom.models.utils.DropPath``: the official ``classification/mmcls_custom/models/utils/drop.py`` (for L,
    the package-relative ``.utils.DropPath``: ``classification_internimage/models/utils/drop.py``);
  - ``mmcls.models.necks.gap.GlobalAveragePooling`` (L): mmcls 0.x's neck, each map of the tuple averaged to (B, C);
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

import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.cpp_extension

sys.path.insert(0, str(Path(__file__).resolve().parent))  # official_check, beside this file

import official_check as oc  # noqa: E402

# The official configs' model arguments: T/S/B the mmcls backbone's (classification/configs/vrwkv/), L the internimage
# classifier's (classification_internimage/configs/vrwkv_l_22kto1k_384.yaml, MODEL.VRWKV; K_NORM is that code's
# default, True).
OFFICIAL_ARGS = {
    "tiny": dict(embed_dims=192),
    "small": dict(embed_dims=384, post_norm=True, init_values=1),
    "base": dict(embed_dims=768, post_norm=True, init_values=1e-5),
    "large": dict(
        img_size=192, embed_dims=1024, depth=24, post_norm=True, init_values=1e-5, k_norm=True, hidden_dims=3072
    ),
}
INTERNIMAGE = ("large",)
SIZES = ((224, 224), (192, 288))
BACKBONE = "classification/mmcls_custom/models/backbones/vrwkv.py"
DROP = "classification/mmcls_custom/models/utils/drop.py"
INTERNIMAGE_MODEL = "classification_internimage/models/vrwkv.py"
INTERNIMAGE_DROP = "classification_internimage/models/utils/drop.py"


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


class GlobalAveragePooling(nn.Module):
    """mmcls 0.x's ``GlobalAveragePooling`` neck on a tuple of (B, C, H, W) maps: a tuple of (B, C) means."""

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(x.mean(dim=(2, 3)) for x in inputs)


def import_official(root: Path, workdir: Path) -> types.SimpleNamespace:
    """The official ``vrwkv`` modules, ``mmcls`` (T/S/B) and ``internimage`` (L), with the stand-ins of the module
    docstring."""
    try:
        from mmcv.cnn.bricks.transformer import PatchEmbed  # noqa: F401  (imported by the official module)
        from mmengine.model import BaseModule, ModuleList
        from mmengine.registry import Registry
    except ImportError as e:
        raise SystemExit(f"the official code needs mmcv and mmengine: pip install -e '.[mm]' ({e})") from e

    class BaseBackbone(BaseModule):
        pass

    oc.stub_module("mmcv.runner")
    oc.stub_module("mmcv.runner.base_module", BaseModule=BaseModule, ModuleList=ModuleList)
    for name in ("mmcls", "mmcls.models", "mmcls.models.backbones"):
        oc.stub_module(name)
    oc.stub_module("mmcls.models.builder", BACKBONES=Registry("backbone"))
    oc.stub_module("mmcls.models.utils", resize_pos_embed=resize_pos_embed)
    oc.stub_module("mmcls.models.backbones.base_backbone", BaseBackbone=BaseBackbone)
    oc.stub_module("mmcls.models.necks")
    oc.stub_module("mmcls.models.necks.gap", GlobalAveragePooling=GlobalAveragePooling)
    package = workdir / "mmcls_custom"
    (package / "models" / "utils").mkdir(parents=True)
    for init in ("__init__.py", "models/__init__.py"):
        (package / init).write_text("")
    (package / "models" / "utils" / "__init__.py").write_text("from .drop import DropPath\n")
    (package / "models" / "utils" / "drop.py").write_text(oc.read_source(root, DROP))
    (workdir / "vrwkv_official.py").write_text(oc.read_source(root, BACKBONE))
    internimage = workdir / "vrwkv_internimage"
    (internimage / "utils").mkdir(parents=True)
    (internimage / "__init__.py").write_text("")
    (internimage / "utils" / "__init__.py").write_text("from .drop import DropPath\n")
    (internimage / "utils" / "drop.py").write_text(oc.read_source(root, INTERNIMAGE_DROP))
    (internimage / "vrwkv.py").write_text(oc.read_source(root, INTERNIMAGE_MODEL))
    sys.path.insert(0, str(workdir))
    loader = torch.utils.cpp_extension
    real_load, loader.load = loader.load, lambda *args, **kwargs: types.SimpleNamespace()
    try:
        modules = types.SimpleNamespace(
            mmcls=importlib.import_module("vrwkv_official"),
            internimage=importlib.import_module("vrwkv_internimage.vrwkv"),
        )
    finally:
        loader.load = real_load
    modules.mmcls.RUN_CUDA = modules.internimage.RUN_CUDA = bi_wkv_direct
    return modules


class OfficialClassifier(nn.Module):
    """mmcls' ``ImageClassifier`` of the official configs: backbone, ``GlobalAveragePooling``, ``LinearClsHead``."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.backbone(x)[-1].mean(dim=(2, 3)))


def check_variant(official_modules: types.SimpleNamespace, variant: str, workdir: Path) -> float:
    torch.manual_seed(0)
    args = OFFICIAL_ARGS[variant]
    if variant in INTERNIMAGE:
        model = official_modules.internimage.VRWKV_Classification(patch_size=16, **args)
        meta = {"epoch": 19}
    else:
        backbone = official_modules.mmcls.VRWKV(img_size=224, patch_size=16, **args)
        model, meta = OfficialClassifier(backbone, args["embed_dims"]), {"meta": {"epoch": 300}}
    official = oc.perturb_(model.eval(), seed=0)
    checkpoint = {**meta, "state_dict": official.state_dict()}
    ours = oc.load_released(f"vrwkv_{variant}", checkpoint, workdir / f"vrwkv_{variant}.pth")
    return oc.max_difference(ours, official, SIZES, batch=1 if variant in INTERNIMAGE else 2)


def main(argv: list[str] | None = None) -> int:
    args = oc.variants_parser(__doc__, "OpenGVLab/Vision-RWKV checkout or git directory", OFFICIAL_ARGS).parse_args(
        argv
    )
    return oc.check_variants(
        args,
        lambda workdir: import_official(args.official, workdir),
        lambda variant: (
            f"vrwkv_{variant} vs official "
            f"{'VRWKV_Classification' if variant in INTERNIMAGE else 'VRWKV'}({OFFICIAL_ARGS[variant]})"
        ),
        check_variant,
    )


if __name__ == "__main__":
    sys.exit(main())
