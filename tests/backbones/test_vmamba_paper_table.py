"""Parameters and FLOPs of every VMamba variant against the paper's table (VMamba README / arXiv 2401.10166)."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.utils.complexity import count_macs, count_params

# name: (params in M as published, GMACs at 224 as published)
PAPER = {
    "vmamba_tiny_s1l8": (30, 4.9),
    "vmamba_small_s1l20": (49, 8.6),
    "vmamba_base_s1l20": (87, 15.2),
    "vmamba_tiny_s2l5": (31, 4.9),
    "vmamba_small_s2l15": (50, 8.7),
    "vmamba_base_s2l15": (89, 15.4),
    "vanilla_vmamba_tiny": (23, 5.6),
    "vanilla_vmamba_small": (44, 11.2),
    "vanilla_vmamba_base": (76, 18.0),
}


@pytest.mark.parametrize("name", PAPER)
def test_params_and_flops_match_paper(name):
    params, gmacs = PAPER[name]
    with torch.device("meta"):
        meta_model = timm.create_model(name)
    assert round(count_params(meta_model) / 1e6) == params  # the table rounds to whole millions
    measured = count_macs(timm.create_model(name)) / 1e9
    assert abs(measured / gmacs - 1) < 0.05, f"{name}: {measured:.2f} GMACs vs paper {gmacs}"
