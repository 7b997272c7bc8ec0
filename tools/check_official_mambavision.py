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

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # official_check, beside this file

import official_check as oc  # noqa: E402

OFFICIAL_FACTORIES = {
    "tiny": "mamba_vision_T",
    "tiny2": "mamba_vision_T2",
    "small": "mamba_vision_S",
    "base": "mamba_vision_B",
    "large": "mamba_vision_L",
    "large2": "mamba_vision_L2",
}
SIZES = ((224, 224), (256, 320))


def import_official(official_root: Path, mamba_root: Path, workdir: Path) -> types.ModuleType:
    """The official ``mamba_vision`` module, importable from ``workdir`` with the one substitution above."""
    try:
        from einops import rearrange, repeat
    except ImportError as e:
        raise SystemExit("the official code imports einops: pip install einops (or put it on PYTHONPATH)") from e
    scan = oc.function_from_source(
        mamba_root,
        "mamba_ssm/ops/selective_scan_interface.py",
        "selective_scan_ref",
        dict(torch=torch, F=F, rearrange=rearrange, repeat=repeat),
    )
    oc.stub_module("mamba_ssm")
    oc.stub_module("mamba_ssm.ops")
    oc.stub_module("mamba_ssm.ops.selective_scan_interface", selective_scan_fn=scan)
    files = ("mamba_vision.py", "registry.py")
    return oc.import_official_package(
        official_root, workdir, "mambavision_official", "mambavision/models", files, "mamba_vision"
    )


def check_variant(official_module: types.ModuleType, variant: str, workdir: Path) -> float:
    torch.manual_seed(0)
    official = oc.perturb_(getattr(official_module, OFFICIAL_FACTORIES[variant])().eval(), seed=0)
    checkpoint = {"state_dict": official.state_dict(), "epoch": 0}
    ours = oc.load_released(f"mambavision_{variant}", checkpoint, workdir / f"mambavision_{variant}_1k.pth.tar")
    return oc.max_difference(ours, official, SIZES)


def main(argv: list[str] | None = None) -> int:
    parser = oc.variants_parser(__doc__, "NVlabs/MambaVision checkout or git directory", OFFICIAL_FACTORIES)
    parser.add_argument("--mamba", type=Path, required=True, help="state-spaces/mamba checkout or git directory")
    args = parser.parse_args(argv)
    return oc.check_variants(
        args,
        lambda workdir: import_official(args.official, args.mamba, workdir),
        lambda variant: f"mambavision_{variant} vs official {OFFICIAL_FACTORIES[variant]}",
        check_variant,
    )


if __name__ == "__main__":
    sys.exit(main())
