"""Parameters and FLOPs of every VMamba variant against the paper's table (VMamba README / arXiv 2401.10166), whose
figures are the variants' pretrained cfgs (``paper_params_m``, ``paper_gmacs``)."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.model_table import paper_figures
from vizoo.utils.complexity import count_macs, count_params

NAMES = [
    "vmamba_tiny_s1l8",
    "vmamba_small_s1l20",
    "vmamba_base_s1l20",
    "vmamba_tiny_s2l5",
    "vmamba_small_s2l15",
    "vmamba_base_s2l15",
    "vanilla_vmamba_tiny",
    "vanilla_vmamba_small",
    "vanilla_vmamba_base",
]


@pytest.mark.parametrize("name", NAMES)
def test_params_and_flops_match_paper(name):
    paper = paper_figures(name)
    params, gmacs = paper["paper_params_m"], paper["paper_gmacs"]
    with torch.device("meta"):
        meta_model = timm.create_model(name)
    assert round(count_params(meta_model) / 1e6) == params  # the table rounds to whole millions
    measured = count_macs(timm.create_model(name)) / 1e9
    assert abs(measured / gmacs - 1) < 0.05, f"{name}: {measured:.2f} GMACs vs paper {gmacs}"
