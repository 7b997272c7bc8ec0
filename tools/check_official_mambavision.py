"""Check vizoo's MambaVision against the official model: same weights, same logits (fp32, CPU).

For each variant the official model (NVlabs/MambaVision ``mambavision/models/mamba_vision.py``, built by its own
factory, e.g. ``mamba_vision_T()``) is built with random init, every parameter and BatchNorm statistic is perturbed
(so that norms, biases, LayerScale and the SSM parameters are off their defaults), its ``state_dict`` is saved as the
official ``.pth.tar`` files are (under ``state_dict``) and loaded into vizoo's model through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` (``checkpoint_filter_fn``, strict).
Both run on the same random images at 224² (one window per stage) and at 256x320 (stages 3-4 padded and cut into
several windows); the largest absolute logit difference must be at most ``--tol``.

The official code imports CUDA-only packages; this script substitutes, in ``sys.modules``, only:
  - ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` := mamba_ssm's own pure-PyTorch
    ``selective_scan_ref``, whose source is read from a state-spaces/mamba checkout
    (``mamba_ssm/ops/selective_scan_interface.py``) and executed alone (the rest of that module needs the CUDA
    extensions). The official mixer calls ``selective_scan_fn`` with ``return_last_state=None``, which the reference
    treats as False, as the CUDA function does.
Everything else is the real thing: timm and einops must be importable (``pip install einops`` where it is missing,
or put a folder holding it on PYTHONPATH). The official sources are read from the given folders, or from bare git
directories (``git --git-dir DIR show HEAD:path``), and written to a temporary folder; nothing is copied into vizoo.

    python tools/check_official_mambavision.py --official PATH/MambaVision --mamba PATH/mamba
    python tools/check_official_mambavision.py --official ... --mamba ... --variants tiny base --tol 1e-4

Exit code 0 when every variant is within ``--tol``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import vizoo  # noqa: F401  (registers the models)

OFFICIAL_FACTORIES = {
    "tiny": "mamba_vision_T",
    "tiny2": "mamba_vision_T2",
    "small": "mamba_vision_S",
    "base": "mamba_vision_B",
    "large": "mamba_vision_L",
    "large2": "mamba_vision_L2",
}
SIZES = ((224, 224), (256, 320))


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


def selective_scan_ref_from(mamba_root: Path):
    """mamba_ssm's ``selective_scan_ref``, executed from its source alone."""
    source = read_source(mamba_root, "mamba_ssm/ops/selective_scan_interface.py")
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "selective_scan_ref"), None)
    if node is None:
        raise SystemExit(f"no selective_scan_ref in {mamba_root}/mamba_ssm/ops/selective_scan_interface.py")
    from einops import rearrange, repeat

    namespace = {"torch": torch, "F": F, "rearrange": rearrange, "repeat": repeat}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "selective_scan_ref", "exec"), namespace)
    return namespace["selective_scan_ref"]


def import_official(official_root: Path, mamba_root: Path, workdir: Path) -> types.ModuleType:
    """The official ``mamba_vision`` module, importable from ``workdir`` with the one substitution above."""
    try:
        import einops  # noqa: F401
    except ImportError as e:
        raise SystemExit("the official code imports einops: pip install einops (or put it on PYTHONPATH)") from e
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_ref_from(mamba_root)
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["mamba_ssm.ops.selective_scan_interface"] = interface
    package = workdir / "mambavision_official"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("mamba_vision.py", "registry.py"):
        (package / name).write_text(read_source(official_root, f"mambavision/models/{name}"))
    sys.path.insert(0, str(workdir))
    return importlib.import_module("mambavision_official.mamba_vision")


@torch.no_grad()
def perturb_(model: torch.nn.Module, scale: float = 0.02) -> None:
    for p in model.parameters():
        p.add_(torch.randn_like(p) * scale)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.add_(torch.randn_like(b) * 0.1)
        elif name.endswith("running_var"):
            b.mul_(1 + 0.5 * torch.rand_like(b))


def check_variant(official_module: types.ModuleType, variant: str, workdir: Path) -> float:
    torch.manual_seed(0)
    official = getattr(official_module, OFFICIAL_FACTORIES[variant])().eval()
    perturb_(official)
    path = workdir / f"mambavision_{variant}_1k.pth.tar"
    torch.save({"state_dict": official.state_dict(), "epoch": 0}, path)
    ours = timm.create_model(
        f"mambavision_{variant}", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
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
    parser.add_argument("--official", type=Path, required=True, help="NVlabs/MambaVision checkout or git directory")
    parser.add_argument("--mamba", type=Path, required=True, help="state-spaces/mamba checkout or git directory")
    parser.add_argument("--variants", nargs="+", choices=list(OFFICIAL_FACTORIES), default=list(OFFICIAL_FACTORIES))
    parser.add_argument("--tol", type=float, default=1e-4, help="largest allowed absolute logit difference")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        official_module = import_official(args.official, args.mamba, Path(tmp))
        for variant in args.variants:
            print(f"mambavision_{variant} vs official {OFFICIAL_FACTORIES[variant]}:")
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
