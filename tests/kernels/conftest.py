"""Kernel tests run the Triton kernels on the GPU when there is one, else through Triton's CPU interpreter.

The interpreter is switched on in tests/conftest.py (``TRITON_INTERPRET=1`` must be set before triton is first
imported, which importing timm does); ``test_cpu_runs_use_the_interpreter`` checks that it took effect.
"""

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=[DEVICE])
def device(request):
    """The device the Triton kernels run on here: the GPU, or the CPU through the interpreter."""
    return torch.device(request.param)
