"""vizoo: efficient vision backbones (2D-scan SSMs, linear-attention ViTs, pruned ViTs), registered in timm.

``import vizoo`` registers every vizoo model, so ``timm.create_model("vmamba_tiny_s1l8")`` works.
"""

from __future__ import annotations

import timm

from vizoo import backbones  # registers the models

__version__ = "0.1.0"


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the vizoo models registered in timm that match the ``fnmatch`` pattern."""
    return sorted(timm.list_models(pattern, module=list(backbones.FAMILIES)))
