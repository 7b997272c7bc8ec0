"""torch.compile of every family's ``test_`` model on the CPU: one graph, no breaks, and eager's output.

``fullgraph=True`` makes a graph break an error, so a kernel path that falls back to Python (a data-dependent branch,
an autograd Function under tracing, an untraceable helper) fails here rather than silently running eager pieces.

Every model is traced to one graph by dynamo and AOTAutograd (``aot_eager``: the decompositions and functionalization
that inductor starts from) and compared with eager. Inductor's own codegen, which takes most of a compile (sympy
index analysis over some hundred kernels per model), runs on one model per kernel path: the 2D cross-scan with
d_state 1, the chunked selective scan with d_state 16, linear attention, Bi-WKV, and a family of plain convolutions.
`tools/benchmark_cpu_speed.py --modes compiled_b1` compiles every registered model with inductor.
"""

import pytest
import timm
import torch

import vizoo

# One model per kernel path (see the module docstring).
INDUCTOR_MODELS = ("test_efficient_vmamba", "test_vim", "test_mlla", "test_vrwkv", "test_cas_vit")


def _compiled_and_eager(name: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch._dynamo.reset()
    model = timm.create_model(name).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        return torch.compile(model, fullgraph=True, backend=backend)(x), model(x)


@pytest.mark.parametrize("name", vizoo.list_models("test_*"))
def test_traces_as_one_graph_and_matches_eager(name):
    compiled, eager = _compiled_and_eager(name, "aot_eager")
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", INDUCTOR_MODELS)
def test_inductor_matches_eager(name):
    compiled, eager = _compiled_and_eager(name, "inductor")
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_inductor_models_are_registered_test_models():
    assert set(INDUCTOR_MODELS) <= set(vizoo.list_models("test_*"))
