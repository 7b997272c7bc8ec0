"""Check vizoo's EfficientViM against the official model: same weights, same logits (fp32, CPU).

For each variant the official model (mlvlab/EfficientViM ``classification/models/EfficientViM.py``, built by its own
factory, e.g. ``EfficientViM_M1()``) is built with random init, every parameter and BatchNorm statistic is perturbed
(so that norms, biases, the mixing weights α, A, D and the fusion weights are off their defaults), its ``state_dict``
is saved as the released ``.pth`` files are (under ``model``) and loaded into vizoo's model through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` (``checkpoint_filter_fn``,
strict). Both run on the same random images, square at the variant's resolution (224², M4 256²): the official
classification code reshapes with ``H = √L`` and takes square inputs only. The same is done for the distilled model
(``distillation=True``, whose eval output averages its two heads): vizoo folds them into one head on loading.
The largest absolute logit difference must be at most ``--tol``. Non-square inputs, which the official classification
code cannot take, are checked against the official detection backbone (``detection/efficientViM.py``, the same
modules with H and W passed on): loaded with the same weights (its state dict is the classifier's without the
head), its three stage outputs must match vizoo's ``forward_intermediates`` at 224x320 within ``--tol``.

The official code is pure PyTorch and imports timm (``timm.layers``, ``timm.models.register_model``). It also
imports fvcore for its FLOP-counting method, which nothing here calls: where fvcore is not installed this script
puts a stub ``fvcore.nn`` module (with a ``flop_count`` that raises) in ``sys.modules``. That is the only
substitution for the classifier. The detection module registers its factory in mmdet 2's ``BACKBONES``
(``mmdet.models.builder``): while it is imported, ``mmdet``, ``mmdet.models`` and ``mmdet.models.builder`` are stub
modules whose ``BACKBONES.register_module()`` returns the function unchanged (the previous entries are put back
afterwards); nothing of mmdet runs in it. The official sources are read from a checkout or a bare git directory
(``git --git-dir DIR show HEAD:path``) and written to a temporary folder; nothing is copied into vizoo.

    python tools/check_official_efficient_vim.py --official PATH/EfficientViM
    python tools/check_official_efficient_vim.py --official ... --variants M1 M4 --tol 1e-4

Exit code 0 when every variant is within ``--tol``, 1 otherwise.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # official_check, beside this file

import official_check as oc  # noqa: E402

VARIANTS = {"M1": 224, "M2": 224, "M3": 224, "M4": 256}


def import_official(official_root: Path, workdir: Path) -> types.ModuleType:
    """The official ``EfficientViM`` module, importable from ``workdir`` (fvcore stubbed where it is missing)."""
    try:
        import fvcore.nn  # noqa: F401
    except ImportError:

        def flop_count(*args, **kwargs):
            raise RuntimeError("fvcore is stubbed by tools/check_official_efficient_vim.py")

        oc.stub_module("fvcore")
        oc.stub_module("fvcore.nn", flop_count=flop_count)
    files = ("EfficientViM.py", "utils.py")
    return oc.import_official_package(
        official_root, workdir, "efficientvim_official", "classification/models", files, "EfficientViM"
    )


def import_official_detection(official_root: Path, workdir: Path) -> types.ModuleType:
    """The official detection backbone module (``EfficientViM`` taking any H x W), with mmdet 2's registry stubbed
    during its import."""
    folder = workdir / "efficientvim_official_det"
    folder.mkdir()
    for name in ("efficientViM.py", "efficientViM_utils.py"):
        (folder / name).write_text(oc.read_source(official_root, f"detection/{name}"))
    registry = types.SimpleNamespace(register_module=lambda *args, **kwargs: lambda fn: fn)
    names = ("mmdet", "mmdet.models", "mmdet.models.builder")
    saved = {name: sys.modules.get(name) for name in names}
    oc.stub_module("mmdet")
    oc.stub_module("mmdet.models")
    oc.stub_module("mmdet.models.builder", BACKBONES=registry)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("efficientViM")
    finally:
        sys.path.remove(str(folder))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


DETECTION_ARGS = {  # the official factories' settings (classification/models/EfficientViM.py)
    "M1": dict(embed_dim=[128, 192, 320], depths=[2, 2, 2], state_dim=[49, 25, 9]),
    "M2": dict(embed_dim=[128, 256, 512], depths=[2, 2, 2], state_dim=[49, 25, 9]),
    "M3": dict(embed_dim=[224, 320, 512], depths=[2, 2, 2], state_dim=[49, 25, 9]),
    "M4": dict(embed_dim=[224, 320, 512], depths=[3, 4, 2], state_dim=[64, 32, 16]),
}


def check_non_square(official_module: types.ModuleType, detection_module, variant: str, workdir: Path) -> float:
    """The stage outputs of the official detection backbone against vizoo's at 224x320, same weights."""
    torch.manual_seed(1)
    official = oc.perturb_(getattr(official_module, f"EfficientViM_{variant}")().eval(), seed=1)
    detection = detection_module.EfficientViM(frozen_stages=-1, **DETECTION_ARGS[variant])
    detection.eval()  # its train() override returns None
    result = detection.load_state_dict(official.state_dict(), strict=False)
    if result.missing_keys or any(not k.startswith(("norm.", "heads.", "weights")) for k in result.unexpected_keys):
        raise SystemExit(f"the official detection backbone does not take the classifier's weights: {result}")
    path = workdir / f"EfficientViM_{variant}_det.pth"
    ours = oc.load_released(f"efficient_vim_{variant.lower()}", {"model": official.state_dict()}, path)

    def stages(x: torch.Tensor) -> list[torch.Tensor]:
        return ours.forward_intermediates(x, intermediates_only=True)

    return oc.max_difference(stages, detection, [(224, 320)], seed=1, what="stage output", label="detection backbone, ")


def check_variant(official_module: types.ModuleType, variant: str, distilled: bool, workdir: Path) -> float:
    torch.manual_seed(0)
    official = oc.perturb_(getattr(official_module, f"EfficientViM_{variant}")(distillation=distilled).eval(), seed=0)
    path = workdir / f"EfficientViM_{variant}_{'dist' if distilled else 'e300'}.pth"
    ours = oc.load_released(f"efficient_vim_{variant.lower()}", {"model": official.state_dict(), "epoch": 0}, path)
    size = VARIANTS[variant]
    return oc.max_difference(ours, official, [(size, size)], label="distilled " if distilled else "plain ")


def check(official: tuple[types.ModuleType, types.ModuleType], variant: str, workdir: Path) -> float:
    """The worst of the plain and distilled logits (square) and the detection backbone's stage outputs (224x320)."""
    classification, detection = official
    diffs = [check_variant(classification, variant, distilled, workdir) for distilled in (False, True)]
    return oc.worst([*diffs, check_non_square(classification, detection, variant, workdir)])


def main(argv: list[str] | None = None) -> int:
    args = oc.variants_parser(__doc__, "mlvlab/EfficientViM checkout or git directory", VARIANTS).parse_args(argv)
    return oc.check_variants(
        args,
        lambda workdir: (import_official(args.official, workdir), import_official_detection(args.official, workdir)),
        lambda variant: f"efficient_vim_{variant.lower()} vs official EfficientViM_{variant}",
        check,
    )


if __name__ == "__main__":
    sys.exit(main())
