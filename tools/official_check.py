"""What the ``tools/check_official_*.py`` scripts share: reading official sources, stand-in modules, moving a model's
weights off their init, loading a released-layout checkpoint into vizoo, the max-difference loop and the report.

Each script keeps what is its own: how the official code is imported (which CUDA or framework modules are replaced),
how the official model is built per variant and how its weights reach vizoo's model. The scripts run as
``python tools/check_official_X.py`` and import this file as a plain module from the folder they stand in.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import timm
import torch
import torch.nn as nn

import vizoo  # noqa: F401  (registers the models)

Outputs = torch.Tensor | Sequence[torch.Tensor]


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


def function_from_source(root: Path, relpath: str, name: str, namespace: dict) -> Callable:
    """The top-level function ``name`` of ``relpath``, compiled alone in ``namespace`` (its globals): the rest of that
    file is not run (official test and interface files import CUDA extensions in their module body)."""
    tree = ast.parse(read_source(root, relpath))
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise SystemExit(f"no function {name} in {root}/{relpath}: pass a checkout or git directory holding it")
    namespace = dict(namespace)
    exec(compile(ast.Module(body=[node], type_ignores=[]), f"{root}/{relpath}", "exec"), namespace)
    return namespace[name]


def stub_module(name: str, **attrs) -> types.ModuleType:
    """A module ``name`` holding ``attrs``, put in ``sys.modules`` in place of what the official code imports."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_official_package(
    root: Path, workdir: Path, package: str, folder: str, files: Iterable[str], module: str
) -> types.ModuleType:
    """Write the official ``folder/<file>`` sources (read with ``read_source``) into the package ``workdir/package``
    and import ``package.module`` from it; nothing is copied into vizoo."""
    target = workdir / package
    target.mkdir()
    (target / "__init__.py").write_text("")
    for name in files:
        (target / name).write_text(read_source(root, f"{folder}/{name}"))
    sys.path.insert(0, str(workdir))
    return importlib.import_module(f"{package}.{module}")


@torch.no_grad()
def perturb_(model: nn.Module, seed: int, scale: float = 0.02) -> nn.Module:
    """Move every parameter (+ ``scale``·N(0, 1)) and BatchNorm statistic (mean + 0.1·N(0, 1), variance ×U(1, 1.5))
    off its init, so that a mis-mapped or dropped tensor (norms, biases, LayerScale, SSM parameters) changes the
    output. Drawn from a generator seeded with ``seed``: the same model and seed give the same weights."""
    generator = torch.Generator().manual_seed(seed)

    def draw(like: torch.Tensor, sample=torch.randn) -> torch.Tensor:
        return sample(like.shape, generator=generator, dtype=like.dtype).to(like.device)

    for p in model.parameters():
        p.add_(draw(p) * scale)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.add_(draw(b) * 0.1)
        elif name.endswith("running_var"):
            b.mul_(1 + 0.5 * draw(b, torch.rand))
    return model


def load_released(name: str, checkpoint: dict, path: Path) -> nn.Module:
    """vizoo's ``name`` in eval mode, loaded from ``checkpoint`` (laid out as the released files are) saved at
    ``path``, through ``timm.create_model(pretrained=True)``: the model's ``checkpoint_filter_fn``, strictly."""
    torch.save(checkpoint, path)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    finally:
        path.unlink()


@torch.no_grad()
def max_difference(
    ours: Callable[[torch.Tensor], Outputs],
    official: Callable[[torch.Tensor], Outputs],
    sizes: Iterable[tuple[int, int]],
    seed: int = 0,
    batch: int = 2,
    what: str = "logit",
    label: str = "",
) -> float:
    """The largest |ours(x) - official(x)| over random (batch, 3, h, w) images of each (h, w) in ``sizes``, one line
    printed per size. The outputs are tensors or sequences of tensors (e.g. stage maps), compared pairwise."""
    generator = torch.Generator().manual_seed(seed)
    diffs = []
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w, generator=generator)
        pairs = list(zip(*(([y] if isinstance(y, torch.Tensor) else list(y)) for y in (ours(x), official(x)))))
        diffs.append(worst([(a - b).abs().max().item() for a, b in pairs]))
        largest = worst([b.abs().max().item() for _, b in pairs])
        print(f"  {label}{h}x{w}: max |{what} difference| {diffs[-1]:.3g} (max |{what}| {largest:.3g})")
    return worst(diffs)


def worst(diffs: Iterable[float]) -> float:
    """The largest of ``diffs``, NaN where any is NaN (Python's ``max`` would skip it and pass a broken model)."""
    return max(diffs, key=lambda d: math.inf if math.isnan(d) else d)


def variants_parser(doc: str, official_help: str, variants: Iterable[str]) -> argparse.ArgumentParser:
    """The scripts' common options: ``--official`` (checkout or git directory), ``--variants`` and ``--tol``."""
    variants = list(variants)
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help=official_help)
    parser.add_argument("--variants", nargs="+", choices=variants, default=variants)
    parser.add_argument("--tol", type=float, default=1e-4, help="largest allowed absolute logit difference")
    return parser


def report(variants: Iterable[str], title: Callable[[str], str], check: Callable[[str], float], tol: float) -> int:
    """Run ``check(variant)`` (the largest difference, its lines printed under ``title(variant)``) for each variant,
    print whether it is within ``tol``; the exit status: 0 when every variant is, 1 otherwise."""
    failed = []
    for variant in variants:
        print(f"{title(variant)}:")
        with torch.no_grad():
            worst = check(variant)
        print(f"  {'ok' if worst <= tol else 'FAILED'}: {worst:.3g} (tolerance {tol:g})")
        if not worst <= tol:
            failed.append(variant)
    if failed:
        print(f"outside the tolerance: {', '.join(failed)}")
    return 1 if failed else 0


def check_variants(
    args: argparse.Namespace,
    load_official: Callable[[Path], object],
    title: Callable[[str], str],
    check: Callable[[object, str, Path], float],
) -> int:
    """``report`` over ``args.variants`` against ``args.tol`` (as ``variants_parser`` gives them): the official code is
    loaded once by ``load_official(workdir)`` and each variant checked by ``check(official, variant, workdir)``, with
    ``workdir`` a temporary folder for the official sources and the checkpoints written on the way."""
    with tempfile.TemporaryDirectory() as tmp:
        official = load_official(Path(tmp))
        return report(args.variants, title, lambda variant: check(official, variant, Path(tmp)), args.tol)
