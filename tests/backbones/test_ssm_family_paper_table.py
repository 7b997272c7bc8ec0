"""Parameters and FLOPs of Spatial-Mamba, VSSD and MSVMamba against the tables in the official READMEs
(EdwardChasel/Spatial-Mamba, YuHengsss/VSSD, YuHengsss/MSVMamba); their FLOPs are fvcore MACs at 224²."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.utils.complexity import count_macs, count_params

# name: (params in M as published, GMACs at 224 as published)
PAPER = {
    "spatial_mamba_tiny": (27, 4.5),
    "spatial_mamba_small": (43, 7.1),
    "spatial_mamba_base": (96, 15.8),
    "vssd_micro": (14, 2.3),
    "vssd_tiny": (24, 4.5),
    "vssd_small": (40, 7.4),
    "vssd_base": (89, 16.1),
    "msvmamba_nano": (7, 0.9),
    "msvmamba_micro": (12, 1.5),
    "msvmamba_tiny": (33, 4.6),
}


@pytest.mark.parametrize("name", PAPER)
def test_params_and_flops_match_paper(name):
    params, gmacs = PAPER[name]
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        model = timm.create_model(name)
    assert round(count_params(model) / 1e6) == params  # the tables round to whole millions
    measured = count_macs(model) / 1e9
    assert abs(measured / gmacs - 1) < 0.05, f"{name}: {measured:.2f} GMACs vs paper {gmacs}"
