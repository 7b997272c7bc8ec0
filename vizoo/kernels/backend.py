"""Backend selection shared by every kernel.

A kernel registers its implementations by name (``"reference"``, ``"torch"``, ``"triton"``). Callers pass
``backend=None`` to get the best path for the tensor's device, or a name to force one. ``force_backend`` overrides the
choice for a whole block of code, e.g. ``with force_backend("reference"): model(x)`` to check a model against the
specification.

The default is ``"triton"`` for CUDA tensors when triton is installed, and ``"torch"`` otherwise: on the CPU, and
whenever a model is being exported (``torch.export`` or ONNX), so that exported graphs hold plain torch ops that run
anywhere. A kernel with a compiled CPU loop (``"cpu"``, numba) gets it by default for eager CPU calls that the loop
serves: the caller says which (no gradient wanted), and nothing may be tracing or watching the ops (a
``TorchDispatchMode`` such as ``FlopCounterMode`` sees only torch ops, and the loop is not one).

A forced ``"triton"`` is honoured during ``torch.export`` (the graph then holds vizoo's custom ops). On a CPU, Triton
kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``, set before triton is first imported).

Under ``torch.autocast`` every kernel computes in fp32 (``fp32_under_autocast``): autocast would otherwise run the
matrix products inside the torch paths (linear attention's KV and q·KV, the scans' step-size and B/C projections) in
fp16/bf16, where MLLA's q·KV overflows fp16 and a step size loses the digits that exp(Δ A) needs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterator

import torch

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None

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
    """Sorted backend names of ``registry``, an op's name -> implementation dict (e.g. ``selective_scan.BACKENDS``)."""
    return sorted(registry)


def is_exporting() -> bool:
    """True inside ``torch.export`` (which the ONNX exporter also runs) or the TorchScript-based ONNX export."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.onnx.is_in_onnx_export() or (exporting is not None and exporting())


def is_traced() -> bool:
    """True under any tracer: export (``is_exporting``), ``torch.compile``, TorchScript tracing or scripting. Eager-only
    paths (Python loops over the data, autograd Functions) step aside then."""
    return is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def default_backend(registry: dict[str, Callable], device: torch.device, cpu_loop: bool = False) -> str:
    if "triton" in registry and device.type == "cuda" and TRITON_INSTALLED and not is_exporting():
        return "triton"
    if cpu_loop and "cpu" in registry and device.type == "cpu" and not is_traced() and not _dispatch_mode_active():
        if numba_problem() is None:
            return "cpu"
    return "torch"


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels in its CPU interpreter, read as triton reads it."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_problem(device: torch.device) -> str | None:
    """Why Triton kernels cannot run on ``device`` here, or None if they can."""
    if not TRITON_INSTALLED:
        return "needs the triton package, which is not installed; pip install triton, or use backend='torch'"
    if device.type == "cuda":
        return None
    if not interpreter_enabled():
        return (
            f"runs on CUDA tensors; {device.type} tensors run only under Triton's interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported (importing timm imports it), or use backend='torch'"
        )
    return None


def pick_backend(
    op: str, registry: dict[str, Callable], requested: str | None, device: torch.device, cpu_loop: bool = False
) -> Callable:
    """Return the implementation of ``op`` for ``requested`` (or the default for ``device`` when None). ``cpu_loop``:
    the call is one the op's compiled CPU loop serves, so an eager CPU default takes it."""
    name = requested if requested is not None else (_forced[-1] if _forced else None)
    if name is None:
        name = default_backend(registry, device, cpu_loop)
    if name not in registry:
        raise ValueError(f"{op}: unknown backend {name!r}; choose one of {available_backends(registry)} or pass None")
    if name == "triton" and (problem := triton_problem(device)) is not None:
        raise RuntimeError(f"{op}: backend 'triton' {problem}")
    if name == "cpu" and (problem := cpu_loop_problem(device)) is not None:
        raise RuntimeError(f"{op}: backend 'cpu' {problem}")
    return registry[name]


def _dispatch_mode_active() -> bool:
    return torch._C._len_torch_dispatch_stack() > 0


@functools.cache
def numba_problem() -> str | None:
    """Why numba cannot be used here (not installed, or failing to import), or None if it can. Probed once."""
    if importlib.util.find_spec("numba") is None:
        return "needs the numba package, which is not installed; pip install numba, or use backend='torch'"
    try:
        importlib.import_module("numba")  # optional: only probed, so that the loops' modules can import it
    except ImportError as error:  # e.g. a numba built for another numpy
        return f"needs numba, which fails to import ({error}); pip install -U numba, or use backend='torch'"
    return None


def cpu_loop_problem(device: torch.device) -> str | None:
    """Why a compiled CPU loop cannot run on ``device`` here, or None if it can."""
    if (problem := numba_problem()) is not None:
        return problem
    if device.type != "cpu":
        return f"runs on CPU tensors, got {device.type}; use backend='torch' or 'triton'"
    return None


def wants_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record an op on ``tensors``: grad mode on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A region where autocast is off for ``device_type``; nothing for a device without autocast ("meta", used to
    count FLOPs)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def fp32_under_autocast(kernel: Callable) -> Callable:
    """Make ``kernel`` (a public kernel function) compute in fp32 when autocast is on for its first input's device.

    Under autocast the kernel runs with autocast disabled on fp32 copies of its fp16/bf16 tensor arguments (exact
    upcasts), and its output (the first one of a tuple; a returned state stays fp32) is cast back to the first
    input's dtype, or left in fp32 when the call passes ``out_fp32=True``. Outside autocast the kernel runs as is.
    Gradients flow back through the upcasts in the inputs' own dtypes.
    """
    signature = inspect.signature(kernel)
    first = next(iter(signature.parameters))

    @functools.wraps(kernel)
    def wrapper(*args, **kwargs):
        x = args[0] if args else kwargs.get(first)
        if not (
            isinstance(x, torch.Tensor)
            and torch.amp.is_autocast_available(x.device.type)  # "meta" (FLOP counts) has no autocast
            and torch.is_autocast_enabled(x.device.type)
        ):
            return kernel(*args, **kwargs)
        out_fp32 = signature.bind(*args, **kwargs).arguments.get("out_fp32", False)
        with autocast_off(x.device.type):
            out = kernel(*map(_upcast, args), **{k: _upcast(v) for k, v in kwargs.items()})
        dtype = torch.float32 if out_fp32 else x.dtype
        return (out[0].to(dtype), *out[1:]) if isinstance(out, tuple) else out.to(dtype)

    return wrapper


def _upcast(value):
    """An fp16/bf16 tensor as fp32; anything else as is."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value
