"""Parameters (and FLOPs where the papers give them) of Vim, EfficientVMamba and MobileMamba against their tables
(see ../shared/reference/ssm_backbones.md sections 2, 6, 7)."""

import pytest
import timm
import torch

import vizoo  # noqa: F401
from vizoo.utils.complexity import count_params

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
