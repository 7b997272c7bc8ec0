"""Backend selection shared by every kernel.

A kernel registers its implementations by name (``"reference"``, ``"torch"``, later ``"triton"``). Callers pass
``backend=None`` to get the best path for the tensor's device, or a name to force one. ``force_backend`` overrides the
choice for a whole block of code, e.g. ``with force_backend("reference"): model(x)`` to check a model against the
specification.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

_forced: list[str] = []


@contextlib.contextmanager
def force_backend(name: str) -> Iterator[None]:
    """Make every kernel call inside the block that passes ``backend=None`` use backend ``name``."""
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def available_backends(registry: dict[str, Callable]) -> list[str]:
    return sorted(registry)


def pick_backend(op: str, registry: dict[str, Callable], requested: str | None, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for ``requested`` (or the default for ``device`` when None)."""
    name = requested if requested is not None else (_forced[-1] if _forced else None)
    if name is None:
        # Only CPU-friendly paths exist so far; "torch" is the fast exportable one on every device.
        name = "torch"
    if name not in registry:
        raise ValueError(f"{op}: unknown backend {name!r}; choose one of {available_backends(registry)} or pass None")
    return registry[name]
