"""Parameters and FLOPs of Spatial-Mamba, VSSD and MSVMamba against the tables in the official READMEs
(EdwardChasel/Spatial-Mamba, YuHengsss/VSSD, YuHengsss/MSVMamba); their FLOPs are fvcore MACs at 224². The figures
are the variants' pretrained cfgs (``paper_params_m``, ``paper_gmacs``)."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.model_table import paper_figures
from vizoo.utils.complexity import count_macs, count_params

NAMES = [
    "spatial_mamba_tiny",
    "spatial_mamba_small",
    "spatial_mamba_base",
    "vssd_micro",
    "vssd_tiny",
    "vssd_small",
    "vssd_base",
    "msvmamba_nano",
    "msvmamba_micro",
    "msvmamba_tiny",
]


@pytest.mark.parametrize("name", NAMES)
def test_params_and_flops_match_paper(name):
    paper = paper_figures(name)
    params, gmacs = paper["paper_params_m"], paper["paper_gmacs"]
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = timm.create_model(name)
    assert round(count_params(model) / 1e6) == params  # the tables round to whole millions
    measured = count_macs(model) / 1e9
    assert abs(measured / gmacs - 1) < 0.05, f"{name}: {measured:.2f} GMACs vs paper {gmacs}"
