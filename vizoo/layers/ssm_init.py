"""Mamba's parameter initialisation (Gu & Dao, "Mamba", 2023), shared by every selective-scan mixer in vizoo."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["init_dt_bias_", "init_s4d_real_", "reset_routed_ssm_"]


@torch.no_grad()
def init_dt_bias_(bias: torch.Tensor, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
    """Step-size biases, in place, so that ``softplus(bias)`` is log-uniform in [dt_min, dt_max], floored."""
    dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus


@torch.no_grad()
def init_s4d_real_(A_log: torch.Tensor) -> None:
    """S4D-real, in place: ``A_log[..., i] = log(i + 1)`` over the last (state) dimension."""
    a = torch.arange(1, A_log.shape[-1] + 1, dtype=torch.float32, device=A_log.device)
    A_log.copy_(torch.log(a).expand_as(A_log))


@torch.no_grad()
def reset_routed_ssm_(
    module: nn.Module, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4
) -> None:
    """Mamba's initialisation of a mixer whose routes' SSM parameters are stacked as in VMamba (``x_proj_weight``,
    ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``; attributes ``d_inner`` and ``dt_rank``): projections
    as ``nn.Linear``'s default, step sizes log-uniform, S4D-real A, D = 1."""
    bound = module.d_inner**-0.5  # nn.Linear's default for the stacked x projections
    nn.init.uniform_(module.x_proj_weight, -bound, bound)
    nn.init.uniform_(module.dt_projs_weight, -(module.dt_rank**-0.5), module.dt_rank**-0.5)
    init_dt_bias_(module.dt_projs_bias, dt_min, dt_max, dt_init_floor)
    init_s4d_real_(module.A_logs)
    module.Ds.fill_(1.0)
