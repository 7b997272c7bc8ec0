"""mmengine 0.10.7 checkpoints on torch >= 2.6, where ``torch.load`` defaults to ``weights_only=True``.

mmengine's local-file loader calls ``torch.load(filename, map_location)``. The checkpoints its ``Runner`` writes hold
more than tensors: the message hub's ``HistoryBuffer`` objects, numpy arrays, and bound methods pickled through
``builtins.getattr``. So every resume fails, and allowlisting those globals is no fix: a file that may call ``getattr``
on the objects it builds can reach ``eval``.

The choice made here, by replacing mmengine's loader for local paths:

- **Resume** (``Runner.resume``, which also serves ``resume=True``): files inside that Runner's own ``work_dir``,
  the checkpoints it or an earlier run of the same experiment wrote, are read with ``weights_only=False``, as
  mmengine did before torch 2.6. A file elsewhere is refused with an error saying why and what to do.
- **Everything else** (``load_from``, ``init_cfg=dict(type="Pretrained")``, ``mmengine.runner.load_checkpoint``):
  read with ``weights_only=True``. Non-tensor objects are swapped for inert stand-ins, so the weights of a training
  checkpoint still load, and no code from the file runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Iterator

import torch

__all__ = ["install_checkpoint_loader", "trusted_checkpoint_dir"]

_logger = logging.getLogger(__name__)
_trusted_dirs: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("vizoo_mm_trusted_dirs", default=())
_installed = False


@contextlib.contextmanager
def trusted_checkpoint_dir(path: str | os.PathLike) -> Iterator[None]:
    """Within the block, mmengine loads checkpoint files under ``path`` with full unpickling (trust them)."""
    token = _trusted_dirs.set(_trusted_dirs.get() + (os.path.realpath(path),))
    try:
        yield
    finally:
        _trusted_dirs.reset(token)


def _is_trusted(filename: str) -> bool:
    real = os.path.realpath(filename)
    return any(os.path.commonpath([real, d]) == d for d in _trusted_dirs.get())


def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """mmengine's loader for local files, with vizoo's ``weights_only`` policy (see the module docstring)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint file {filename!r} does not exist; check the path")
    if _is_trusted(filename):
        return torch.load(filename, map_location=map_location, weights_only=False)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    if _trusted_dirs.get():  # resuming, and the file is not the Runner's own
        raise RuntimeError(
            f"refusing to resume from {filename!r}: it is outside the Runner's work_dir {_trusted_dirs.get()[0]!r} "
            f"and holds pickled objects {unsafe}, which could run code when read. If you trust it, copy it into the "
            "work_dir and resume from there; to reuse only its weights, pass it as load_from with resume=False"
        )
    if unsafe:
        _logger.info("checkpoint %s: non-tensor objects %s replaced by inert stand-ins", filename, unsafe)
    with torch.serialization.safe_globals([_stand_in(name) for name in unsafe]):
        return torch.load(filename, map_location=map_location, weights_only=True)


def _stand_in(qualified_name: str):
    """An inert callable/class standing in for ``module.name``: calling it or unpickling into it just keeps the data."""
    module, _, name = qualified_name.rpartition(".")

    def __init__(self, *args, **kwargs):
        dict.__init__(self, args=args, kwargs=kwargs)

    def __setstate__(self, state):
        self["state"] = state

    return type(
        name, (dict,), {"__module__": module, "__qualname__": name, "__init__": __init__, "__setstate__": __setstate__}
    )


def install_checkpoint_loader() -> None:
    """Register ``load_local_checkpoint`` for local paths and make ``Runner.resume`` trust its own work_dir."""
    global _installed
    if _installed:
        return
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_local_checkpoint, force=True)
    original_resume = Runner.resume

    @functools.wraps(original_resume)
    def resume(self, filename, *args, **kwargs):
        with trusted_checkpoint_dir(self.work_dir):
            return original_resume(self, filename, *args, **kwargs)

    Runner.resume = resume
    _installed = True
