"""Parameters (and FLOPs where the papers give them) of Vim, EfficientVMamba and MobileMamba against their tables:
the Vim paper (hustvl/Vim), EfficientVMamba's paper and training logs (TerryPei/EfficientVMamba) and MobileMamba's
README (lewandofskee/MobileMamba)."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.layers import SS2D
from vizoo.utils.complexity import count_macs, count_params

# name: params in M as published (rounded to whole millions in the Vim paper). The Vim paper gives no FLOPs (the 1.5G
# for Vim-Ti is EfficientVMamba's citation, counted without the scan), so none is checked here.
PAPER_PARAMS = {
    "vim_tiny": 7,
    "vim_small": 26,
}


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_params_match_paper(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert round(count_params(model) / 1e6) == PAPER_PARAMS[name]  # the tables round to whole millions


# EfficientVMamba: (params in M as printed by the official training logs, GMACs at 224 as published). The logs print
# parameters to the thousand, so they are checked to that precision; FLOPs to 5% of the paper's one-decimal figures.
EFFICIENT_VMAMBA = {
    "efficient_vmamba_tiny": (6.494, 0.8),
    "efficient_vmamba_small": (11.274, 1.3),
    "efficient_vmamba_base": (33.717, 4.0),
}


@pytest.mark.parametrize("name", EFFICIENT_VMAMBA)
def test_efficient_vmamba_matches_logs_and_paper(name):
    params, gmacs = EFFICIENT_VMAMBA[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    assert round(count_params(model) / 1e6, 3) == params
    measured = count_macs(model) / 1e9
    assert abs(measured / gmacs - 1) < 0.05, f"{name}: {measured:.3f} GMACs vs paper {gmacs}"


def test_unknown_ss2d_routes_are_refused():
    with pytest.raises(ValueError, match="unknown SS2D routes 'diagonal'.*atrous"):
        SS2D(8, routes="diagonal")
