import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Run vizoo's Triton kernels through Triton's CPU interpreter (tests/kernels). Triton reads this when jit functions
    # are defined, its own standard library included at ``import triton``, and timm imports triton: so it is set here,
    # before pytest imports any test module, not in tests/kernels/conftest.py.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Benchmark tools run by tests append their rows here, never to the repository's results/ (which docs/benchmarks.md
# is generated from); subprocesses inherit it.
os.environ["VIZOO_RESULTS_DIR"] = tempfile.mkdtemp(prefix="vizoo-results-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: the workers already fill the cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def load_tool():
    """A function importing tools/NAME.py as a module: the tools are scripts, not a package."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    return load
