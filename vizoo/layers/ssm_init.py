"""Mamba's SSM parameters (Gu & Dao, "Mamba", 2023) as vizoo's selective-scan mixers stack them per route: their
initialisation, shared by every mixer, and the scan of several routes that reads them."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vizoo.kernels.selective_scan import selective_scan

__all__ = ["init_dt_bias_", "init_s4d_real_", "reset_routed_ssm_", "routed_selective_scan"]


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


def routed_selective_scan(module: nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """Scan K routes, each with its own SSM parameters stacked on ``module`` as ``reset_routed_ssm_`` describes
    (``x_proj_weight`` (K, R + 2N, D), ``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K·D, N),
    ``Ds`` (K·D); attributes ``dt_rank``, ``d_state``, ``scan_backend``).

    xs: (B, K, D, L), route k's tokens in its scan order -> (B, K·D, L). The step size, B and C come from one batched
    projection of every route, then one selective scan runs all K·D channels.
    """
    dts, Bs, Cs = torch.matmul(module.x_proj_weight, xs).split([module.dt_rank, module.d_state, module.d_state], dim=2)
    return selective_scan(
        xs.flatten(1, 2),
        torch.matmul(module.dt_projs_weight, dts).flatten(1, 2),
        -torch.exp(module.A_logs.float()),
        Bs,
        Cs,
        module.Ds.float(),
        delta_bias=module.dt_projs_bias.flatten().float(),
        delta_softplus=True,
        backend=module.scan_backend,
    )
