"""Spatial-Mamba's state fusion, MSVMamba's multi-scale SS2D and VSSD's NC-SSD against direct formulations."""

import torch
import torch.nn.functional as F

from vizoo.kernels import force_backend
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
