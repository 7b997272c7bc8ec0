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

import argparse
import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import timm
import torch

import vizoo  # noqa: F401  (registers the models)

VARIANTS = {"M1": 224, "M2": 224, "M3": 224, "M4": 256}


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


def import_official(official_root: Path, workdir: Path) -> types.ModuleType:
    """The official ``EfficientViM`` module, importable from ``workdir`` (fvcore stubbed where it is missing)."""
    try:
        import fvcore.nn  # noqa: F401
    except ImportError:
        stub = types.ModuleType("fvcore.nn")

        def flop_count(*args, **kwargs):
            raise RuntimeError("fvcore is stubbed by tools/check_official_efficient_vim.py")

        stub.flop_count = flop_count
        sys.modules["fvcore"] = types.ModuleType("fvcore")
        sys.modules["fvcore.nn"] = stub
    package = workdir / "efficientvim_official"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("EfficientViM.py", "utils.py"):
        (package / name).write_text(read_source(official_root, f"classification/models/{name}"))
    sys.path.insert(0, str(workdir))
    return importlib.import_module("efficientvim_official.EfficientViM")


def import_official_detection(official_root: Path, workdir: Path) -> types.ModuleType:
    """The official detection backbone module (``EfficientViM`` taking any H x W), with mmdet 2's registry stubbed
    during its import."""
    folder = workdir / "efficientvim_official_det"
    folder.mkdir()
    for name in ("efficientViM.py", "efficientViM_utils.py"):
        (folder / name).write_text(read_source(official_root, f"detection/{name}"))
    registry = types.SimpleNamespace(register_module=lambda *args, **kwargs: lambda fn: fn)
    stubs = {name: types.ModuleType(name) for name in ("mmdet", "mmdet.models", "mmdet.models.builder")}
    stubs["mmdet.models.builder"].BACKBONES = registry
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
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


@torch.no_grad()
def perturb_(model: torch.nn.Module, scale: float = 0.02) -> None:
    for p in model.parameters():
        p.add_(torch.randn_like(p) * scale)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.add_(torch.randn_like(b) * 0.1)
        elif name.endswith("running_var"):
            b.mul_(1 + 0.5 * torch.rand_like(b))


DETECTION_ARGS = {  # the official factories' settings (classification/models/EfficientViM.py)
    "M1": dict(embed_dim=[128, 192, 320], depths=[2, 2, 2], state_dim=[49, 25, 9]),
    "M2": dict(embed_dim=[128, 256, 512], depths=[2, 2, 2], state_dim=[49, 25, 9]),
    "M3": dict(embed_dim=[224, 320, 512], depths=[2, 2, 2], state_dim=[49, 25, 9]),
    "M4": dict(embed_dim=[224, 320, 512], depths=[3, 4, 2], state_dim=[64, 32, 16]),
}


def check_non_square(official_module: types.ModuleType, detection_module, variant: str, workdir: Path) -> float:
    """The stage outputs of the official detection backbone against vizoo's at 224x320, same weights."""
    torch.manual_seed(1)
    official = getattr(official_module, f"EfficientViM_{variant}")().eval()
    perturb_(official)
    detection = detection_module.EfficientViM(frozen_stages=-1, **DETECTION_ARGS[variant])
    detection.eval()  # its train() override returns None
    result = detection.load_state_dict(official.state_dict(), strict=False)
    if result.missing_keys or any(not k.startswith(("norm.", "heads.", "weights")) for k in result.unexpected_keys):
        raise SystemExit(f"the official detection backbone does not take the classifier's weights: {result}")
    path = workdir / f"EfficientViM_{variant}_det.pth"
    torch.save({"model": official.state_dict()}, path)
    name = f"efficient_vim_{variant.lower()}"
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    path.unlink()
    x = torch.randn(2, 3, 224, 320)
    with torch.no_grad():
        maps = ours.forward_intermediates(x, intermediates_only=True)
        diff = max((a - b).abs().max().item() for a, b in zip(maps, detection(x)))
    print(f"  stage outputs 224x320 vs the detection backbone: max |difference| {diff:.3g}")
    return diff


def check_variant(official_module: types.ModuleType, variant: str, distilled: bool, workdir: Path) -> float:
    torch.manual_seed(0)
    official = getattr(official_module, f"EfficientViM_{variant}")(distillation=distilled).eval()
    perturb_(official)
    path = workdir / f"EfficientViM_{variant}_{'dist' if distilled else 'e300'}.pth"
    torch.save({"model": official.state_dict(), "epoch": 0}, path)
    name = f"efficient_vim_{variant.lower()}"
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    path.unlink()
    size = VARIANTS[variant]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = official(x)
        diff = (ours(x) - reference).abs().max().item()
    kind = "distilled" if distilled else "plain"
    print(f"  {kind} {size}x{size}: max |logit difference| {diff:.3g} (max |logit| {reference.abs().max():.3g})")
    return diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="mlvlab/EfficientViM checkout or git directory")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--tol", type=float, default=1e-4, help="largest allowed absolute logit difference")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        official_module = import_official(args.official, Path(tmp))
        detection_module = import_official_detection(args.official, Path(tmp))
        for variant in args.variants:
            print(f"efficient_vim_{variant.lower()} vs official EfficientViM_{variant}:")
            worst = max(check_variant(official_module, variant, distilled, Path(tmp)) for distilled in (False, True))
            worst = max(worst, check_non_square(official_module, detection_module, variant, Path(tmp)))
            status = "ok" if worst <= args.tol else "FAILED"
            print(f"  {status}: {worst:.3g} (tolerance {args.tol:g})")
            if worst > args.tol:
                failed.append(variant)
    if failed:
        print(f"outside the tolerance: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
