"""Spatial-Mamba's state fusion, MSVMamba's multi-scale SS2D, EfficientVMamba's atrous SS2D and VSSD's NC-SSD against
direct formulations."""

import torch
import torch.nn.functional as F

from vizoo.kernels import force_backend, selective_scan
from vizoo.layers import SS2D
from vizoo.layers.efficient_vmamba import EfficientVSSBlock
from vizoo.layers.msvmamba import MultiScaleSS2D
from vizoo.layers.spatial_mamba import StateFusion, StructureAwareSSM
from vizoo.layers.vssd import NCSSD


def test_merged_11x11_kernel_equals_the_three_dilated_convs():
    torch.manual_seed(0)
    fusion = StateFusion(6)
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn_like(p))
    h = torch.randn(2, 6, 9, 7)
    fusion.train()
    three = fusion(h)
    fusion.eval()
    torch.testing.assert_close(fusion(h), three, rtol=1e-5, atol=1e-5)
    # and the three-conv path is the definition: sum_r alpha_r * DWConv3x3_dil=r(replicate-padded h)
    want = sum(
        a * F.conv2d(F.pad(h, (r,) * 4, mode="replicate"), k, dilation=r, groups=6)
        for a, k, r in zip(fusion.alpha, fusion.kernels(), (1, 3, 5))
    )
    torch.testing.assert_close(three, want)


def test_structure_aware_ssm_backends_agree_with_odd_sizes():
    torch.manual_seed(0)
    ssm = StructureAwareSSM(8, d_state=2).eval()
    x = torch.randn(1, 5, 3, 8)
    with force_backend("reference"):
        ref = ssm(x)
    torch.testing.assert_close(ssm(x), ref, rtol=1e-4, atol=1e-5)


def test_multiscale_ss2d_backends_agree_with_odd_sizes():
    torch.manual_seed(0)
    op = MultiScaleSS2D(8, ssm_ratio=1.0).eval()
    x = torch.randn(2, 7, 5, 8)
    with force_backend("reference"):
        ref = op(x)
    out = op(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_ncssd_is_the_official_quadratic_form():
    torch.manual_seed(0)
    m = NCSSD(8, num_heads=2, d_state=4).eval()
    x = torch.randn(1, 3, 5, 8)
    z, xbc, dt = torch.split(m.in_proj(x), [16, 16 + 8, 2], -1)
    xbc = F.silu(m.conv2d(xbc.permute(0, 3, 1, 2))).flatten(2).transpose(1, 2)
    v, k, q = torch.split(xbc, [16, 4, 4], -1)
    dA = F.softplus(dt.flatten(1, 2) + m.dt_bias) * torch.exp(m.A_log)  # (1, l, heads): -A * dt
    v = v.unflatten(-1, (2, 8))  # (1, l, heads, headdim)
    scores = q @ k.transpose(1, 2)  # (1, l, l)
    y = torch.stack([scores @ (v[:, :, h] * dA[:, :, h, None]) + m.D[h] * v[:, :, h] for h in range(2)], 2)
    want = m.out_proj(m.norm(y.flatten(2)).unflatten(1, (3, 5)) * z)
    torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-5)


def test_atrous_ss2d_is_four_phase_scans_with_their_own_parameters():
    """ES2D written out: pad to even size, read each stride-2 phase (rows for phases (0,0)/(0,1), columns for
    (1,0)/(1,1)), scan each with route k's projections, A, D and step bias, put every output back at its pixels."""
    torch.manual_seed(0)
    op = SS2D(6, d_state=3, ssm_ratio=2.0, gate=True, conv_bias=True, routes="atrous").eval()
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 7, 9, 6)
    b, h, w, d = 2, 7, 9, op.d_inner
    xz = op.in_proj(x)
    xc = op.act(op.conv2d(xz[..., :d].permute(0, 3, 1, 2)))
    padded = F.pad(xc, (0, 1, 0, 1))  # 8 x 10
    phases = [(0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True)]  # (row, col, column-major)
    merged = torch.zeros(b, d, 8, 10)
    for k, (r, c, column_major) in enumerate(phases):
        grid = padded[:, :, r::2, c::2]  # (b, d, 4, 5)
        seq = (grid.transpose(2, 3) if column_major else grid).flatten(2)
        dts, Bs, Cs = torch.split(op.x_proj_weight[k] @ seq, [op.dt_rank, op.d_state, op.d_state], dim=1)
        y = selective_scan(
            seq,
            op.dt_projs_weight[k] @ dts,
            -torch.exp(op.A_logs[k * d : (k + 1) * d]),
            Bs,
            Cs,
            op.Ds[k * d : (k + 1) * d],
            delta_bias=op.dt_projs_bias[k],
            delta_softplus=True,
            backend="reference",
        )
        merged[:, :, r::2, c::2] = y.view(b, d, 5, 4).transpose(2, 3) if column_major else y.view(b, d, 4, 5)
    y = op.out_norm(merged[:, :, :h, :w].permute(0, 2, 3, 1)) * op.act(xz[..., d:])
    want = op.out_proj(y)
    with torch.no_grad():
        torch.testing.assert_close(op(x), want, rtol=1e-4, atol=1e-5)
        with force_backend("reference"):
            torch.testing.assert_close(op(x), want, rtol=1e-4, atol=1e-5)


def test_evss_block_shares_one_channel_attention_between_branches():
    torch.manual_seed(0)
    block = EfficientVSSBlock(8, d_state=2, ssm_ratio=2.0, gate=True, conv_bias=True).eval()
    x = torch.randn(1, 6, 6, 8)
    y = block.norm(x)
    local = block.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.se(block.op(y)) + block.se(local))
    assert sum(isinstance(m, type(block.se)) for m in block.modules()) == 1
