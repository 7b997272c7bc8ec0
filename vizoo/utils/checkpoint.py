"""Reading checkpoint files safely, and checking a state dict against a model with errors that say what to do."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Iterable

import torch
from safetensors import SafetensorError

_logger = logging.getLogger(__name__)

# Keys under which training scripts nest the weights, in order of preference (EMA first, as timm does).
# Where training checkpoints keep the weights, EMA first: timm/VMamba-style, then MobileMamba's trainer (net_E = EMA).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "net_E", "state_dict", "model", "net")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not what was asked for, or does not fit the model it is loaded into.

    The one error type of every checkpoint in vizoo: weights files (this module) and training checkpoint folders
    (:mod:`vizoo.train.checkpoint`). A ValueError, since the cause is always a bad input file or path."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the weights in a ``.safetensors`` or PyTorch file, unwrapping ``{"model": ...}``-style training checkpoints.

    Never executes code from the file: pickles are read with ``weights_only=True``. Objects other than tensors that
    training scripts store beside the weights (configs, for instance VMamba's yacs ``CfgNode``) are replaced by inert
    placeholders so the weights can still be read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist; check the path")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(path, device="cpu")
        else:
            checkpoint = _torch_load_weights_only(path)
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        SafetensorError,
    ) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path!r}: it is corrupt, truncated or not a PyTorch/safetensors file "
            f"({type(e).__name__}: {e}). Download or export it again."
        ) from e
    if isinstance(checkpoint, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"checkpoint {path!r} holds no state dict of tensors (found {type(checkpoint).__name__})")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _torch_load_weights_only(path: str):
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    placeholders = [_placeholder(name) for name in unsafe]
    if placeholders:
        _logger.info("checkpoint %s: replacing non-tensor objects %s with placeholders", path, unsafe)
    with torch.serialization.safe_globals(placeholders):
        return torch.load(path, map_location="cpu", weights_only=True)


def _placeholder(qualified_name: str) -> type:
    """An inert dict subclass standing in for an unknown pickled class ``module.Name``."""
    module, _, name = qualified_name.rpartition(".")

    def __setstate__(self, state):
        self["__state__"] = state

    return type(name, (dict,), {"__module__": module, "__qualname__": name, "__setstate__": __setstate__})


def check_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: torch.nn.Module,
    model_name: str,
    skip_prefixes: Iterable[str] = (),
    skip_shape_check: Iterable[str] = (),
) -> None:
    """Raise ``CheckpointError`` naming the missing, unexpected and mis-shaped keys if ``state_dict`` does not fit.

    ``skip_prefixes`` are left out of the comparison (e.g. the classifier, which timm re-fits to ``num_classes``);
    ``skip_shape_check`` keys are compared by name only (e.g. the first conv, which timm adapts to ``in_chans``).
    """
    skip_prefixes = tuple(skip_prefixes)
    skip_shape_check = set(skip_shape_check)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(skip_prefixes)}
    # Listed in model order (missing, mis-shaped) and file order (unexpected), as a reader would look for them.
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and k not in skip_shape_check and given[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = [f"checkpoint does not match {model_name}:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mis_shaped),
        ):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"  {len(keys)} {title}: {shown}")
        parts.append("Is it a checkpoint of this variant? Pick the matching model name, or pass pretrained=False.")
        raise CheckpointError("\n".join(parts))


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file as hex, read in chunks (checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()
