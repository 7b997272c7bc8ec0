"""torch.compile (inductor, CPU) of every family's ``test_`` model: one graph, no breaks, and eager's output.

``fullgraph=True`` makes a graph break an error, so a kernel path that falls back to Python (a data-dependent branch,
an autograd Function under tracing, an untraceable helper) fails here rather than silently running eager pieces.
"""

import pytest
import timm
import torch

import vizoo


@pytest.mark.parametrize("name", vizoo.list_models("test_*"))
def test_compiles_as_one_graph_and_matches_eager(name):
    torch._dynamo.reset()
    model = timm.create_model(name).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
