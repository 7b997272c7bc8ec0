"""Training checkpoints: weights in safetensors plus the full training state, written atomically.

A checkpoint is a folder ``OUTPUT/checkpoints/step-<global step>/`` holding

- ``model.safetensors``: the model's weights (unwrapped from DDP), loadable with ``safetensors.torch.load_file``;
- ``ema.safetensors``: the EMA weights, when EMA is on;
- ``state.pt``: optimiser, scheduler, grad scaler, epoch, step within the epoch, global step, the RNG states of
  torch (CPU and CUDA), numpy and python, the run's config, class names, and the SHA-256 of the weight files.

The folder is written under a temporary name and renamed into place (an atomic rename on POSIX), then the text file
``OUTPUT/checkpoints/last`` (itself replaced atomically) names it. A crash at any moment leaves the previous
checkpoints intact; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vizoo.utils.checkpoint import CheckpointError, sha256_file

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "capture_rng",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

_logger = logging.getLogger(__name__)
_PREFIX = "step-"
# what --resume accepts, for errors about a path that is not a checkpoint (a weights file is the usual mistake)
_RESUME_TAKES = (
    "--resume takes a checkpoint folder written by `vizoo train` or the fine-tuning commands "
    "(OUTPUT/checkpoints/step-000001000, or the OUTPUT/checkpoints/last file), or 'auto' with `vizoo train`; to start "
    "`vizoo train` from a weights file, pass it with --initial-checkpoint"
)


@dataclass
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def capture_rng() -> dict[str, Any]:
    """The RNG states of python, numpy, torch CPU and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders in ``ckpt_dir``, oldest first (by global step)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def save_checkpoint(
    ckpt_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step-<step>`` atomically, point ``last`` at it and delete all but the newest ``keep``."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{_PREFIX}{step:09d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".tmp-{final.name}-"))
    try:
        hashes = {}
        weights = {"model.safetensors": model_state}
        if ema_state is not None:
            weights["ema.safetensors"] = ema_state
        for name, tensors in weights.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(tensors, str(tmp / name), metadata={"format": "pt", "step": str(step)})
            hashes[name] = sha256_file(tmp / name)
        state = dict(state, step=step, sha256=hashes)
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        for name in hashes:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. end of epoch right after a step checkpoint)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(ckpt_dir / "last", final.name + "\n")
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint folder (or its ``state.pt`` / ``model.safetensors``, or a ``last`` file).

    Raises CheckpointError naming the file and the problem when a file is missing, truncated, or does not match the
    SHA-256 recorded at save time.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file() and path.name == "last":
        path = path.parent / path.read_text().strip()
    elif path.is_file():
        if not (path.parent / "state.pt").exists() and not path.parent.name.startswith(_PREFIX):
            raise CheckpointError(f"{str(path)!r} is a file, not a training checkpoint: {_RESUME_TAKES}")
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; {_RESUME_TAKES}")
    others = [str(p) for p in list_checkpoints(path.parent) if p != path]
    hint = (
        (
            f"; other checkpoints in {str(path.parent)!r}: {', '.join(others[-3:])} (pass one with --resume, or use "
            "--resume auto, which falls back to the newest readable one)"
        )
        if others
        else ""
    )
    state_file = path / "state.pt"
    try:
        state = torch.load(state_file, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} has no state.pt{hint or '; ' + _RESUME_TAKES}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint file {str(state_file)!r} is corrupt or truncated ({e}){hint}") from e
    if not isinstance(state, dict) or "sha256" not in state:
        raise CheckpointError(f"{str(state_file)!r} is not a vizoo training state{hint}")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, digest in state["sha256"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {name}{hint}")
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"checkpoint file {str(f)!r} is corrupt: its SHA-256 differs from the one recorded "
                f"when it was written{hint}"
            )
        try:
            tensors[name] = load_file(str(f), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"checkpoint file {str(f)!r} cannot be read ({e}){hint}") from e
    return Checkpoint(path, tensors["model.safetensors"], tensors.get("ema.safetensors"), state)


def find_resume_checkpoint(output_dir: str | os.PathLike, map_location="cpu") -> Checkpoint | None:
    """``--resume auto``: the newest readable checkpoint under ``output_dir/checkpoints``, or None if there is none.

    Corrupt checkpoints are skipped with a warning (they are left on disk for inspection).
    """
    ckpt_dir = Path(output_dir) / "checkpoints"
    candidates = list_checkpoints(ckpt_dir)[::-1]
    pointer = ckpt_dir / "last"
    if pointer.is_file():
        named = ckpt_dir / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for path in candidates:
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as e:
            _logger.warning("--resume auto: skipping %s: %s", path.name, e)
    if candidates:
        raise CheckpointError(
            f"no readable checkpoint in {str(ckpt_dir)!r} ({len(candidates)} corrupt); start a new "
            "run without --resume, or in another --output"
        )
    return None
