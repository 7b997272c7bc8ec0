"""vizoo for OpenMMLab (mmdet 3.x, mmseg 1.x): ``custom_imports=dict(imports=["vizoo.mm"])`` in a config.

Importing this package:

- registers ``VizooBackbone`` once, in mmengine's root ``MODELS`` registry. mmdet's and mmseg's ``MODELS`` are its
  children and search their parent, so ``dict(type="VizooBackbone", ...)`` builds under either default scope;
- registers ``TransposedConvFPN`` (MobileMamba's detection neck: finer levels by transposed convs) when mmdet is
  installed;
- registers ``VizooDatasetCheckHook`` and ``VizooRunner`` (clear errors for empty datasets and missing image files);
- makes mmengine 0.10.7 read its own checkpoints on torch >= 2.6 (see ``vizoo.mm.checkpoint``).

Needs the ``mm`` extra (``pip install -e .[mm]`` and mmcv, see ``tools/install_mmcv.sh``); ``import vizoo`` does not.
"""

from __future__ import annotations

try:
    import mmengine  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("vizoo.mm needs OpenMMLab: pip install -e '.[mm]' and then tools/install_mmcv.sh for mmcv") from e

from mmengine.registry import HOOKS, MODELS, RUNNERS

from vizoo.mm.backbone import VizooBackbone
from vizoo.mm.checkpoint import install_checkpoint_loader, trusted_checkpoint_dir
from vizoo.mm.data_check import VizooDatasetCheckHook, VizooRunner, check_dataset

__all__ = [
    "VizooBackbone",
    "VizooDatasetCheckHook",
    "VizooRunner",
    "check_dataset",
    "install_checkpoint_loader",
    "trusted_checkpoint_dir",
]

if MODELS.get("VizooBackbone") is None:
    MODELS.register_module(name="VizooBackbone", module=VizooBackbone)
if HOOKS.get("VizooDatasetCheckHook") is None:
    HOOKS.register_module(name="VizooDatasetCheckHook", module=VizooDatasetCheckHook)
try:  # the detection neck needs mmdet (the [mm] extra installs it; an mmseg-only setup goes without)
    from vizoo.mm.necks import TransposedConvFPN
except ImportError:  # pragma: no cover - depends on the environment
    TransposedConvFPN = None
if TransposedConvFPN is not None and MODELS.get("TransposedConvFPN") is None:
    MODELS.register_module(name="TransposedConvFPN", module=TransposedConvFPN)
if RUNNERS.get("VizooRunner") is None:
    RUNNERS.register_module(name="VizooRunner", module=VizooRunner)
install_checkpoint_loader()
