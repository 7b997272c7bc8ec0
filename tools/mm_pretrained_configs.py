"""Write each OpenMMLab config's backbone ``init_cfg`` from vizoo's registry: the official ImageNet weights' address.

The papers' detection and segmentation results start from ImageNet weights, so every config in ``configs/mmdet`` and
``configs/mmseg`` starts its backbone from them: ``init_cfg=dict(type="Pretrained", checkpoint=ADDRESS)``, where
ADDRESS is ``vizoo.mm.pretrained.official_checkpoint(model_name)`` (the ``url`` or ``hf_hub_id`` of the model's
default cfg). A model without weights that a URL fetches (none released, or only on Google Drive and the like) gets
``init_cfg=None`` and starts from random weights; the comment beside it says why.
The address is written into the config (not computed when it loads), so a config reads the same in any tool; this
script keeps the two in step, and ``tests/mm/test_pretrained_configs.py`` fails when they drift.

python tools/mm_pretrained_configs.py            # rewrite the backbone dict of every config that differs
python tools/mm_pretrained_configs.py --check    # exit 1 and list the configs that differ
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import timm

from vizoo.backbones._pretrained import weights_address, weights_kind
from vizoo.mm.pretrained import official_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIRS = (ROOT / "configs" / "mmdet", ROOT / "configs" / "mmseg")
REGENERATE = "python tools/mm_pretrained_configs.py"


def shipped_configs() -> list[Path]:
    """The leaf configs (``_base_`` files hold no backbone choice)."""
    return sorted(p for d in CONFIG_DIRS for p in d.glob("*.py"))


def _backbone_call(tree: ast.Module, path: Path) -> ast.Call:
    calls = [
        kw.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "backbone" and isinstance(kw.value, ast.Call)
    ]
    if len(calls) != 1:
        raise ValueError(f"{path}: expected one backbone=dict(...) entry, found {len(calls)}")
    return calls[0]


def init_cfg_source(model_name: str) -> str:
    """The ``init_cfg=...`` entry for ``model_name``'s backbone, as config source."""
    address = official_checkpoint(model_name)
    if address is not None:
        return f'init_cfg=dict(type="Pretrained", checkpoint="{address}"),'
    cfg = timm.get_pretrained_cfg(model_name)
    if weights_kind(cfg) == "manual":
        reason = f"no URL fetches the released weights; get them from {weights_address(cfg)}, set checkpoint=PATH"
    else:
        reason = f"the authors released no ImageNet weights of {model_name}"
    return f"init_cfg=None,  # random init: {reason}"


def render(path: Path) -> str:
    """The config at ``path`` with its backbone dict rewritten, one entry a line, ``init_cfg`` last."""
    text = path.read_text()
    tree = ast.parse(text)
    call = _backbone_call(tree, path)
    model_name = next((kw.value.value for kw in call.keywords if kw.arg == "model_name"), None)
    if not isinstance(model_name, str):
        raise ValueError(f"{path}: the backbone dict has no model_name string")
    lines = text.splitlines(keepends=True)
    indent = " " * (len(lines[call.lineno - 1]) - len(lines[call.lineno - 1].lstrip()) + 4)
    entries = [f"{kw.arg}={ast.get_source_segment(text, kw.value)}," for kw in call.keywords if kw.arg != "init_cfg"]
    entries.append(init_cfg_source(model_name))
    body = "".join(f"\n{indent}{entry}" for entry in entries)
    new_call = f"dict({body}\n{indent[:-4]})"
    start = sum(len(line) for line in lines[: call.lineno - 1]) + _char_offset(lines[call.lineno - 1], call.col_offset)
    end = sum(len(line) for line in lines[: call.end_lineno - 1]) + _char_offset(
        lines[call.end_lineno - 1], call.end_col_offset
    )
    return ruff_format(text[:start] + new_call + text[end:], path)


def ruff_format(text: str, path: Path) -> str:
    """``text`` as ``ruff format`` (the project's settings) writes it: the configs follow the code's style."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ruff format failed on {path}: {result.stderr.strip()}")
    return result.stdout


def _char_offset(line: str, utf8_offset: int) -> int:
    """ast gives column offsets in UTF-8 bytes; string slicing needs characters."""
    return len(line.encode()[:utf8_offset].decode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list the configs that differ, write nothing")
    args = parser.parse_args(argv)
    stale = [(path, rendered) for path in shipped_configs() if (rendered := render(path)) != path.read_text()]
    for path, rendered in stale:
        if args.check:
            print(f"{path.relative_to(ROOT)}: backbone init_cfg differs from vizoo's registry")
        else:
            path.write_text(rendered)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print(f"run {REGENERATE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
